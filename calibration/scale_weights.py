"""Each station's map, chosen on synthetic defects made from its own held-out good parts: which
of the trained scales it keeps, and the weight of the coarsest one.

The stride-32 flow models 64 positions per part from a few thousand fibers. Where it overfits
them (mvtec3d/tire), its noise sets many good parts' map maximum and a quarter of its weight
separates better; where it sees the large, faint defects that no finer scale does
(mtd/magnetic_tile's uneven shading), full weight does. A stride-4 flow sharpens the outlines of
small defects (MPDD metal_plate PRO 0.924 -> 0.953) and costs about as much as the other flows
together, so it is kept only where it wins by more than the noise of ~120 synthetic defects.
Which holds is a property of the station, so calibration tries each candidate on synthetic
defects (calibration/synthetic_defects.py) and keeps the best by the mean of image AUROC, pixel
AUROC and PRO, as --choose-strides does with real marked defects (issue 22: on the three shared
categories this criterion agreed with each test set's direction). Only good parts are used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from calibration.metrics import auroc, pixel_auroc, pro_auc
from calibration.thresholds import fit_scoring_constants
from engines.scoring import ScoringConstants, anomaly_maps

COARSEST_WEIGHT_CANDIDATES = (1.0, 0.25)  # the first is kept on ties
# What an optional scale must add to the selection score to be kept: it costs inference time on
# every part, and ~120 synthetic defects score the same map within about 0.003 from draw to draw.
OPTIONAL_SCALE_MARGIN = 0.003


@dataclass(frozen=True)
class MapChoice:
    kept: tuple[int, ...]  # indices of the trained scales the map keeps, in stride order
    constants: ScoringConstants  # the kept scales' references and weights (no part score yet)
    scores: dict[str, float]  # "strides x coarsest weight" -> selection score
    synthetic_defects: int


def selection_score(good_maps: np.ndarray, defect_maps: np.ndarray, defect_masks: np.ndarray) -> float:
    """Mean of image AUROC (map maximum, defects against good parts), pixel AUROC and PRO over
    the good parts' and the defects' maps together."""
    maxima = np.concatenate([good_maps.reshape(len(good_maps), -1).max(axis=1), defect_maps.reshape(len(defect_maps), -1).max(axis=1)])
    labels = np.concatenate([np.zeros(len(good_maps), bool), np.ones(len(defect_maps), bool)])
    maps = np.concatenate([good_maps, defect_maps])
    masks = np.concatenate([np.zeros(good_maps.shape, bool), defect_masks])
    return float((auroc(maxima, labels) + pixel_auroc(maps, masks) + pro_auc(maps, masks, fpr_limit=0.3)) / 3)


def choose_map(
    strides: tuple[int, ...],
    optional: tuple[int, ...],
    blur_sigma: float,
    good_log_likelihoods: list[np.ndarray],
    defect_log_likelihoods: list[np.ndarray],
    defect_masks: np.ndarray,
    output_size: tuple[int, int],
    weights: tuple[float, ...] = COARSEST_WEIGHT_CANDIDATES,
    margin: float = OPTIONAL_SCALE_MARGIN,
) -> MapChoice:
    """The best map over the trained `strides` (log-likelihoods in that order): every scale but
    the `optional` ones, with or without those, each at every candidate weight of the coarsest
    scale (the others 1). Optional scales are kept only when they beat the best map without them
    by more than `margin`; the reference quantiles come from the good parts either way."""
    required = tuple(i for i, s in enumerate(strides) if s not in optional)
    subsets = [required] + ([tuple(range(len(strides)))] if len(required) < len(strides) else [])
    scores: dict[str, float] = {}
    best: dict[bool, tuple[float, MapChoice]] = {}
    for kept, weight in itertools.product(subsets, weights):
        if len(kept) < 2 and weight != weights[0]:
            continue  # one scale: nothing to weigh
        scale_weights = None if weight == 1.0 or len(kept) < 2 else (*([1.0] * (len(kept) - 1)), float(weight))
        constants = fit_scoring_constants([good_log_likelihoods[i] for i in kept], blur_sigma, scale_weights)
        good_maps, _ = anomaly_maps([good_log_likelihoods[i] for i in kept], constants, output_size)
        defect_maps, _ = anomaly_maps([defect_log_likelihoods[i] for i in kept], constants, output_size)
        score = selection_score(good_maps, defect_maps, defect_masks)
        scores[f"{','.join(str(strides[i]) for i in kept)} x{weight:g}"] = round(score, 6)
        extended = len(kept) > len(required)
        if extended not in best or score > best[extended][0]:
            best[extended] = (score, MapChoice(kept, constants, scores, len(defect_masks)))
    score, choice = best[False]
    if True in best and best[True][0] > score + margin:
        choice = best[True][1]
    return choice
