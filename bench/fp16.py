"""FP16 numerics without a GPU: the GPU engines' arithmetic run by torch on the CPU.

For every category's calibrated bundle, the test images go through
  fp32        the product path on a line PC (ONNX Runtime, float32 graphs)
  torch-fp32  the torch model itself (the torch backend on the CPU, float32): the exported
              graphs must give its maps and decisions
  fp16        half encoder and half coupling matmuls, float32 flow state and reductions
              (the arithmetic of encoder_fp16.onnx / flows_fp16.onnx, hence of the FP16 plans)
  fp16-red16  the same, with the log-likelihood reductions in float16 too (what we do not ship)
and each is scored with the bundle's own constants and threshold. Reported: image AUROC, the
share of test images whose decision at the calibrated threshold equals fp32's, images with a
non-finite map, and the largest map difference where both are finite. Also the reduction's
headroom: the largest per-position sum of z squared (and |z|) on any test image, in float32,
against float16's largest finite value (65504).

  python bench/fp16.py [--bundles runs/bundles] [--variant default]
                      (bundles from bench/quality.py --keep-bundles; --variant "pooled 3x3" for
                      bundles kept from a --feature-pooling 3 run)
Writes bench/results/fp16.json. A benchmark, not a test: half precision on a CPU is slow.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULT_DATASETS, categories, kept_bundle, machine, write_results  # noqa: E402
from calibration.datasets import open_category  # noqa: E402
from calibration.images import load_images  # noqa: E402
from calibration.metrics import auroc  # noqa: E402
from engines.backends import ModelOutput, open_backend  # noqa: E402
from engines.backends.torch_backend import build_torch_model  # noqa: E402
from engines.bundle import open_bundle  # noqa: E402
from engines.cflow import FlowsGraph, FoldedDecoders  # noqa: E402
from engines.flow import half_reductions  # noqa: E402
from engines.scoring import anomaly_maps  # noqa: E402

VARIANTS = ("fp32", "torch-fp32", "fp16", "fp16-red16")


def model_outputs(bundle, images: np.ndarray, batch: int = 8) -> dict[str, ModelOutput]:
    out: dict[str, list[ModelOutput]] = {v: [] for v in VARIANTS}
    reference = open_backend("onnxruntime", bundle, threads=torch.get_num_threads())
    torch_model = open_backend("torch", bundle)
    model = build_torch_model(bundle)
    half_encoder = model.encoder.with_compute_dtype(torch.float16).eval()
    half_flows = FlowsGraph(FoldedDecoders(model.decoders, torch.float16), model.part_appearance, bundle.manifest.flow_taps, model.nearest_patch).eval()

    def run_half(features) -> ModelOutput:
        return ModelOutput.from_graph_outputs(half_flows.output_names, [m.float().numpy() for m in half_flows(*features)])

    started = time.monotonic()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            out["fp32"].append(reference.infer(chunk))
            out["torch-fp32"].append(torch_model.infer(chunk))
            features = half_encoder(torch.from_numpy(np.ascontiguousarray(chunk)))
            out["fp16"].append(run_half(features))
            with half_reductions():
                out["fp16-red16"].append(run_half(features))
            done = min(start + batch, len(images))
            print(f"\r  {done}/{len(images)} images, {time.monotonic() - started:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    reference.close()
    torch_model.close()
    return {variant: ModelOutput.concatenate(outputs) for variant, outputs in out.items()}


FLOAT16_MAX = 65504.0


def reduction_headroom(bundle, images: np.ndarray, batch: int = 8) -> dict:
    """What the log-likelihood reduction sums, at its largest over every position of every image."""
    model = build_torch_model(bundle)
    encoder, flows = model.encoder, FoldedDecoders(model.decoders).eval()
    largest_sum, largest_z = 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            features = encoder(torch.from_numpy(np.ascontiguousarray(images[start : start + batch])))
            for flow, feature in zip(flows.flows, (features[i] for i in bundle.manifest.flow_taps)):
                z, _ = flow.latents(feature)
                largest_sum = max(largest_sum, float((z * z).sum(dim=1).max()))
                largest_z = max(largest_z, float(z.abs().max()))
    return {"max_sum_z_squared": largest_sum, "max_abs_z": largest_z, "times_float16_max": largest_sum / FLOAT16_MAX}


def compare(bundle, outputs: dict[str, ModelOutput], labels: np.ndarray) -> dict[str, dict]:
    size = tuple(bundle.manifest.input_size)
    threshold = bundle.manifest.thresholds.image
    scored = {}
    for variant, output in outputs.items():
        with np.errstate(all="ignore"):
            maps, scores = anomaly_maps(output.log_likelihoods, bundle.manifest.scoring, size, output.part_distances, output.patch_distances)
        scored[variant] = (maps, scores)
    ref_maps, ref_scores = scored["fp32"]
    rows = {}
    for variant, (maps, scores) in scored.items():
        finite = np.isfinite(maps).all(axis=(1, 2)) & np.isfinite(scores)
        both = finite & np.isfinite(ref_maps).all(axis=(1, 2))
        diff = float(np.abs(maps[both] - ref_maps[both]).max()) if both.any() else None
        # A non-finite score is an automatic reject; NaN compares False, so treat it explicitly.
        decisions = np.where(np.isnan(scores), True, scores > threshold)
        rows[variant] = {
            "image_auroc": auroc(np.nan_to_num(scores, nan=np.inf), labels),
            "decisions_equal_to_fp32": float(np.mean(decisions == (ref_scores > threshold))),
            "images_nonfinite": int((~finite).sum()),
            "max_abs_map_diff": diff,
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--bundles", type=Path, default=ROOT / "runs" / "bundles")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", default="default", help="which kept bundles: the variant label bench/quality.py gave them")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "fp16.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measured_on = machine()
    results = []
    for directory in categories(args.datasets):
        category = open_category(directory)
        bundle = open_bundle(kept_bundle(args.bundles, directory, args.variant))
        print(f"{category.name}: {len(category.test)} test images", file=sys.stderr)
        images = load_images([t.path for t in category.test], tuple(bundle.manifest.input_size), bundle.manifest.colour).images
        labels = np.array([t.is_defective for t in category.test])
        rows = compare(bundle, model_outputs(bundle, images), labels)
        headroom = reduction_headroom(bundle, images)
        results.append({"dataset": category.name, "images": len(images), "threshold": bundle.manifest.thresholds.image, "variants": rows, "reduction": headroom})
    print(f"{'dataset':<22} {'variant':<11} {'imAUROC':>8} {'dAUROC pts':>10} {'same decision':>13} {'non-finite':>10} {'max map diff':>12}")
    for result in results:
        base = result["variants"]["fp32"]["image_auroc"]
        for variant, row in result["variants"].items():
            diff = "-" if row["max_abs_map_diff"] is None else f"{row['max_abs_map_diff']:.3g}"
            print(
                f"{result['dataset']:<22} {variant:<11} {row['image_auroc']:8.4f} {100 * (row['image_auroc'] - base):10.3f} "
                f"{100 * row['decisions_equal_to_fp32']:12.2f}% {row['images_nonfinite']:10d} {diff:>12}"
            )
    print(f"\n{'dataset':<22} {'max sum z^2':>12} {'x fp16 max':>10} {'max |z|':>8}")
    for result in results:
        r = result["reduction"]
        print(f"{result['dataset']:<22} {r['max_sum_z_squared']:12.4g} {r['times_float16_max']:10.3g} {r['max_abs_z']:8.4g}")
    write_results(args.output, {"machine": measured_on, "torch": torch.__version__, "variant": args.variant, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
