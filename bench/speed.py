"""Speed on this machine: the real daemon end to end, the backend alone, and where the time goes.

For each encoder at each input size:
  end to end   a video file -> edge-inspect -> a real Mosquitto -> a subscriber counting the
               result messages; sustained parts/s from the subscriber's clock, latency from
               capture to publish for every part (the daemon's audit log), resident memory
  backend      the same frames through the backend alone (batch 1), in the same run: with the
               daemon's default worker plan (one session per core, a frame each), and with one
               session over every core (the daemon before it had workers)
  stages       decode, preprocess, encoder, flows, scoring, decision, heatmap JPEG, publish
  FLOPs        multiply-adds x2 of every convolution and coupling matmul, per frame;
               achieved GFLOP/s (FLOPs x end-to-end frames/s) against this machine's own
               float32 matmul rate
The bundles are calibrated briefly (speed does not depend on how well the flows are trained),
so nearly every part of the MPDD test stream is a reject (a heatmap and a review image each: the
slow path). `--bundle DIR` measures a calibrated bundle instead (bench/quality.py --keep-bundles)
on a stream of its own station's good parts, as a line runs: mostly passes.

  python bench/speed.py [--frames 1000] [--encoders efficientnet-lite0 ...] [--sizes 256 512]
  python bench/speed.py --bundle runs/bundles/mpdd-metal_plate [--bundle ...]
Writes bench/results/speed.json and prints one table. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import machine, write_results  # noqa: E402
from calibration.images import list_images  # noqa: E402
from edge.station_engine import InferencePlan, plan_inference, usable_cores  # noqa: E402
from edge.decision import decide  # noqa: E402
from edge.answer import Answer, Inspected  # noqa: E402
from edge.heatmap import render_heatmap  # noqa: E402
from edge.capture import Frame  # noqa: E402
from engines.backends import ModelOutput, open_backend  # noqa: E402
from engines.bundle import open_bundle  # noqa: E402
from engines.inspector import Inspector  # noqa: E402
from tests.mqtt_helpers import Broker, Subscriber  # noqa: E402
from tests.scenarios import METAL_PLATE, parts_video, percentiles, proc_resources  # noqa: E402

BIN = Path(sys.executable).parent


def matmul_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    """This machine's float32 matrix-multiply rate (numpy's BLAS, all cores)."""
    a, b = np.random.rand(size, size).astype(np.float32), np.random.rand(size, size).astype(np.float32)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def model_flops(bundle) -> float:
    """2 x multiply-adds per frame: every encoder convolution (counted on the module the ONNX
    graph is exported from) and every coupling matmul (its weights times the positions);
    elementwise work is not counted."""
    import torch

    from engines.backends.torch_backend import build_torch_model
    from engines.cflow import FoldedDecoders

    model = build_torch_model(bundle)
    encoder, decoders, part_appearance = model.encoder, model.decoders, model.part_appearance
    total = [0.0]

    def count(module, inputs, output):
        total[0] += 2 * output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        encoder(torch.zeros((1, *bundle.manifest.input_size, 3), dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    folded = FoldedDecoders(decoders)
    for shape, flow in zip(decoders.shapes, folded.flows):
        for block in flow.blocks:
            total[0] += 2 * shape.positions * (block.in_weight.numel() + block.out_weight.numel())
    if part_appearance is not None:
        total[0] += 2 * part_appearance.whitening.numel()
    if model.nearest_patch is not None:
        height, width = bundle.manifest.input_size
        total[0] += 2 * (height // 8) * (width // 8) * model.nearest_patch.bank.numel()  # every stride-8 position against the bank
    return total[0]


def make_bundle(encoder: str, size: int, work: Path, steps: int = 30) -> Path:
    """A briefly trained bundle on MPDD metal_plate's good parts (speed and the plumbing do not
    depend on how well the flows are trained)."""
    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.train import TrainConfig

    out = work / f"{encoder}-{size}"
    settings = CalibrationSettings(encoder=encoder, input_size=(size, size), train=TrainConfig(steps_per_scale=(steps, steps, steps, steps)))
    calibrate(METAL_PLATE / "train" / "good", out, settings, force=True, log=lambda message: None)
    return out


def good_parts_video(path: Path, folder: Path, frames: int, size: tuple[int, int]) -> Path:
    """A stream of a station's own good parts (the bundle's training folder) at its input size,
    stored losslessly (PNG frames, ~1 ms to decode at 256x256 against ~0.2 for MJPEG): MJPEG's
    artefacts alone lift a good metal plate's score above the threshold of a bundle calibrated on
    PNG images (bench/README.md, "Compressed frames")."""
    sources = list_images(Path(folder))
    if not sources:
        raise SystemExit(f"{folder}: no good images to make a stream of")
    images = [cv2.resize(cv2.imread(str(p)), size[::-1], interpolation=cv2.INTER_AREA) for p in sources]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"png "), 30, size[::-1])
    for i in range(frames):
        writer.write(images[(i * 7) % len(images)])
    writer.release()
    return path


def stage_breakdown(bundle_path: Path, video: Path, frames: int, broker_port: int) -> dict:
    """Each stage timed alone on the same frames, in this process, batch 1."""
    import paho.mqtt.client as mqtt

    bundle = open_bundle(bundle_path)
    backend = open_backend("onnxruntime", bundle)
    inspector = Inspector(bundle, backend)
    thresholds = bundle.manifest.thresholds
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="speed-bench")
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    times: dict[str, list[float]] = {s: [] for s in ("decode", "preprocess", "encoder", "flows", "scoring", "decision", "heatmap_jpeg", "publish")}
    capture = cv2.VideoCapture(str(video))

    def timed(stage, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        times[stage].append(1000 * (time.perf_counter() - started))
        return result

    for i in range(frames):
        ok, image = timed("decode", capture.read)
        if not ok:
            break
        model_input = timed("preprocess", inspector.model_input, image)
        features = timed("encoder", backend.encoder.run, backend.feature_names, {"image": model_input[None]})
        outputs = timed("flows", backend.flows.run, None, dict(zip(backend.flow_inputs, features)))
        output = ModelOutput.from_graph_outputs(backend.flow_outputs, outputs)
        maps, scores = timed("scoring", inspector.score, output)
        verdict = timed("decision", decide, maps[0], float(scores[0]), thresholds.image, thresholds.pixel, 16, (0, 0, image.shape[1], image.shape[0]))
        box = (0, 0, image.shape[1], image.shape[0])
        answer = Answer.of_inspection("bench", Frame(image, i, time.time()), verdict, bundle.bundle_id, Inspected(maps[0], image, box))
        timed("heatmap_jpeg", render_heatmap, answer, 85)
        payload = json.dumps({"part_id": str(i), "score": float(scores[0]), "regions": [r.to_json() for r in verdict.regions]})
        timed("publish", lambda: client.publish("bench/result", payload, qos=1).wait_for_publish(2))
    capture.release()
    client.loop_stop()
    client.disconnect()
    backend.close()
    # The heatmap is only encoded for rejects; the others run for every part.
    return {stage: {"mean_ms": round(float(np.mean(v[5:])), 3), "p50_ms": round(float(np.median(v[5:])), 3)} for stage, v in times.items()}


def backend_only(bundle_path: Path, video: Path, frames: int, plan: InferencePlan) -> dict:
    """The frames through Inspector (backend plus scoring, what a daemon worker does per part)
    with the daemon's worker plan: `plan.workers` threads, each with its own session, taking the
    next frame as they finish. No capture, no queues, no publishing."""
    bundle = open_bundle(bundle_path)
    inspectors = [Inspector(bundle, open_backend(plan.backend, bundle, threads=plan.threads_per_worker)) for _ in range(plan.workers)]
    capture = cv2.VideoCapture(str(video))
    inputs = []
    for _ in range(frames):
        ok, image = capture.read()
        if not ok:
            break
        inputs.append(inspectors[0].model_input(image))
    capture.release()
    for inspector in inspectors:
        for x in inputs[:5]:
            inspector.inspect_batch(x[None])
    latencies: list[float] = []
    next_frame = iter(range(len(inputs)))
    lock = threading.Lock()

    def work(inspector: Inspector) -> None:
        while True:
            with lock:
                i = next(next_frame, None)
            if i is None:
                return
            t = time.perf_counter()
            inspector.inspect_batch(inputs[i][None])
            latencies.append(1000 * (time.perf_counter() - t))

    workers = [threading.Thread(target=work, args=(inspector,)) for inspector in inspectors]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    for inspector in inspectors:
        inspector.backend.close()
    return {
        "workers": plan.workers, "threads_per_worker": plan.threads_per_worker, "frames": len(inputs),
        "fps": round(len(inputs) / elapsed, 2), "latency_ms": percentiles(latencies),
    }


def end_to_end(bundle_path: Path, video: Path, frames: int, broker: Broker, work: Path, fps: float | None, preview_hz: float = 0.0, extra_config: str = "") -> dict:
    """`extra_config`: top-level YAML lines added to the daemon's config (an A/B of one setting)."""
    work.mkdir()
    state = work / "state"
    subscriber = Subscriber(broker.port)
    config = work / "config.yaml"
    source = f"{{type: file, path: {video}" + (f", fps: {fps}" if fps else "") + "}"
    config.write_text(
        f"bundle: {bundle_path}\nbackend: onnxruntime\nstate_dir: {state}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, topic_prefix: edge}}\n"
        f"publish: {{results: true, heatmaps: rejects, stats_interval_s: 2, preview_hz: {preview_hz}}}\n"
        f"{extra_config}cameras:\n  - station: speed\n    source: {source}\n"
    )
    process = subprocess.Popen([str(BIN / "edge-inspect"), "--config", str(config), "--log-level", "WARNING"])
    memory = []
    while process.poll() is None:
        resources = proc_resources(process.pid)
        results = len(subscriber.on("result"))
        if resources and results:
            memory.append((results, resources["rss_kib"]))
        time.sleep(0.5)
    time.sleep(0.5)
    results = subscriber.on("result")
    rejects = subscriber.on("reject")
    arrivals = [m.received for m in results]
    subscriber.close()
    audit = [json.loads(line) for line in (state / "audit" / "speed.jsonl").read_text().splitlines()]
    latencies = [r["latency_ms"] for r in audit if "latency_ms" in r]
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    first, last = latencies[: min(1000, len(latencies) // 2)], latencies[-min(1000, len(latencies) // 2) :]
    after_warmup = [kib for count, kib in memory if count >= 100] or [kib for _, kib in memory]
    return {
        "camera_fps": fps,
        "preview_hz": preview_hz,
        "previews": len(subscriber.on("preview")),
        "frames": frames,
        "results": len(results),
        "rejects": len(rejects),
        "exit_code": process.returncode,
        "fps": round((len(arrivals) - 1) / span, 2),
        "latency_ms": percentiles(latencies),
        "latency_first_vs_last_p50": [round(float(np.median(first)), 2), round(float(np.median(last)), 2)],
        "rss_mib_start_end": [round(after_warmup[0] / 1024, 1), round(after_warmup[-1] / 1024, 1)] if after_warmup else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--encoders", nargs="*", default=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 1024])
    parser.add_argument("--large-frames", type=int, default=150, help="frames at sizes above 256 (each is many times slower)")
    parser.add_argument("--large-encoders", nargs="*", default=["efficientnet-lite0"], help="encoders also measured at sizes above 256")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    parser.add_argument("--preview", action="store_true", help="also run end to end with the console's live view at 2 Hz")
    parser.add_argument(
        "--bundle", type=Path, action="append", default=[],
        help="measure this calibrated bundle on a stream of its own good parts instead of the briefly trained ones (repeatable)",
    )
    args = parser.parse_args()
    measured_on = machine()
    gflops_machine = matmul_gflops()
    print(f"float32 matmul on this machine: {gflops_machine:.1f} GFLOP/s", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Broker(work / "broker").start()
        try:
            for bundle_path, label, frames in subjects(args, work):
                bundle = open_bundle(bundle_path)
                encoder, size = bundle.manifest.encoder.name, bundle.manifest.input_size[0]
                slug = label.replace(" ", "-").replace("/", "-")
                video = work / f"stream-{slug}.avi"
                if args.bundle:
                    good_parts_video(video, Path(bundle.manifest.training["good_folder"]), frames, tuple(bundle.manifest.input_size))
                else:
                    parts_video(video, frames, (size, size))
                flops = model_flops(bundle)
                print(f"{label}: backend alone", file=sys.stderr)
                plan = plan_inference("onnxruntime", 0, 0, usable_cores())  # what edge-inspect does by default
                alone = backend_only(bundle_path, video, frames, plan)
                # One session over every core, one frame at a time: the daemon before workers.
                one_session = backend_only(bundle_path, video, frames, InferencePlan("onnxruntime", 1, 0))
                print(f"{label}: end to end through edge-inspect", file=sys.stderr)
                e2e = end_to_end(bundle_path, video, frames, broker, work / f"run-{slug}", None)
                # Flat out, latency is mostly queueing; a camera at 80% of that rate shows
                # what one part waits when the line keeps up.
                paced_fps = round(0.8 * e2e["fps"], 1)
                print(f"{label}: end to end, camera paced at {paced_fps} frames/s", file=sys.stderr)
                paced = end_to_end(bundle_path, video, frames, broker, work / f"run-{slug}-paced", paced_fps)
                if args.preview:
                    # The console's live view at 2 Hz against none, flat out, back to back.
                    print(f"{label}: end to end with the live view at 2 Hz", file=sys.stderr)
                    previewed = end_to_end(bundle_path, video, frames, broker, work / f"run-{slug}-preview", None, preview_hz=2.0)
                stages = stage_breakdown(bundle_path, video, min(frames, 300), broker.port)
                model_ms = stages["encoder"]["mean_ms"] + stages["flows"]["mean_ms"]
                rows.append({
                    "label": label, "flow_strides": list(bundle.manifest.flow_strides),
                    "stream": "the bundle's good parts" if args.bundle else "MPDD metal_plate test parts, briefly trained bundle",
                    "encoder": encoder, "input_size": size, "frames": frames,
                    "gflop_per_frame": round(flops / 1e9, 3),
                    # one frame alone (the stage times) and sustained by the daemon
                    "achieved_gflops": round(flops / 1e9 / (model_ms / 1000), 2),
                    "achieved_gflops_end_to_end": round(flops / 1e9 * e2e["fps"], 2),
                    "machine_matmul_gflops": round(gflops_machine, 1),
                    "backend_only": alone, "backend_one_session": one_session, "end_to_end": e2e, "end_to_end_paced": paced,
                    "e2e_over_backend": round(e2e["fps"] / alone["fps"], 3),
                    **({"end_to_end_preview_2hz": previewed, "preview_fps_ratio": round(previewed["fps"] / e2e["fps"], 3)} if args.preview else {}),
                    "stages": stages,
                })
                print_table(rows)
        finally:
            broker.stop()
    report = {"machine": measured_on, "rows": rows}
    write_results(args.output, report)
    return 0


def subjects(args, work: Path):
    """(bundle, label, frames) to measure: the given bundles, or a brief calibration per encoder
    and size."""
    if args.bundle:
        for path in args.bundle:
            yield path, f"{path.parent.name}/{path.name}", args.frames  # the parent tells bundles of one name apart
        return
    for encoder in args.encoders:
        for size in args.sizes:
            if size > 256 and encoder not in args.large_encoders:
                continue
            label = f"{encoder} {size}"
            print(f"{label}: calibrating a bundle", file=sys.stderr)
            yield make_bundle(encoder, size, work), label, args.frames if size <= 256 else args.large_frames


def print_table(rows: list[dict]) -> None:
    print(f"\n{'bundle':<44} {'size':>5} {'rejects':>7} {'GFLOP':>6} {'GFLOP/s':>8} {'e2e fps':>8} {'backend fps':>11} {'1 session':>9} {'ratio':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'paced p50/p99':>14} {'RSS MiB':>13}")
    for r in rows:
        e, lat = r["end_to_end"], r["end_to_end"]["latency_ms"]
        rss = "-" if not e["rss_mib_start_end"] else "{}->{}".format(*e["rss_mib_start_end"])
        paced = "{p50:.1f}/{p99:.1f}".format(**r["end_to_end_paced"]["latency_ms"])
        print(
            f"{r['label']:<44} {r['input_size']:>5} {e['rejects']:>7} {r['gflop_per_frame']:6.2f} {r['achieved_gflops_end_to_end']:8.1f} {e['fps']:8.1f} "
            f"{r['backend_only']['fps']:11.1f} {r['backend_one_session']['fps']:9.1f} {r['e2e_over_backend']:6.2f} {lat['p50']:7.1f} {lat['p95']:7.1f} {lat['p99']:7.1f} {paced:>14} {rss:>13}"
        )
    for r in rows:
        if "end_to_end_preview_2hz" in r:
            p = r["end_to_end_preview_2hz"]
            print(f"{r['encoder']} {r['input_size']}: live view at 2 Hz {p['fps']:.1f} parts/s ({p['previews']} previews) against {r['end_to_end']['fps']:.1f} without: ratio {r['preview_fps_ratio']:.3f}")
    last = rows[-1]["stages"]
    print("stages (ms, mean, last row): " + ", ".join(f"{k} {v['mean_ms']:.2f}" for k, v in last.items()))


if __name__ == "__main__":
    sys.exit(main())
