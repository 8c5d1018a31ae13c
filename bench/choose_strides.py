"""`edge-calibrate --choose-strides` as a line engineer runs it, measured on parts it never saw.

For each shared category: `--samples` defective test images are drawn (seeded) and handed over
with their masks, as a line engineer with a few marked rejects would; the product's
choose_strides calibrates the default candidates on train/good and keeps one. The kept bundle
is then evaluated on the rest of the test set, next to the default bundle that
bench/quality.py --keep-bundles wrote (same settings and seed, one scale setting) on the same
rest.

  python bench/choose_strides.py [--samples 10] [--bundles runs/bundles] [--keep-bundles DIR]
Prints one table and writes bench/results/choose_strides.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULT_DATASETS, bundle_label, categories, kept_bundle, machine, write_results  # noqa: E402
from calibration.calibrate import CalibrationSettings  # noqa: E402
from calibration.choose_strides import choose_strides  # noqa: E402
from calibration.datasets import open_category  # noqa: E402
from calibration.evaluate import category_metrics, score_category  # noqa: E402
from engines.bundle import open_bundle  # noqa: E402


def hand_over(category, samples: np.ndarray, folder: Path) -> tuple[Path, Path]:
    """The drawn defective images and their masks as two folders (links), named by defect type
    too: stems repeat across types."""
    images, masks = folder / "defects", folder / "masks"
    images.mkdir()
    masks.mkdir()
    for i in samples:
        item = category.test[i]
        name = f"{item.defect_type}_{item.path.stem}"
        (images / f"{name}{item.path.suffix}").symlink_to(item.path)
        (masks / f"{name}_mask{item.mask_path.suffix}").symlink_to(item.mask_path)
    return images, masks


def on_the_rest(bundle, category, keep: np.ndarray) -> dict:
    scored = score_category(bundle, category, "onnxruntime")
    return category_metrics(scored.maps[keep], scored.scores[keep], scored.masks[keep], scored.labels[keep], bundle.manifest.thresholds.image)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--bundles", type=Path, default=ROOT / "runs" / "bundles", help="where bench/quality.py kept the default bundles")
    parser.add_argument("--keep-bundles", type=Path, help="keep the chosen bundles here (default: a temporary folder)")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "choose_strides.json")
    args = parser.parse_args()
    measured_on = machine()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for category_dir in categories(args.datasets):
            category = open_category(category_dir)
            default_path = kept_bundle(args.bundles, category_dir, "default")
            labels = np.array([t.is_defective for t in category.test])
            samples = np.random.default_rng(args.seed).choice(np.flatnonzero(labels), size=args.samples, replace=False)
            keep = np.ones(len(labels), bool)
            keep[samples] = False
            work = Path(scratch) / category_dir.name
            work.mkdir()
            defects, masks = hand_over(category, samples, work)
            out = (args.keep_bundles or work) / bundle_label(category_dir, "chosen")
            log = lambda message: print(f"{category.name}: {message}", file=sys.stderr, flush=True)  # noqa: E731
            bundle, _, choice = choose_strides(category_dir / "train" / "good", out, CalibrationSettings(), defects, masks, force=True, log=log)
            rows.append({
                "dataset": category.name,
                "samples": [str(category.test[i].path) for i in samples],
                "choice": choice.to_json(),
                "chosen_on_rest": on_the_rest(bundle, category, keep),
                "default_on_rest": on_the_rest(open_bundle(default_path), category, keep),
            })
    print(f"\n{'dataset':<20} {'chosen':<11} {'choice s':>8} {'chosen on the rest: img / pix / PRO / FRR / miss':>50} {'default on the rest':>34}")
    for row in rows:
        c, d = row["chosen_on_rest"], row["default_on_rest"]
        cells = lambda m: f"{m['image_auroc']:.3f} / {m['pixel_auroc']:.3f} / {m['pro']:.3f} / {m['false_reject_rate']:.2f} / {m['miss_rate']:.2f}"  # noqa: E731
        chosen = ",".join(map(str, row["choice"]["chosen"]))
        print(f"{row['dataset']:<20} {chosen:<11} {row['choice']['seconds']:8.0f} {cells(c):>50} {cells(d):>34}")
    write_results(args.output, {"machine": measured_on, "samples": args.samples, "seed": args.seed, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
