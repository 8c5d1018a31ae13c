"""Choosing a station's scales from a few defective samples, measured without peeking.

A line engineer who calibrates the same good parts with several `--strides` settings (and with or
without the whole-part score) picks one by how well it separates the station's held-out good
parts from the few defective parts they have. This script plays that engineer on each shared
category: it draws `--samples` defective test images at random as the station's samples, picks
the candidate with the highest image AUROC between the held-out good parts and those samples
(the default wins ties), and measures the pick and the default on the rest of the test set,
which the choice never saw. Repeated over `--draws` random draws. With `--marked` the engineer
has also marked the samples' defect regions, and the choice maximises the mean of image AUROC,
pixel AUROC and PRO on them instead (outlines count too).

Needs the candidate bundles calibrated first, into one folder, e.g.:
    python bench/quality.py --keep-bundles runs/bundles
    python bench/quality.py --keep-bundles runs/bundles --strides 8,16
    python bench/quality.py --keep-bundles runs/bundles --strides 4,8,16,32
    python bench/station_choice.py --bundles runs/bundles
Prints one table and writes bench/results/station_choice.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULT_DATASETS, bundle_label, categories, machine, write_results  # noqa: E402
from calibration.calibrate import split_good  # noqa: E402
from calibration.datasets import open_category  # noqa: E402
from calibration.choose_strides import criterion, separation  # noqa: E402
from calibration.evaluate import category_metrics, score_category  # noqa: E402
from calibration.images import list_images, load_images  # noqa: E402
from engines.backends import open_backend  # noqa: E402
from engines.bundle import open_bundle  # noqa: E402
from engines.inspector import Inspector  # noqa: E402

BUNDLE_LABELS = ("default", "strides 8+16", "strides 4+8+16+32")


def held_out_good(bundle, category_dir: Path) -> np.ndarray:
    """The good images this bundle held out at calibration (the same split calibrate made)."""
    training = bundle.manifest.training
    good = list_images(category_dir / "train" / "good")
    _, held = split_good(good, None, 0.2, training["train"]["seed"])
    if len(held) != bundle.manifest.thresholds.good_parts:
        raise SystemExit(f"{bundle.path}: held out {bundle.manifest.thresholds.good_parts} good parts, not the default 20% split; recalibrate with bench/quality.py")
    return load_images(held, tuple(bundle.manifest.input_size), bundle.manifest.colour).images


def candidate_scores(bundle, category, category_dir: Path) -> list[dict]:
    """Per candidate (this bundle with and without the part score): held-out good scores, test
    scores and test maps."""
    scored = score_category(bundle, category, "onnxruntime")
    inspector = Inspector(bundle, open_backend("onnxruntime", bundle))
    held = inspector.inspect_frames(held_out_good(bundle, category_dir))
    inspector.backend.close()
    held_maps, held_scores = held.maps, held.scores
    # The map half of the score: the flows' map where the nearest patch shapes outlines only.
    map_only, held_map_only = scored.map_scores, held.map_scores
    out = [{"part": True, "held": held_scores, "test": scored.scores}]
    if bundle.manifest.scoring.part_score is not None:
        out.append({"part": False, "held": held_map_only, "test": map_only})
    for candidate in out:
        candidate.update(maps=scored.maps, masks=scored.masks, labels=scored.labels, held_maps=held_maps)
    return out


def choice_score(candidate: dict, samples: np.ndarray, marked: bool) -> float:
    """How well a candidate separates the held-out good parts from the station's samples, by
    the product's own rule (calibration/choose_strides.py)."""
    masks = candidate["masks"][samples] if marked else None
    return criterion(*separation(candidate["held_maps"], candidate["held"], candidate["maps"][samples], candidate["test"][samples], masks))


def metrics_on(candidate: dict, keep: np.ndarray) -> dict:
    c = candidate
    return category_metrics(c["maps"][keep], c["test"][keep], c["masks"][keep], c["labels"][keep], None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--bundles", type=Path, default=ROOT / "runs" / "bundles")
    parser.add_argument("--samples", type=int, default=10, help="defective parts the station has (default 10)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--marked", action="store_true", help="the samples' defect regions are marked: choose by image and pixel metrics")
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/station_choice[_marked].json")
    args = parser.parse_args()
    output = args.output or ROOT / "bench" / "results" / f"station_choice{'_marked' if args.marked else ''}.json"

    measured_on = machine()
    rows = []
    for category_dir in categories(args.datasets):
        category = open_category(category_dir)
        candidates = {}
        for label in BUNDLE_LABELS:
            path = args.bundles / bundle_label(category_dir, label)
            if not (path / "manifest.json").is_file():
                print(f"{category.name}: no bundle {path}; calibrate it first (see this script's help)", file=sys.stderr)
                continue
            for candidate in candidate_scores(open_bundle(path), category, category_dir):
                name = label + ("" if candidate["part"] else ", map alone")
                candidates[name] = candidate
        if "default" not in candidates:
            continue
        labels = candidates["default"]["labels"]
        defective = np.flatnonzero(labels)
        rng = np.random.default_rng(0)
        for draw in range(args.draws):
            samples = rng.choice(defective, size=min(args.samples, len(defective) // 2), replace=False)
            keep = np.ones(len(labels), bool)
            keep[samples] = False
            choice = {name: choice_score(c, samples, args.marked) for name, c in candidates.items()}
            best = max(choice.values())
            chosen = next(name for name in candidates if choice[name] == best)  # default first: it wins ties
            row = {
                "dataset": category.name,
                "draw": draw,
                "samples": len(samples),
                "held_out_good": len(candidates["default"]["held"]),
                "chosen": chosen,
                "choice_score": choice,
                "chosen_on_rest": metrics_on(candidates[chosen], keep),
                "default_on_rest": metrics_on(candidates["default"], keep),
            }
            rows.append(row)
            c, d = row["chosen_on_rest"], row["default_on_rest"]
            print(
                f"{category.name:20s} draw {draw}  chose {chosen:32s} rest: "
                f"{c['image_auroc']:.3f} / {c['pixel_auroc']:.3f} / {c['pro']:.3f}   default {d['image_auroc']:.3f} / {d['pixel_auroc']:.3f} / {d['pro']:.3f}",
                flush=True,
            )
    summary = {}
    for name in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == name]
        summary[name] = {
            "chosen": {c: sum(r["chosen"] == c for r in mine) for c in sorted({r["chosen"] for r in mine})},
            **{f"{who}_mean": {k: float(np.mean([r[f"{who}_on_rest"][k] for r in mine])) for k in ("image_auroc", "pixel_auroc", "pro")} for who in ("chosen", "default")},
        }
        s = summary[name]
        print(
            f"{name:20s} mean over {len(mine)} draws: chosen {s['chosen_mean']['image_auroc']:.3f} / {s['chosen_mean']['pixel_auroc']:.3f} / "
            f"{s['chosen_mean']['pro']:.3f}, default {s['default_mean']['image_auroc']:.3f} / {s['default_mean']['pixel_auroc']:.3f} / "
            f"{s['default_mean']['pro']:.3f}; picks {s['chosen']}"
        )
    settings = {"samples": args.samples, "draws": args.draws, "marked": args.marked, "bundles": BUNDLE_LABELS}
    write_results(output, {"machine": measured_on, "settings": settings, "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
