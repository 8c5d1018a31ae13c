"""edge-bundle: look at a bundle, and make the supported changes to one.

  edge-bundle show BUNDLE                                  what it is, its thresholds and history
  edge-bundle retune BUNDLE -o NEW --threshold X --why ..  a new bundle with another threshold
  edge-bundle retune BUNDLE -o NEW --target-frr F --why .. ... chosen for another false-reject target
  edge-bundle reseal OLD -o NEW --why ..                   carry a bundle from before format 4 over
  edge-bundle refit BUNDLE GOOD_DIR -o NEW --why ..        scoring and threshold fitted again on good parts
  edge-bundle sign BUNDLE --key PRIVATE.pem                sign it for stations that require signatures

A bundle's manifest is never edited by hand (the daemon refuses one that was): these commands
write a new bundle and record who, why and when in its history. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from calibration.cli_checks import MAX_THREADS, BadInput, OneLineErrors, check_output, os_error_line, refuse_inside_bundle, whole_number
from engines.version import version_line

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number")
    return value


def fraction(text: str) -> float:
    value = positive(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1 (exclusive)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="edge-bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("edge-bundle"))
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="what the bundle is, its thresholds and history")
    show.add_argument("bundle", type=Path)
    show.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    for name, text in (("retune", "a new bundle with another image threshold"), ("reseal", "carry a bundle from before format 4 over")):
        command = commands.add_parser(name, help=text)
        command.add_argument("bundle", type=Path)
        command.add_argument("-o", "--output", type=Path, required=True, help="the new bundle's directory")
        command.add_argument("--why", required=True, help="the reason, kept in the new bundle's history")
        command.add_argument("--who", help="who asks for it (default: the login name)")
        command.add_argument("--force", action="store_true", help="replace an existing bundle at --output")
        if name == "retune":
            choice = command.add_mutually_exclusive_group(required=True)
            choice.add_argument("--threshold", type=positive, help="the new image threshold (the score a part must exceed to be rejected)")
            choice.add_argument("--target-frr", type=fraction, help="choose the threshold for this false-reject rate on the calibration's held-out good parts")
    refit = commands.add_parser("refit", help="fit the scoring constants and the threshold again on a folder of good parts (no retraining)")
    refit.add_argument("bundle", type=Path)
    refit.add_argument("good", type=Path, help="folder of good part images as the station sees them now (review/good, a teach-in folder)")
    refit.add_argument("-o", "--output", type=Path, required=True, help="the new bundle's directory")
    refit.add_argument("--why", required=True, help="the reason, kept in the new bundle's history")
    refit.add_argument("--who", help="who asks for it (default: the login name)")
    refit.add_argument("--defects", type=Path, help="folder of defective parts: report the miss rate at the new threshold")
    refit.add_argument("--target-frr", type=fraction, help="false-reject target (default: the bundle's)")
    refit.add_argument("--threads", type=whole_number(0, MAX_THREADS), default=0, help="CPU threads (default: all)")
    refit.add_argument("--force", action="store_true", help="replace an existing bundle at --output")
    sign = commands.add_parser("sign", help="sign the bundle's manifest with an Ed25519 private key")
    sign.add_argument("bundle", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="PEM private key (openssl genpkey -algorithm ed25519)")
    return parser


def describe(bundle) -> str:
    m = bundle.manifest
    t = m.thresholds
    lines = [
        f"bundle {bundle.bundle_id} at {bundle.path} (format {m.format_version}, written {m.created} by {m.project_version})",
        f"  {m.encoder.name}, input {m.input_size[1]}x{m.input_size[0]} {m.colour}, flows at strides {', '.join(map(str, m.flow_strides))}",
        # A threshold set by hand was not chosen for the target the bundle still records.
        f"  image threshold {t.image:.4g} ({t.method})"
        if t.method.startswith("set by hand")
        else f"  image threshold {t.image:.4f} for a {100 * t.target_false_reject_rate:g}% false-reject target ({t.method})",
        f"  pixel threshold {t.pixel:.4f}; {t.good_parts} held-out good parts",
    ]
    for entry in m.history:
        lines.append(f"  {entry.get('time')} {entry.get('action')} by {entry.get('who')}: {entry.get('why')} {json.dumps(entry.get('changes'))}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from calibration.images import ImageFolderError
    from calibration.retune import reseal, retune
    from engines.bundle import BundleError, open_bundle
    from engines.signing import sign_manifest

    try:
        if args.command in ("retune", "refit", "reseal"):
            check_new_bundle(args)
        if args.command == "show":
            bundle = open_bundle(args.bundle)
            print(json.dumps(bundle.manifest.to_json(), indent=2) if args.json else describe(bundle))
        elif args.command == "retune":
            bundle = retune(open_bundle(args.bundle), args.output, args.why, args.threshold, args.target_frr, args.who, args.force)
            print(describe(bundle))
        elif args.command == "refit":
            from calibration.refit import refit

            for folder, what in ((args.good, "GOOD_DIR"), (args.defects, "--defects")):
                if folder is not None and not folder.is_dir():
                    raise BundleError(f"{what} {folder}: not a folder")
            bundle, report = refit(
                open_bundle(args.bundle),
                args.good,
                args.output,
                args.why,
                args.who,
                args.defects,
                args.target_frr,
                args.threads,
                args.force,
                log=lambda message: print(message, file=sys.stderr),
            )
            print(describe(bundle))
            print(
                f"  on {report.good_parts} good parts: false-reject rate {report.false_reject_rate_before:.3f} -> {report.false_reject_rate_after:.3f}, "
                f"threshold {report.threshold_before:.4f} -> {report.threshold_after:.4f}"
                + (f"; miss rate {report.miss_rate:.3f} on {report.defect_images} defective parts" if report.miss_rate is not None else "")
            )
        elif args.command == "reseal":
            bundle = reseal(open_bundle(args.bundle, unsealed=True), args.output, args.why, args.who, args.force)
            print(describe(bundle))
        else:
            open_bundle(args.bundle)  # sign only what verifies
            sign_manifest(args.bundle, args.key)
            print(f"{args.bundle}: signed with {args.key}")
    except (BadInput, BundleError, ImageFolderError) as error:
        print(f"edge-bundle: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"edge-bundle: {os_error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def check_new_bundle(args: argparse.Namespace) -> None:
    """-o/--output and --why of the commands that write a new bundle, before any work: --force
    replaces only a bundle (never a folder of other things, nor one holding the source bundle),
    and the new bundle may not go inside the one it is made from."""
    if not args.why.strip():
        raise BadInput("--why: empty; say why the bundle changes (it is kept in the new bundle's history)")
    if args.output.resolve() == args.bundle.resolve():
        raise BadInput(f"-o/--output {args.output}: the bundle it is made from; the new bundle must go to another path (the old one is kept)")
    refuse_inside_bundle(args.output, args.bundle)
    check_output(args.output, args.force)


if __name__ == "__main__":
    sys.exit(main())
