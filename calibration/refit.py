"""A bundle's scoring constants and threshold fitted again on a folder of good parts, without
retraining the flows: for a station whose lighting or material shifted a little, from its
review folder or a teach-in folder. The flows and graphs stay as they are; the parts go through
the bundle's own ONNX graphs, exactly as the daemon sees them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from calibration.images import list_images, load_images
from calibration.retune import history_entry, write_amended
from calibration.thresholds import choose_thresholds, fit_scoring_constants, with_nearest_patch, with_part_score
from engines.backends import ModelOutput, open_backend
from engines.bundle import Bundle, BundleError
from engines.scoring import anomaly_maps, image_scores

BATCH = 8
MIN_GOOD_PARTS = 10  # fewer cannot place a quantile, even with the Gumbel fit


@dataclass(frozen=True)
class RefitReport:
    good_parts: int
    threshold_before: float
    threshold_after: float
    false_reject_rate_before: float  # on these good parts, with the old constants and threshold
    false_reject_rate_after: float
    defect_images: int = 0
    miss_rate: float | None = None  # on the defects folder, with the new constants and threshold


def model_outputs(bundle: Bundle, images: np.ndarray, threads: int, progress: Callable[[int, int], None]) -> ModelOutput:
    backend = open_backend("onnxruntime", bundle, threads=threads)
    try:
        batches = []
        for start in range(0, len(images), BATCH):
            batches.append(backend.infer(images[start : start + BATCH]))
            progress(min(start + BATCH, len(images)), len(images))
        return ModelOutput.concatenate(batches)
    finally:
        backend.close()


def refit(
    bundle: Bundle,
    good: Path,
    output: Path,
    why: str,
    who: str | None = None,
    defects: Path | None = None,
    target_frr: float | None = None,
    threads: int = 0,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Bundle, RefitReport]:
    m = bundle.manifest
    paths = list_images(good)
    if len(paths) < MIN_GOOD_PARTS:
        raise BundleError(f"{good}: {len(paths)} good part image(s); a refit needs at least {MIN_GOOD_PARTS}")
    images = load_images(paths, m.input_size, m.colour).images

    def progress(done: int, total: int) -> None:
        if done == total or done % (BATCH * 8) == 0:
            log(f"scoring good parts: {done}/{total}")

    out = model_outputs(bundle, images, threads, progress)
    old = m.thresholds
    _, old_scores = anomaly_maps(out.log_likelihoods, m.scoring, m.input_size, out.part_distances, out.patch_distances)
    constants = fit_scoring_constants(out.log_likelihoods, m.scoring.blur_sigma, m.scoring.scale_weights)
    if m.scoring.nearest_patch is not None and out.patch_distances is not None:
        constants = with_nearest_patch(constants, out.patch_distances, m.scoring.nearest_patch.weight, m.scoring.nearest_patch.in_image_score)
    maps, maxima = anomaly_maps(out.log_likelihoods, constants, m.input_size, patch_distances=out.patch_distances)
    if m.scoring.part_score is not None and out.part_distances is not None:
        constants = with_part_score(constants, maxima, out.part_distances)
    scores = image_scores(maxima, constants, out.part_distances)
    target = target_frr or old.target_false_reject_rate
    thresholds = choose_thresholds(scores, maps, target, old.target_pixel_false_positive_rate)
    report = RefitReport(len(paths), old.image, thresholds.image, float(np.mean(old_scores > old.image)), float(np.mean(scores > thresholds.image)))
    if defects is not None:
        defect_images = load_images(list_images(defects), m.input_size, m.colour).images
        d = model_outputs(bundle, defect_images, threads, lambda done, total: None)
        _, defect_scores = anomaly_maps(d.log_likelihoods, constants, m.input_size, d.part_distances, d.patch_distances)
        report = replace(report, defect_images=len(defect_scores), miss_rate=float(np.mean(defect_scores <= thresholds.image)))
    changes = {
        "scoring": "fitted again on the good parts",
        "thresholds.image": [old.image, thresholds.image],
        "thresholds.good_parts": [old.good_parts, thresholds.good_parts],
        "good_parts_folder": str(good),
        "false_reject_rate_on_them": [report.false_reject_rate_before, report.false_reject_rate_after],
    }
    entry = history_entry(bundle, "refit", why, who, changes)
    manifest = replace(m, scoring=constants, thresholds=thresholds, history=(*m.history, entry))
    return write_amended(bundle, output, manifest, force), report
