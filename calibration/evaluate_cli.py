"""edge-evaluate: how well a bundle separates good from defective parts of an MVTec-layout category."""

from __future__ import annotations

import sys
from pathlib import Path

from calibration.cli_checks import MAX_THREADS, BadInput, OneLineErrors, check_can_create_in, os_error_line, refuse_inside_bundle, whole_number
from engines.version import version_line

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def default_output(bundle: Path) -> Path:
    """BUNDLE.evaluation beside the bundle: a bundle holds only the files its manifest lists."""
    bundle = bundle.resolve()  # "." and ".." have no name to add to
    return bundle.with_name(bundle.name + ".evaluation")


def check_output(output: Path, bundle: Path) -> None:
    option = "-o/--output"
    if output.is_file():
        raise BadInput(f"{option} {output}: is a file, not a folder; choose another path")
    refuse_inside_bundle(output, bundle)
    check_can_create_in(output, output, option)


def format_row(name: str, m: dict) -> str:
    def f(key):
        value = m.get(key)
        return "   -  " if value is None else f"{value:6.3f}"

    return f"{name:<16} {m['images']:>5} {f('image_auroc')} {f('pixel_auroc')} {f('pro')} {f('false_reject_rate')} {f('miss_rate')}"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrors(prog="edge-evaluate", description=__doc__)
    parser.add_argument("bundle", type=Path, help="bundle directory written by edge-calibrate")
    parser.add_argument("category", type=Path, help="category folder: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png")
    parser.add_argument("-o", "--output", type=Path, help="folder for evaluation.json and contact_sheet.png (default: BUNDLE.evaluation, beside the bundle)")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--threads", type=whole_number(0, MAX_THREADS), default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--version", action="version", version=version_line("edge-evaluate"))
    args = parser.parse_args(argv)

    from calibration.datasets import open_category
    from calibration.evaluate import contact_sheet, evaluate_scored, score_category, write_outputs
    from calibration.images import ImageFolderError
    from engines.backends import BackendError
    from engines.bundle import BundleError, open_bundle

    try:
        if not args.bundle.is_dir():
            raise BadInput(f"BUNDLE {args.bundle}: not a folder; give the bundle directory edge-calibrate wrote")
        bundle = open_bundle(args.bundle)
        if not args.category.is_dir():
            raise BadInput(f"CATEGORY {args.category}: not a folder")
        category = open_category(args.category)
        output = args.output or default_output(args.bundle)
        check_output(output, args.bundle)
        scored = score_category(bundle, category, args.backend, threads=args.threads)
        result = evaluate_scored(bundle, scored)
        json_path, png_path = write_outputs(result, contact_sheet(bundle, scored), output)
    except (BadInput, BundleError, ImageFolderError, BackendError) as error:
        print(f"edge-evaluate: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"edge-evaluate: {os_error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{category.name}  threshold {result['threshold']:.3f}  ({result['seconds_per_image'] * 1000:.1f} ms/image, {args.backend})")
    print(f"{'':<16} {'n':>5} {'imAUC':>6} {'pxAUC':>6} {'PRO':>6} {'FRR':>6} {'miss':>6}")
    print(format_row("overall", result["overall"]))
    for name, m in result["per_type"].items():
        print(format_row(f"  {name}", m))
    print(format_row("test-set-max ref", result["reference_test_set_max"]))
    parts = result.get("image_auroc_of")
    if parts and parts["map_maximum"] is not None:
        print(f"image AUROC of the map half alone {parts['map_maximum']:.3f}, of the part appearance alone {parts['part_appearance']:.3f}")
    if result["overall"]["image_auroc"] is None:
        print(f"{args.category / 'test'} holds no good parts: image AUROC and the false-reject rate need some in test/good/ (shown as -)")
    print(f"wrote {json_path} and {png_path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
