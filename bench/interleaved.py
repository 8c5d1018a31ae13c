"""Exact rewrites of the per-frame work, each timed against what it replaced, interleaved.

This VM's speed drifts by 2x within minutes, so two bench/speed.py runs minutes apart cannot
show a 10 % change. Here each pair runs in one process, alternating in short rounds, on one
thread (what each of the daemon's inference workers has):
  encoder   the bundle's encoder graph with the exporter's Pad nodes, and the same graph with
            them folded into the convolutions (engines/onnx_pads.py, what export writes now)
  scoring   the anomaly map in float64 throughout (the product until this change), and the
            product's (float32, float64 only for a frame with a far less likely region)
Each pair's outputs are compared too: the rewrites must not change a map.

  python bench/interleaved.py --bundle DIR [--bundle DIR ...] [--rounds 15] [--frames 20]

Writes bench/results/interleaved.json. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import machine, write_results  # noqa: E402
from calibration.images import load_images  # noqa: E402
from engines.backends import open_backend  # noqa: E402
from engines.bundle import ENCODER_ONNX, open_bundle  # noqa: E402
from engines.onnx_pads import fold_pads_into_convs  # noqa: E402
from engines.scoring import anomaly_maps, float64_map, relative_likelihoods  # noqa: E402


def float64_anomaly_maps(log_likelihoods, constants, output_size, part_distances=None, patch_distances=None) -> np.ndarray:
    """Every frame's map in float64, as engines/scoring.py made them all before the float32 path."""
    terms = relative_likelihoods(log_likelihoods, constants, patch_distances)
    weights = constants.normalised_weights()
    return np.stack([float64_map([term[b] for term in terms], weights, output_size, constants.blur_sigma) for b in range(len(terms[0]))]).astype(np.float32)


def one_thread_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleave(pair: dict[str, object], frames: list, rounds: int) -> dict[str, float]:
    """pair: label -> callable(frame); returns label -> median ms per frame over the rounds."""
    times: dict[str, list[float]] = {label: [] for label in pair}
    for run in pair.values():  # warm-up
        for frame in frames[:3]:
            run(frame)  # type: ignore[operator]
    for _ in range(rounds):
        for label, run in pair.items():
            started = time.perf_counter()
            for frame in frames:
                run(frame)  # type: ignore[operator]
            times[label].append(1e3 * (time.perf_counter() - started) / len(frames))
    return {label: round(statistics.median(values), 3) for label, values in times.items()}


def measure(bundle_dir: Path, frames: int, rounds: int, work: Path) -> dict:
    bundle = open_bundle(bundle_dir)
    manifest = bundle.manifest
    images = load_images(sorted(Path(manifest.training["good_folder"]).iterdir())[:frames], tuple(manifest.input_size), manifest.colour).images
    batches = [images[i : i + 1] for i in range(len(images))]

    exported = bundle.file(ENCODER_ONNX)
    with_pads, folded = work / "with_pads.onnx", work / "folded.onnx"
    shutil.copy(exported, with_pads)
    shutil.copy(exported, folded)
    pads_in_bundle = fold_pads_into_convs(folded)
    sessions = {"with Pad nodes": one_thread_session(with_pads), "Pads folded": one_thread_session(folded)}
    encoder_ms = interleave({label: (lambda x, s=s: s.run(None, {"image": x})) for label, s in sessions.items()}, batches, rounds)
    a, b = (s.run(None, {"image": images}) for s in sessions.values())
    encoder_difference = max(float(np.abs(x - y).max()) for x, y in zip(a, b))

    backend = open_backend("onnxruntime", bundle, threads=1)
    outputs = [backend.infer(x) for x in batches]
    size = tuple(manifest.input_size)

    def args(out):
        return (out.log_likelihoods, manifest.scoring, size, out.part_distances, out.patch_distances)

    scoring_ms = interleave({"float64": lambda out: float64_anomaly_maps(*args(out)), "product": lambda out: anomaly_maps(*args(out))}, outputs, rounds)
    map_difference = max(float(np.abs(float64_anomaly_maps(*args(out)) - anomaly_maps(*args(out))[0]).max()) for out in outputs)
    return {
        "bundle": str(bundle_dir),
        "frames": len(batches),
        "rounds": rounds,
        "pad_nodes_folded": pads_in_bundle,
        "encoder_ms": encoder_ms,
        "encoder_largest_difference": encoder_difference,
        "scoring_ms": scoring_ms,
        "map_largest_difference": map_difference,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle from bench/quality.py --keep-bundles (repeatable)")
    parser.add_argument("--frames", type=int, default=20, help="good parts of the bundle's own training folder")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "interleaved.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="interleaved-") as tmp:
        for bundle_dir in args.bundle:
            row = measure(bundle_dir, args.frames, args.rounds, Path(tmp))
            rows.append(row)
            print(
                f"{bundle_dir.name}: encoder {row['encoder_ms']} ms (Pads folded: {row['pad_nodes_folded']}, largest difference {row['encoder_largest_difference']:.2g}); "
                f"scoring {row['scoring_ms']} ms (largest map difference {row['map_largest_difference']:.2g})"
            )
    write_results(args.output, {"machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
