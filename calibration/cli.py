"""edge-calibrate: learn a station's good parts and write a bundle for edge-inspect."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from calibration.calibrate import AugmentConfig, CalibrationSettings, calibrate
from calibration.cli_checks import MAX_AUGMENT_COPIES, MAX_COUPLING_BLOCKS, MAX_THREADS, BadInput, OneLineErrors, check_output, os_error_line, whole_number
from engines.encoders import ENCODER_NAMES, TAP_STRIDES
from engines.version import version_line

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def parse_size(text: str) -> tuple[int, int]:
    """'256' or 'HEIGHTxWIDTH'; multiples of 32 so every scale tiles the image exactly."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size {text!r}: expected N or HEIGHTxWIDTH, e.g. 256 or 256x320") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p < 64 or p > 2048 or p % 32 for p in parts):
        raise argparse.ArgumentTypeError(f"input size {text!r}: each side must be a multiple of 32 between 64 and 2048")
    return parts[0], parts[1]


def parse_strides(text: str) -> tuple[int, ...]:
    """'8,16,32', a subset such as '8,16', or '4,8,16,32': the feature scales CFLOW-AD models."""
    from engines.encoders import EncoderError, check_tap_strides

    try:
        return check_tap_strides(tuple(int(p) for p in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"strides {text!r}: expected numbers separated by commas, e.g. 8,16") from None
    except EncoderError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1 (exclusive)")
    return value


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
    if not (math.isfinite(value) and value > 0):  # nan and inf would train forever or not at all
        raise argparse.ArgumentTypeError(f"{text}: must be a number above 0")
    return value


def check_image_folder(folder: Path, label: str) -> None:
    """Refused when it is not a folder or holds no image. Reads names only: calibrate() reads every
    image (and names each bad one) before the model is loaded."""
    from calibration.images import IMAGE_SUFFIXES, ImageFolderError, list_images

    if not folder.exists():
        raise BadInput(f"{label} {folder}: not a folder (it does not exist)")
    if not folder.is_dir():
        raise BadInput(f"{label} {folder}: not a folder (it is a file)")
    try:
        images = list_images(folder)
    except (ImageFolderError, OSError) as error:
        raise BadInput(f"{label} {folder}: cannot be listed ({error})") from None
    if not images:
        raise BadInput(f"{label} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")


def check_inputs(args: argparse.Namespace) -> None:
    check_image_folder(args.good, "GOOD folder")
    if args.holdout is not None:
        check_image_folder(args.holdout, "--holdout")
        if args.holdout.resolve() == args.good.resolve():
            raise BadInput(f"--holdout {args.holdout}: is the GOOD folder; held-out parts must not be trained on (leave --holdout out to hold out part of GOOD)")
    if args.defects is not None:
        check_image_folder(args.defects, "--defects")
    if args.masks is not None and not args.masks.is_dir():
        raise BadInput(f"--masks {args.masks}: not a folder")
    check_output(args.output, args.force)
    if args.sign_key is not None:
        from engines.signing import SigningError, check_private_key

        try:
            check_private_key(args.sign_key)
        except SigningError as error:
            raise BadInput(f"--sign-key {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="edge-calibrate",
        description="Train CFLOW-AD on a folder of good part images and write a bundle for edge-inspect.",
    )
    parser.add_argument("good", type=Path, help="folder of good part images (PNG, JPEG, BMP, TIFF; any size, colour or gray)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --output")
    parser.add_argument("--holdout", type=Path, help="separate folder of good images for the threshold (default: hold out part of GOOD)")
    parser.add_argument("--holdout-fraction", type=fraction, default=0.2, help="share of GOOD held out for the threshold (default 0.2)")
    parser.add_argument("--defects", type=Path, help="optional folder of defective parts: reports the miss rate at the threshold")
    parser.add_argument("--target-frr", type=fraction, default=0.01, help="target false-reject rate on good parts (default 0.01)")
    parser.add_argument("--pixel-fpr", type=fraction, default=0.005, help="share of good pixels allowed above the region threshold (default 0.005)")
    parser.add_argument("--encoder", choices=ENCODER_NAMES, default="efficientnet-lite0")
    parser.add_argument("--input-size", type=parse_size, default=(256, 256), help="N or HEIGHTxWIDTH, multiples of 32 (default 256)")
    parser.add_argument("--colour", choices=("auto", "rgb", "gray"), default="auto", help="auto: gray when every good image is gray")
    parser.add_argument(
        "--strides",
        type=parse_strides,
        default=None,
        metavar="S,S",
        help="feature scales with a flow (default 8,16,32, and 32 left out where synthetic defects made from the "
        "held-out good parts score best without it; given here, every scale named is kept). Adding 4 sharpens the outlines of small defects; "
        "8,16 suits small, sharp defects (the whole-part score still sees stride 32); large, faint ones need 32 "
        "and lose with 4: compare bundles with edge-evaluate, or let --choose-strides compare them",
    )
    parser.add_argument(
        "--choose-strides",
        type=parse_strides,
        nargs="*",
        metavar="S,S",
        help="calibrate each of these scale settings (default: 8,16,32 8,16 4,8,16,32) and keep the one that best "
        "separates the held-out good parts from the parts in --defects; with --masks, outlines count too",
    )
    parser.add_argument(
        "--masks",
        type=Path,
        help="with --choose-strides: folder of the --defects images' masks (<stem>_mask.png or <stem>.png, defect pixels non-zero)",
    )
    parser.add_argument("--coupling-blocks", type=whole_number(1, MAX_COUPLING_BLOCKS), default=8)
    parser.add_argument(
        "--feature-pooling",
        type=int,
        choices=(1, 3, 5),
        default=1,
        metavar="K",
        help="average the features over K x K neighbours (1, 3 or 5; default 1: none). 3 helps large, faint "
        "defects and whole-part detection and costs the outline of small ones: compare bundles with edge-evaluate",
    )
    parser.add_argument(
        "--no-part-appearance",
        dest="part_appearance",
        action="store_false",
        help="score parts by the anomaly map alone, without the whole-part appearance model (default: both)",
    )
    parser.add_argument(
        "--no-nearest-patch",
        dest="nearest_patch",
        action="store_false",
        help="build the anomaly map from the flows alone, without each position's distance to its nearest good patch "
        "(default: both, unless synthetic defects veto the term; it sharpens outlines and costs about 2 ms per frame on 2 cores)",
    )
    parser.add_argument("--epochs", type=positive_number, default=None, help="passes over the finest scale's fibers (default from the training config)")
    parser.add_argument("--max-steps", type=whole_number(1), default=None, help="cap on optimiser steps per scale (a quick trial run)")
    parser.add_argument("--augment", type=whole_number(0, MAX_AUGMENT_COPIES), default=0, metavar="COPIES", help="add COPIES shifted/rotated copies of each good image (unfixtured parts)")
    parser.add_argument("--threads", type=whole_number(0, MAX_THREADS), default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the good parts are encoded and the flows train: auto takes a GPU when torch sees one (default auto)")
    parser.add_argument("--seed", type=whole_number(0, 2**63 - 1), default=0)  # what numpy and torch both take
    parser.add_argument("--json", action="store_true", help="print the calibration report as JSON on stdout")
    parser.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM): sign the bundle for stations that require signed bundles")
    parser.add_argument("--version", action="version", version=version_line("edge-calibrate"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dataclasses import replace

    from calibration.images import ImageFolderError
    from calibration.train import TrainConfig
    from engines.bundle import BundleError
    from engines.encoders import EncoderError
    from engines.flow import FlowConfig

    choosing = args.choose_strides is not None
    if choosing and args.strides is not None:
        print("edge-calibrate: give either --strides or --choose-strides, not both", file=sys.stderr)
        return EXIT_BAD_INPUT
    if choosing and args.defects is None:
        print("edge-calibrate: --choose-strides needs --defects DIR: a few defective parts (10 or more; with --masks, their marked regions) to compare the candidates on", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.masks is not None and not choosing:
        print("edge-calibrate: --masks is used with --choose-strides", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        check_inputs(args)
    except BadInput as error:
        print(f"edge-calibrate: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # a folder on the way that cannot be looked into
        print(f"edge-calibrate: {os_error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from calibration.device import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        print(f"edge-calibrate: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    train = TrainConfig(seed=args.seed)
    if args.epochs is not None:
        train = replace(train, epochs=args.epochs, steps_per_scale=None)
    if args.max_steps is not None:
        train = replace(train, max_steps_per_scale=args.max_steps, min_steps_per_scale=min(train.min_steps_per_scale, args.max_steps))
    settings = CalibrationSettings(
        encoder=args.encoder,
        input_size=args.input_size,
        flow_strides=args.strides or TAP_STRIDES,
        may_drop_coarsest_flow=args.strides is None,  # flows asked for by name are kept
        colour=None if args.colour == "auto" else args.colour,
        flow=FlowConfig(coupling_blocks=args.coupling_blocks),
        feature_pooling=args.feature_pooling,
        part_appearance=args.part_appearance,
        nearest_patch=args.nearest_patch,
        train=train,
        augment=AugmentConfig(copies=args.augment),
        holdout_fraction=args.holdout_fraction,
        target_false_reject_rate=args.target_frr,
        target_pixel_false_positive_rate=args.pixel_fpr,
        threads=args.threads,
        device=device.type,
    )
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    choice = None
    try:
        if choosing:
            from calibration.choose_strides import DEFAULT_CANDIDATES, choose_strides

            bundle, report, choice = choose_strides(
                args.good,
                args.output,
                settings,
                args.defects,
                args.masks,
                tuple(args.choose_strides) or DEFAULT_CANDIDATES,
                args.holdout,
                args.force,
                log=log,
            )
        else:
            bundle, report = calibrate(args.good, args.output, settings, args.holdout, args.defects, args.force, log=log)
        if args.sign_key is not None:
            from engines.signing import sign_manifest

            sign_manifest(bundle.path, args.sign_key)
            log(f"signed {bundle.path} with {args.sign_key}")
    except (ImageFolderError, BundleError, EncoderError) as error:
        print(f"edge-calibrate: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # FileExistsError included; e.g. the disk filled while writing
        print(f"edge-calibrate: {os_error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("edge-calibrate: interrupted; nothing was written", file=sys.stderr)
        return EXIT_FAILED
    t = bundle.manifest.thresholds
    if choice is not None:
        log(f"chose strides {','.join(map(str, choice.chosen))} by {choice.criterion} on {choice.held_out_good} held-out good and {choice.defect_samples} defective parts")
    seconds = choice.seconds if choice is not None else report.seconds["total"]
    log(f"wrote {bundle.path} (bundle {bundle.bundle_id}) in {seconds:.0f}s")
    log(f"image threshold {t.image:.3f} ({t.method}); region threshold {t.pixel:.3f}")
    log(f"held-out false-reject rate {report.holdout_false_reject_rate:.3f} on {report.holdout_images} good parts")
    if report.part_appearance_shrinkage is not None:
        log(f"whole-part appearance model: Gaussian over {report.part_appearance_statistics} statistics, Ledoit-Wolf shrinkage {report.part_appearance_shrinkage:.3f}")
    left_out = f" (stride {report.flow_stride_left_out} left out: synthetic defects scored best without it)" if report.flow_stride_left_out else ""
    log(f"flows at strides {','.join(map(str, bundle.manifest.flow_strides))}{left_out}")
    if report.nearest_patch_bank:
        log(f"nearest good patch: a bank of {report.nearest_patch_bank} patches at stride 8")
    if report.defect_miss_rate is not None:
        log(f"miss rate {report.defect_miss_rate:.3f} on {report.defect_images} defective parts")
    if args.json:
        from dataclasses import asdict

        extra = {"stride_choice": choice.to_json()} if choice is not None else {}
        print(json.dumps({"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, **asdict(report), **extra}, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
