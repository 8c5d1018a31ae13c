"""The whole line on one machine: good parts -> edge-calibrate -> Mosquitto -> edge-inspect on a
stream of parts -> a subscriber that shows each reject as the PLC would receive it.

  python scripts/demo.py                  synthetic textured parts with scratches, dents, stains
  python scripts/demo.py --dataset DIR    a real MVTec-layout category (train/good, test/<type>)

Heatmaps of rejects land in OUT/heatmaps; the bundle, config and audit log in OUT.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mqtt_helpers import Broker, Subscriber, find_mosquitto  # noqa: E402

BIN = Path(sys.executable).parent


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def synthetic_inputs(out: Path, parts: int) -> tuple[Path, Path, dict[str, str | None]]:
    from edge.synthetic import write_good_folder, write_stream

    good = out / "good"
    shutil.rmtree(good, ignore_errors=True)
    write_good_folder(good, 80, seed=1)
    truth = write_stream(out / "stream.avi", parts, defect_every=6, seed=2)
    return good, out / "stream.avi", {str(t["frame"]): t["defect"] for t in truth}


def dataset_inputs(out: Path, dataset: Path, parts: int) -> tuple[Path, Path, dict[str, str | None]]:
    from calibration.datasets import open_category

    category = open_category(dataset)
    items = list(category.test)
    random.Random(0).shuffle(items)
    items = items[:parts]
    writer = cv2.VideoWriter(str(out / "stream.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for item in items:
        writer.write(cv2.resize(cv2.imread(str(item.path)), (256, 256), interpolation=cv2.INTER_AREA))
    writer.release()
    truth = {str(i): (None if item.defect_type == "good" else item.defect_type) for i, item in enumerate(items)}
    return category.root / "train" / "good", out / "stream.avi", truth


def start_console(out: Path, broker_port: int) -> tuple[subprocess.Popen | None, str]:
    """edge-console beside the daemon, on a free local port, its history in OUT."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    database = out / "console.sqlite3"
    database.unlink(missing_ok=True)
    command = [str(BIN / "edge-console"), "--listen", f"127.0.0.1:{port}", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker_port), "--database", str(database), "--log-level", "WARNING"]
    if not (BIN / "edge-console").exists():
        print("console: edge-console is not installed (run scripts/setup.sh)")
        return None, url
    console = subprocess.Popen(command)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    print(f"console: {url}")
    return console, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="MVTec-layout category instead of synthetic parts")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--parts", type=int, default=120, help="parts in the stream")
    parser.add_argument("--max-steps", type=int, default=300, help="training steps per scale (the demo keeps calibration short)")
    args = parser.parse_args()
    if find_mosquitto() is None:
        print("demo: mosquitto is not installed; run scripts/setup.sh as root or apt-get install -y mosquitto", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    banner("1/4 parts")
    if args.dataset:
        good, stream, truth = dataset_inputs(out, args.dataset.resolve(), args.parts)
    else:
        good, stream, truth = synthetic_inputs(out, args.parts)
    print(f"good parts: {good}  stream: {stream} ({len(truth)} parts, {sum(v is not None for v in truth.values())} defective)")

    banner("2/4 edge-calibrate")
    bundle = out / "bundle"
    calibrate = [str(BIN / "edge-calibrate"), str(good), "-o", str(bundle), "--force", "--max-steps", str(args.max_steps)]
    if subprocess.run(calibrate).returncode != 0:
        return 1

    banner("3/4 Mosquitto and edge-inspect")
    broker = Broker(Path(tempfile.mkdtemp(prefix="demo-broker-"))).start()
    heatmaps = out / "heatmaps"
    shutil.rmtree(heatmaps, ignore_errors=True)
    heatmaps.mkdir()
    subscriber = Subscriber(broker.port)
    print(f"broker on 127.0.0.1:{broker.port}; subscriber on edge/#")
    state = out / "state"
    shutil.rmtree(state, ignore_errors=True)
    config = out / "config.yaml"
    config.write_text(
        f"bundle: {bundle}\nstate_dir: {state}\nmqtt: {{host: 127.0.0.1, port: {broker.port}, topic_prefix: edge}}\n"
        f"publish: {{stats_interval_s: 2, preview_hz: 2}}\ncameras:\n  - station: demo-line\n    source: {{type: file, path: {stream}, fps: 60}}\n"
    )
    console, console_url = start_console(out, broker.port)
    shown = threading.Event()

    def show_rejects() -> None:
        seen = 0
        while not shown.is_set() or seen < len(subscriber.on("reject")):
            rejects, maps = subscriber.on("reject"), subscriber.on("heatmap")
            for message, picture in zip(rejects[seen:], maps[seen:]):
                payload = json.loads(message.payload)
                part = payload["part_id"]
                (heatmaps / f"part_{int(part):05d}.jpg").write_bytes(picture.payload)
                regions = ", ".join(f"{r['bbox']} peak {r['peak']:.1f}" for r in payload["regions"][:3])
                actual = truth.get(part) or "good"
                print(f"REJECT part {part:>4}  score {payload['score']:7.2f} > {payload['threshold']:.2f}  truth: {actual:<12} regions: {regions}", flush=True)
                seen += 1
            time.sleep(0.05)

    printer = threading.Thread(target=show_rejects, daemon=True)
    printer.start()
    daemon = subprocess.run([str(BIN / "edge-inspect"), "--config", str(config), "--log-level", "WARNING"])
    time.sleep(1.0)
    shown.set()
    printer.join(10)

    banner("4/4 summary")
    results = {json.loads(m.payload)["part_id"]: json.loads(m.payload) for m in subscriber.on("result")}
    rejected = {p for p, r in results.items() if r["verdict"] == "reject"}
    defective = {p for p, d in truth.items() if d is not None}
    stats = json.loads(subscriber.on("stats")[-1].payload) if subscriber.on("stats") else {}
    print(f"parts inspected {len(results)}/{len(truth)}; rejects {len(rejected)}; defective parts caught {len(rejected & defective)}/{len(defective)}; good parts rejected {len(rejected - defective)}/{len(truth) - len(defective)}")
    if stats:
        print(f"daemon: {stats['fps']} parts/s, latency p50 {stats['latency_ms']['p50']} ms p99 {stats['latency_ms']['p99']} ms, dropped {stats['dropped_frames']}")
    print(f"heatmaps: {heatmaps} ({len(list(heatmaps.glob('*.jpg')))} files); audit log: {state / 'audit'}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    if console is not None and sys.stdin.isatty():
        try:
            input(f"\nthe console is still up at {console_url} (overview, station live view, reject gallery); press Enter to stop it ")
        except (EOFError, KeyboardInterrupt):
            pass
    if console is not None:
        console.terminate()
        console.wait(10)
    subscriber.close()
    broker.stop()
    return 0 if daemon.returncode == 0 and len(results) == len(truth) else 1


if __name__ == "__main__":
    sys.exit(main())
