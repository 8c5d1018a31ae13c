"""What the line's commands cost on this machine: memory per extra recipe bundle, a recipe switch
per part against none, and the review ring's PNG per part.

  memory   a fresh process loads a station with 1..4 recipes (Lite0 256, the daemon's worker
           plan for this machine), resident memory after the warm-up of every engine
  switch   inspect_frame on 300 frames: every part on recipe A, then every part alternating
           A/B (each part a switch); per-part time p50/p95
  review   a lossless PNG of one ROI crop (256x256 and 1024x1024 colour, with sensor noise):
           why the review ring keeps passes in memory and writes only rejects and labelled parts

  python bench/line_commands.py
Writes bench/results/line_commands.json and prints the tables. A benchmark, not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import machine, write_results  # noqa: E402
from bench.speed import METAL_PLATE, make_bundle  # noqa: E402

LOAD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from edge.config import load_config
from edge.station_engine import load_engines, plan_inference, usable_cores
config = load_config({config!r})
plan = plan_inference("onnxruntime", 0, 0, usable_cores())
start = time.monotonic()
engines = load_engines(config, plan)
seconds = time.monotonic() - start
rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
print(json.dumps({{"engines": len(engines), "workers": plan.workers, "rss_mib": rss, "load_s": round(seconds, 2)}}))
"""


def _config(work: Path, bundles: list[Path]) -> Path:
    recipes = ", ".join(f"R{i}: {b}" for i, b in enumerate(bundles))
    path = work / f"config-{len(bundles)}.yaml"
    path.write_text(f"state_dir: {work / 'state'}\ncameras:\n  - station: s\n    recipes: {{{recipes}}}\n    recipe: R0\n    source: {{type: folder, path: {work}}}\n")
    return path


def memory(work: Path, bundles: list[Path]) -> list[dict]:
    rows = []
    for count in range(1, len(bundles) + 1):
        code = LOAD.format(root=str(ROOT), config=str(_config(work, bundles[:count])))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        rows.append({"recipes": count, **json.loads(out.strip().splitlines()[-1])})
    return rows


def switch(work: Path, bundles: list[Path], frames: int = 300) -> dict:
    from edge.capture import Frame
    from edge.config import load_config
    from edge.inspection import inspect_frame
    from edge.station_engine import load_engines, plan_inference, recipe_engines

    config = load_config(_config(work, bundles[:2]))
    engines = recipe_engines(config, config.cameras[0], load_engines(config, plan_inference("onnxruntime", 1, 1, 1)))
    images = [cv2.imread(str(p)) for p in sorted((METAL_PLATE / "test").glob("*/*.png"))[:30]]
    result = {}
    for name, pick in (("same recipe", lambda i: "R0"), ("switch every part", lambda i: ("R0", "R1")[i % 2])):
        times = []
        for i in range(frames):
            frame = Frame(images[i % len(images)], i, time.time(), str(i), recipe=pick(i))
            start = time.perf_counter()
            inspect_frame(frame, engines[frame.recipe or "R0"], config.cameras[0])
            times.append((time.perf_counter() - start) * 1000)
        result[name] = {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2)}
    return result


def review_png() -> dict:
    out = {}
    rng = np.random.default_rng(0)
    part = cv2.imread(str(sorted((METAL_PLATE / "train" / "good").glob("*.png"))[0]))
    for side in (256, 1024):
        view = cv2.resize(part, (side, side)) + rng.integers(0, 3, (side, side, 3), dtype=np.uint8)  # sensor noise
        times = []
        for _ in range(30):
            start = time.perf_counter()
            ok, encoded = cv2.imencode(".png", view, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            times.append((time.perf_counter() - start) * 1000)
        out[f"{side}x{side}"] = {"p50_ms": round(float(np.median(times)), 2), "kib": len(encoded) // 1024}
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as directory:
        work = Path(directory)
        first = make_bundle("efficientnet-lite0", 256, work)
        bundles = [first]
        for i in range(1, 4):  # recipes of other products: other bundles (retuned copies load the same)
            copy = work / f"recipe-{i}"
            subprocess.run([sys.executable, "-m", "calibration.bundle_cli", "retune", str(first), "-o", str(copy), "--why", "bench", "--threshold", str(1.0 + i)], check=True, cwd=ROOT, capture_output=True)
            bundles.append(copy)
        rows = memory(work, bundles)
        switching = switch(work, bundles)
    review = review_png()
    print("| recipes | engines | workers | RSS MiB | load s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipes']} | {r['engines']} | {r['workers']} | {r['rss_mib']} | {r['load_s']} |")
    per_extra = (rows[-1]["rss_mib"] - rows[0]["rss_mib"]) / (len(rows) - 1)
    print(f"\nper extra recipe bundle: {per_extra:.0f} MiB")
    print("\n| parts | p50 ms | p95 ms |\n|---|---|---|")
    for name, r in switching.items():
        print(f"| {name} | {r['p50_ms']} | {r['p95_ms']} |")
    print("\n| review PNG | p50 ms | KiB |\n|---|---|---|")
    for name, r in review.items():
        print(f"| {name} | {r['p50_ms']} | {r['kib']} |")
    write_results(ROOT / "bench" / "results" / "line_commands.json", {"machine": machine(), "memory": rows, "per_extra_recipe_mib": per_extra, "switch": switching, "review_png": review})


if __name__ == "__main__":
    main()
