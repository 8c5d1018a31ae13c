"""Detection quality on every category under ../shared/datasets: calibrate, then evaluate.

Prints one table and writes bench/results/quality.json (with the machine and commit).
  --ablation    positional condition off, 1/2/3 scales, 4 vs 8 coupling blocks, features pooled
                3x3, image-score rules
  --feature-pooling K  calibrate every bundle with K x K feature pooling (edge-calibrate's option)
  --score-rules image AUROC of other map-to-score rules only (cheap)
  --robustness  test parts shifted/rotated, and what training augmentation recovers
This is a benchmark, not a test: it takes tens of minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.augment import move_parts  # noqa: E402
from calibration.calibrate import AugmentConfig, CalibrationSettings, calibrate  # noqa: E402
from calibration.cli import parse_strides  # noqa: E402
from calibration.datasets import open_category  # noqa: E402
from calibration.evaluate import category_metrics, evaluate_scored, score_category  # noqa: E402
from calibration.metrics import auroc  # noqa: E402
from engines.bundle import open_bundle  # noqa: E402
from engines.encoders import TAP_STRIDES  # noqa: E402
from engines.flow import FlowConfig  # noqa: E402
from engines.scoring import anomaly_maps  # noqa: E402

DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
SHIFT, DEGREES = 0.03, 3.0


def categories(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if (p / "train" / "good").is_dir())


def bundle_label(category_dir: Path, variant: str) -> str:
    """The folder name --keep-bundles gives a category's bundle: dataset_category_variant."""
    return f"{category_dir.parent.name}_{category_dir.name}_{variant}"


def kept_bundle(bundles: Path, category_dir: Path, variant: str) -> Path:
    """A bundle this script kept, or an exit that says how to make it."""
    path = bundles / bundle_label(category_dir, variant)
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {path}; run bench/quality.py --keep-bundles {bundles} (with the settings of '{variant}') first")
    return path


def write_results(path: Path, payload: dict) -> None:
    """A bench's JSON under bench/results/ (or where --output says), and where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"commit": commit + ("-dirty" if dirty else ""), "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def run_one(category_dir: Path, settings: CalibrationSettings, work: Path, move=None, label: str = "", reuse: bool = False) -> tuple[dict, object, object]:
    category = open_category(category_dir)
    out = work / bundle_label(category.root, label or "default")
    if reuse and (out / "manifest.json").is_file():
        # A bundle this script calibrated before: its manifest says how long that took.
        bundle = open_bundle(out)
        seconds = bundle.manifest.training["report"]["seconds"]
        calibration_s, train_s = seconds.get("total", sum(seconds.values())), seconds["train"]  # total is known only after export
    else:
        started = time.monotonic()
        bundle, report = calibrate(category.root / "train" / "good", out, settings, force=True, log=lambda m: print(m, file=sys.stderr))
        calibration_s, train_s = time.monotonic() - started, report.seconds["train"]
    scored = score_category(bundle, category, "onnxruntime", move=move)
    result = evaluate_scored(bundle, scored)
    row = {
        "dataset": category.name,
        "variant": label or "default",
        "encoder": settings.encoder,
        "input_size": "x".join(map(str, settings.input_size)),
        **{k: result["overall"].get(k) for k in ("image_auroc", "pixel_auroc", "pro", "false_reject_rate", "miss_rate")},
        "reference_test_set_max": {k: result["reference_test_set_max"].get(k) for k in ("image_auroc", "pixel_auroc", "pro")},
        "calibration_s": round(calibration_s, 1),
        "train_s": round(train_s, 1),
        "inference_ms_per_image": round(1000 * result["seconds_per_image"], 2),
        "threshold_method": bundle.manifest.thresholds.method,
        "image_auroc_of": result.get("image_auroc_of"),
        "per_type": result["per_type"],
    }
    return row, bundle, scored


def scale_subsets(bundle, scored) -> list[dict]:
    """Each scale's flow trains independently, so scoring a subset of scales is exactly the
    model trained with only those scales."""
    rows = []
    constants = bundle.manifest.scoring
    strides = bundle.manifest.flow_strides
    for size in range(1, len(strides) + 1):
        for subset in itertools.combinations(range(len(strides)), size):
            sub = constants.subset(subset)
            maps, scores = anomaly_maps([scored.log_likelihoods[i] for i in subset], sub, tuple(bundle.manifest.input_size))
            m = category_metrics(maps, scores, scored.masks, scored.labels, None)
            # Map only: the part score pools every scale, so it has no place in a subset.
            name = "+".join(str(strides[i]) for i in subset)
            rows.append({"variant": f"scales {name}, map only", **{k: m.get(k) for k in ("image_auroc", "pixel_auroc", "pro")}})
    return rows


def map_ablation(bundle, scored) -> dict | None:
    """The same bundle's map, by the map alone, without what issue 22 added: every scale weighted
    equally (the weight calibration chose on synthetic defects), without the nearest good patch's
    term, with that term in the map the image score reads (as format 5 and 6 bundles score), and,
    for a bundle with a stride-4 flow (--strides 4,...), without that flow (each flow trains
    independently, so the others' subset is that model). None where none applies."""
    constants = replace(bundle.manifest.scoring, part_score=None)
    strides = bundle.manifest.flow_strides
    size = tuple(bundle.manifest.input_size)

    def metrics(scales: tuple[int, ...], weights, patch: bool = True, patch_in_image: bool = False) -> dict:
        nearest = constants.nearest_patch if patch else None
        if nearest is not None and patch_in_image:
            nearest = replace(nearest, in_image_score=True)
        sub = replace(constants.subset(scales), scale_weights=weights, nearest_patch=nearest)
        maps, scores = anomaly_maps([scored.log_likelihoods[i] for i in scales], sub, size, patch_distances=scored.patch_distances)
        m = category_metrics(maps, scores, scored.masks, scored.labels, None)
        return {k: m.get(k) for k in ("image_auroc", "pixel_auroc", "pro")}

    everything = tuple(range(len(strides)))
    rows = {}
    if constants.scale_weights is not None:
        rows["equal scale weights, map only"] = metrics(everything, None)
    if constants.nearest_patch is not None:
        if not constants.nearest_patch.in_image_score:
            rows["nearest patch in the image score's map (format 6), map only"] = metrics(everything, constants.scale_weights, patch_in_image=True)
        rows["without the nearest patch, map only"] = metrics(everything, constants.scale_weights, patch=False)
        rows["without the nearest patch, equal scale weights, map only"] = metrics(everything, None, patch=False)
    if 4 in strides and len(strides) > 1:
        without = tuple(i for i, s in enumerate(strides) if s != 4)
        rows["without the stride-4 flow, map only"] = metrics(without, constants.subset(without).scale_weights)
    if not rows:
        return None
    return {"chosen, map only": metrics(everything, constants.scale_weights), **rows}


def image_score_rules(scored) -> list[dict]:
    """Image AUROC of other ways to turn one frame's published anomaly map into its score (the
    product uses the maximum of the map over the terms the score reads: since bundle format 7,
    without the nearest patch's): the mean of the highest 0.1%, 1% and 10% of pixels, and the
    mean of all."""
    flat = np.sort(scored.maps.reshape(len(scored.maps), -1), axis=1)[:, ::-1]
    rows = []
    for label, fraction in (("top 0.1% mean", 0.001), ("top 1% mean", 0.01), ("top 10% mean", 0.1), ("mean", 1.0)):
        k = max(1, int(round(fraction * flat.shape[1])))
        rows.append({"variant": f"image score: {label}", "image_auroc": auroc(flat[:, :k].mean(axis=1), scored.labels)})
    return rows


def fmt(value) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def print_table(rows: list[dict]) -> None:
    width = max([22, *(len(r["variant"]) for r in rows)])  # the ablation's names are long; keep the numbers in columns
    print(f"{'dataset':<20} {'variant':<{width}} {'encoder':<18} {'size':<8} {'imAUC':>6} {'pxAUC':>6} {'PRO':>6} {'FRR':>6} {'miss':>6} {'calib_s':>8}")
    for r in rows:
        print(
            f"{r['dataset']:<20} {r['variant']:<{width}} {r.get('encoder', ''):<18} {r.get('input_size', ''):<8} "
            f"{fmt(r.get('image_auroc'))} {fmt(r.get('pixel_auroc'))} {fmt(r.get('pro'))} "
            f"{fmt(r.get('false_reject_rate'))} {fmt(r.get('miss_rate'))} {r.get('calibration_s', ''):>8}"
        )
        if r.get("flow_strides"):
            print(f"{'':<20} {'  flows at strides':<{width}} {','.join(map(str, r['flow_strides']))}")
        ref = r.get("reference_test_set_max")
        if ref:
            print(f"{'':<20} {'  test-set-max ref':<{width}} {'':<18} {'':<8} {fmt(ref['image_auroc'])} {fmt(ref['pixel_auroc'])} {fmt(ref['pro'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--only", nargs="*", help="categories to run, e.g. mpdd/metal_plate")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--strides", type=parse_strides, default=None, help="feature scales to model, e.g. 8,16 (edge-calibrate's option; default 8,16,32)")
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--robustness", action="store_true")
    parser.add_argument("--augment", type=int, default=0, metavar="COPIES", help="calibrate every bundle with COPIES shifted/rotated copies of each good image")
    parser.add_argument("--feature-pooling", type=int, choices=(1, 3, 5), default=1, metavar="K", help="calibrate every bundle with K x K feature pooling")
    parser.add_argument("--no-part-appearance", dest="part_appearance", action="store_false", help="calibrate every bundle without the whole-part appearance model")
    parser.add_argument("--score-rules", action="store_true", help="image AUROC of other map-to-score rules (also part of --ablation)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    parser.add_argument("--reuse-bundles", action="store_true", help="with --keep-bundles: evaluate default bundles already there instead of calibrating again")
    parser.add_argument("--keep-bundles", type=Path, help="write the bundles here and keep them (bench/fp16.py and bench/speed.py reuse them)")
    args = parser.parse_args()

    base = CalibrationSettings(
        encoder=args.encoder,
        input_size=(args.input_size, args.input_size),
        flow_strides=args.strides or TAP_STRIDES,
        may_drop_coarsest_flow=args.strides is None,  # as edge-calibrate: flows named are kept
        augment=AugmentConfig(copies=args.augment),
        feature_pooling=args.feature_pooling,
        part_appearance=args.part_appearance,
    )
    labels = [f"pooled {args.feature_pooling}x{args.feature_pooling}"] if args.feature_pooling > 1 else []
    labels += [f"strides {'+'.join(map(str, args.strides))}"] if args.strides else []
    base_label = ", ".join(labels)
    dirs = [d for d in categories(args.datasets) if not args.only or f"{d.parent.name}/{d.name}" in args.only]
    measured_on = machine()  # the commit as the run starts; edits made while it runs are not in it
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        work = args.keep_bundles.resolve() if args.keep_bundles else Path(tmp)
        for category_dir in dirs:
            row, bundle, scored = run_one(category_dir, base, work, label=base_label, reuse=args.reuse_bundles)
            rows.append(row)
            row["flow_strides"] = list(bundle.manifest.flow_strides)
            row["coarsest_weight_scores"] = bundle.manifest.training["report"].get("coarsest_weight_scores")
            row["flow_stride_left_out"] = bundle.manifest.training["report"].get("flow_stride_left_out", 0)
            ablation = map_ablation(bundle, scored)
            if ablation:
                row["map_ablation"] = ablation
                for label, m in ablation.items():
                    rows.append({"dataset": row["dataset"], "variant": label, **m})
            if row["image_auroc_of"]:
                parts = row["image_auroc_of"]
                rows.append({"dataset": row["dataset"], "variant": "score: map half only", "image_auroc": parts["map_maximum"]})
                rows.append({"dataset": row["dataset"], "variant": "score: part appearance", "image_auroc": parts["part_appearance"]})
            if args.ablation:
                for sub in scale_subsets(bundle, scored):
                    rows.append({"dataset": row["dataset"], **sub})
                for label, flow in (("no positional cond", FlowConfig(condition_channels=0)), ("4 coupling blocks", FlowConfig(coupling_blocks=4))):
                    rows.append(run_one(category_dir, replace(base, flow=flow), work, label=label)[0])
                if args.feature_pooling == 1:
                    rows.append(run_one(category_dir, replace(base, feature_pooling=3), work, label="features pooled 3x3")[0])
            if args.ablation or args.score_rules:
                rows.extend({"dataset": row["dataset"], **rule} for rule in image_score_rules(scored))
            if args.robustness:
                move = lambda images, masks: move_parts(images, masks, SHIFT, DEGREES, seed=0)  # noqa: E731
                shifted = evaluate_scored(bundle, score_category(bundle, open_category(category_dir), "onnxruntime", move=move))
                rows.append({"dataset": row["dataset"], "variant": f"moved +-{SHIFT:.0%} +-{DEGREES:g}deg", **{k: shifted["overall"].get(k) for k in ("image_auroc", "pixel_auroc", "pro", "false_reject_rate", "miss_rate")}})
                augmented = replace(base, augment=AugmentConfig(copies=1, max_shift=SHIFT, max_degrees=DEGREES))
                aug_row = run_one(category_dir, augmented, work, move=move, label="moved, trained w/ aug")[0]
                rows.append(aug_row)
            print_table(rows)
    print_table(rows)
    report = {"machine": measured_on, "settings": {"encoder": args.encoder, "input_size": args.input_size, "augment_copies": args.augment, "feature_pooling": args.feature_pooling, "part_appearance": args.part_appearance, "strides": list(args.strides) if args.strides else "default"}, "rows": rows}
    write_results(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
