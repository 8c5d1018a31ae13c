"""How compressed frames move a bundle's scores: its station's good parts as calibrated (lossless)
and after JPEG at a few qualities and through OpenCV's MJPEG video writer, scored through ONNX
Runtime exactly as the daemon scores a frame (engines/preprocess.py, then the Inspector).

  python bench/compression.py BUNDLE [BUNDLE ...] [--parts 40]
Prints one table and writes bench/results/compression.json. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import machine, write_results  # noqa: E402
from calibration.images import list_images  # noqa: E402
from engines.backends import open_backend  # noqa: E402
from engines.bundle import open_bundle  # noqa: E402
from engines.inspector import Inspector  # noqa: E402
from engines.preprocess import to_model_input  # noqa: E402
from tests.scenarios import read_video  # noqa: E402

JPEG_QUALITIES = (95, 85, 75)


def through_mjpeg_video(frames: list[np.ndarray], work: Path) -> list[np.ndarray]:
    path = work / "parts.avi"
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return read_video(path)


def jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def score(inspector: Inspector, frames: list[np.ndarray]) -> dict:
    manifest = inspector.bundle.manifest
    images = np.stack([to_model_input(f, tuple(manifest.input_size), manifest.colour) for f in frames])
    output = inspector.backend.infer(images)
    scored = inspector.scored_frames(output)
    scores = scored.scores
    part = manifest.scoring.part_scores(output.part_distances) if output.part_distances is not None else None
    return {
        "median_score": round(float(np.median(scores)), 3),
        "median_map_maximum": round(float(np.median(scored.map_scores)), 3),  # the map half of the score
        "median_part_score": None if part is None else round(float(np.median(part)), 3),
        "rejects": int((scores > manifest.thresholds.image).sum()),
        "parts": len(frames),
    }


def measure(bundle_path: Path, parts: int, work: Path) -> dict:
    bundle = open_bundle(bundle_path)
    good = list_images(Path(bundle.manifest.training["good_folder"]))[:parts]
    # What a camera hands the daemon: BGR frames, here at the bundle's size so only compression differs.
    size = tuple(bundle.manifest.input_size)
    frames = [cv2.resize(cv2.imread(str(p)), size[::-1], interpolation=cv2.INTER_AREA) for p in good]
    inspector = Inspector(bundle, open_backend("onnxruntime", bundle))
    try:
        rows = {"lossless (as calibrated)": score(inspector, frames)}
        for quality in JPEG_QUALITIES:
            rows[f"JPEG quality {quality}"] = score(inspector, [jpeg(f, quality) for f in frames])
        rows["OpenCV MJPEG video"] = score(inspector, through_mjpeg_video(frames, work))
    finally:
        inspector.backend.close()
    return {"bundle": str(bundle_path), "threshold": bundle.manifest.thresholds.image, "frames": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--parts", type=int, default=40, help="good parts per bundle (the first of its good folder)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "compression.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="compression-") as tmp:
        for path in args.bundles:
            results.append(measure(path, args.parts, Path(tmp)))
    print(f"{'bundle':<40} {'frames':<26} {'score':>6} {'map':>6} {'part':>6} {'rejects':>8}   threshold")
    for r in results:
        for name, row in r["frames"].items():
            part = "-" if row["median_part_score"] is None else f"{row['median_part_score']:.2f}"
            print(
                f"{Path(r['bundle']).name:<40} {name:<26} {row['median_score']:6.2f} {row['median_map_maximum']:6.2f} {part:>6} "
                f"{row['rejects']:>3} / {row['parts']:<3} {r['threshold']:.2f}"
            )
    write_results(args.output, {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
