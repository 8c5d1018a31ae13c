"""Evaluate a bundle on an MVTec-layout category through the same inspection path as the daemon."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from calibration.datasets import Category, read_mask
from calibration.images import load_images
from calibration.metrics import auroc, pixel_auroc, pro_auc, rates_at_threshold
from calibration.progress import Progress
from calibration.reference_scoring import test_set_max_maps
from engines.backends import ModelOutput, open_backend
from engines.bundle import Bundle
from engines.inspector import Inspector
from engines.overlay import colour_top, label, overlay


@dataclass
class ScoredCategory:
    category: Category
    images: np.ndarray  # uint8 RGB model inputs
    masks: np.ndarray  # bool (N, H, W)
    labels: np.ndarray  # bool (N,), True = defective
    maps: np.ndarray  # calibrated anomaly maps (N, H, W)
    map_scores: np.ndarray  # (N,) the map half of each image score (engines/scoring.py: ScoredFrames)
    scores: np.ndarray
    reference_maps: np.ndarray  # test-set-max normalised, evaluation only
    reference_scores: np.ndarray
    log_likelihoods: list[np.ndarray]  # per scale (N, h, w), for scoring ablations
    part_distances: np.ndarray | None  # (N,), None for a bundle without a part appearance model
    patch_distances: np.ndarray | None  # (N, h8, w8), None for a bundle without a patch bank
    seconds_per_image: float


def score_category(bundle: Bundle, category: Category, backend: str = "onnxruntime", batch_size: int = 8, threads: int = 0, move=None) -> ScoredCategory:
    """Inspect every test image. `move(images, masks) -> (images, masks)` perturbs the parts
    (robustness studies); the masks move with them."""
    height, width = bundle.manifest.input_size
    size = (height, width)
    loaded = load_images([t.path for t in category.test], size, bundle.manifest.colour)
    images = loaded.images
    masks = np.stack([read_mask(t, size, aspect) for t, aspect in zip(category.test, loaded.aspects)])
    if move is not None:
        images, masks = move(images, masks)
    inspector = Inspector(bundle, open_backend(backend, bundle, threads=threads))
    progress = Progress(f"inspecting {category.name}", len(images))
    batches, outputs = [], []
    started = time.monotonic()
    for start in range(0, len(images), batch_size):
        output = inspector.backend.infer(images[start : start + batch_size])
        batches.append(inspector.scored_frames(output))
        outputs.append(output)
        progress.update(min(start + batch_size, len(images)))
    elapsed = time.monotonic() - started
    inspector.backend.close()
    output = ModelOutput.concatenate(outputs)
    per_scale = output.log_likelihoods
    reference_maps, reference_scores = test_set_max_maps(per_scale, size)
    return ScoredCategory(
        category=category,
        images=images,
        masks=masks,
        labels=np.array([t.is_defective for t in category.test]),
        maps=np.concatenate([b.maps for b in batches]),
        map_scores=np.concatenate([b.map_scores for b in batches]),
        scores=np.concatenate([b.scores for b in batches]),
        reference_maps=reference_maps,
        reference_scores=reference_scores,
        log_likelihoods=per_scale,
        part_distances=output.part_distances,
        patch_distances=output.patch_distances,
        seconds_per_image=elapsed / len(images),
    )


def auroc_if_defined(scores, labels) -> float | None:
    """Image AUROC, or None where the test set holds only good or only defective parts (a line
    that collected only its rejects still learns its miss rate and outlines)."""
    labels = np.asarray(labels, dtype=bool)
    return auroc(scores, labels) if labels.any() and not labels.all() else None


def category_metrics(maps, scores, masks, labels, threshold: float | None) -> dict:
    out = {"images": int(len(labels)), "defective": int(labels.sum()), "image_auroc": auroc_if_defined(scores, labels)}
    if masks.any():
        out["pixel_auroc"] = pixel_auroc(maps, masks)
        out["pro"] = pro_auc(maps, masks, fpr_limit=0.3)
    if threshold is not None:
        frr, miss = rates_at_threshold(scores, labels, threshold)
        # A rate of a class the test set lacks is NaN; JSON has no NaN, so it is left empty.
        out["false_reject_rate"], out["miss_rate"] = (None if np.isnan(frr) else frr), (None if np.isnan(miss) else miss)
    return out


def evaluate_scored(bundle: Bundle, scored: ScoredCategory) -> dict:
    """Metrics overall and per defect type (each type against all good test parts)."""
    threshold = bundle.manifest.thresholds.image
    good = ~scored.labels
    result: dict[str, Any] = {
        "category": scored.category.name,
        "bundle": str(bundle.path),
        "bundle_id": bundle.bundle_id,
        "encoder": bundle.manifest.encoder.name,
        "input_size": list(bundle.manifest.input_size),
        "threshold": threshold,
        "seconds_per_image": scored.seconds_per_image,
        "overall": category_metrics(scored.maps, scored.scores, scored.masks, scored.labels, threshold),
        "reference_test_set_max": category_metrics(scored.reference_maps, scored.reference_scores, scored.masks, scored.labels, None),
        "per_type": {},
    }
    if scored.part_distances is not None:
        # What each half of the image score separates on its own.
        result["image_auroc_of"] = {
            "map_maximum": auroc_if_defined(scored.map_scores, scored.labels),
            "part_appearance": auroc_if_defined(scored.part_distances, scored.labels),
        }
    types = np.array([t.defect_type for t in scored.category.test])
    for defect in scored.category.defect_types:
        keep = good | (types == defect)
        result["per_type"][defect] = category_metrics(scored.maps[keep], scored.scores[keep], scored.masks[keep], scored.labels[keep], threshold)
    return result


def contact_sheet(bundle: Bundle, scored: ScoredCategory, per_type: int = 4, tile: int = 192) -> np.ndarray:
    """A grid (one row per type, good first): each tile the part with its heatmap, the defect
    outline in white, the score and the verdict at the calibrated threshold."""
    thresholds = bundle.manifest.thresholds
    types = ["good", *scored.category.defect_types]
    rows = []
    for defect in types:
        indices = [i for i, t in enumerate(scored.category.test) if t.defect_type == defect]
        # The highest-scoring good parts and a spread of defects are the informative ones.
        ranked = sorted(indices, key=lambda i: -scored.scores[i])
        chosen = ranked[:per_type] if defect == "good" else ranked[:: max(1, math.ceil(len(ranked) / per_type))][:per_type]
        tiles = []
        for i in chosen:
            picture = overlay(scored.images[i], scored.maps[i], 0.0, colour_top(thresholds.image, thresholds.pixel))
            contours, _ = cv2.findContours(scored.masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(picture, contours, -1, (255, 255, 255), 1)
            picture = cv2.resize(picture, (tile, tile))
            verdict = "REJECT" if scored.scores[i] > thresholds.image else "pass"
            colour = (80, 80, 255) if verdict == "REJECT" else (120, 255, 120)
            tiles.append(label(picture, [defect, f"{scored.scores[i]:.2f} {verdict}"], colour))
        tiles += [np.zeros((tile, tile, 3), np.uint8)] * (per_type - len(tiles))
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def write_outputs(result: dict, sheet: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "evaluation.json", out_dir / "contact_sheet.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    cv2.imwrite(str(png_path), sheet)
    return json_path, png_path
