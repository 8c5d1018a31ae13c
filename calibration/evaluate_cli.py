"""edge-evaluate: how well a bundle separates good from defective parts of an MVTec-layout category."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def format_row(name: str, m: dict) -> str:
    def f(key):
        value = m.get(key)
        return "   -  " if value is None else f"{value:6.3f}"

    return f"{name:<16} {m['images']:>5} {f('image_auroc')} {f('pixel_auroc')} {f('pro')} {f('false_reject_rate')} {f('miss_rate')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-evaluate", description=__doc__)
    parser.add_argument("bundle", type=Path, help="bundle directory written by edge-calibrate")
    parser.add_argument("category", type=Path, help="category folder: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png")
    parser.add_argument("-o", "--output", type=Path, help="folder for evaluation.json and contact_sheet.png (default: BUNDLE/evaluation)")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    from calibration.datasets import open_category
    from calibration.evaluate import contact_sheet, evaluate_scored, score_category, write_outputs
    from calibration.images import ImageFolderError
    from engines.backends import BackendError
    from engines.bundle import BundleError, open_bundle

    try:
        bundle = open_bundle(args.bundle)
        category = open_category(args.category)
        scored = score_category(bundle, category, args.backend, threads=args.threads)
    except (BundleError, ImageFolderError, BackendError) as error:
        print(f"edge-evaluate: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = evaluate_scored(bundle, scored)
    json_path, png_path = write_outputs(result, contact_sheet(bundle, scored), args.output or args.bundle / "evaluation")
    print(f"{category.name}  threshold {result['threshold']:.3f}  ({result['seconds_per_image'] * 1000:.1f} ms/image, {args.backend})")
    print(f"{'':<16} {'n':>5} {'imAUC':>6} {'pxAUC':>6} {'PRO':>6} {'FRR':>6} {'miss':>6}")
    print(format_row("overall", result["overall"]))
    for name, m in result["per_type"].items():
        print(format_row(f"  {name}", m))
    print(format_row("test-set-max ref", result["reference_test_set_max"]))
    parts = result.get("image_auroc_of")
    if parts:
        print(f"image AUROC of the map's maximum alone {parts['map_maximum']:.3f}, of the part appearance alone {parts['part_appearance']:.3f}")
    print(f"wrote {json_path} and {png_path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
