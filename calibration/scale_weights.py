"""Each station's weight of the coarsest scale in its map, chosen on synthetic defects made from
its own held-out good parts.

The stride-32 flow models 64 positions per part from a few thousand fibers. Where it overfits
them (mvtec3d/tire), its noise sets many good parts' map maximum and a quarter of its weight
separates better; where it sees the large, faint defects that no finer scale does
(mtd/magnetic_tile's uneven shading), full weight does. Which holds is a property of the station,
so calibration tries each candidate on synthetic defects (calibration/synthetic_defects.py) and
keeps the best by the mean of image AUROC, pixel AUROC and PRO, as --choose-strides does with
real marked defects (issue 22: the same criterion picked 0.25 for metal_plate and tire and 1 for
magnetic_tile, and agreed with their test sets). Only good parts are used.

With three or more flows and the whole-part model (calibration/calibrate.py decides), the
candidates include 0: the coarsest flow left out of the bundle,
which saves its share of every frame's arithmetic (on tire, where the synthetic defects choose it,
0.28 of 1.94 GFLOP; bench/README.md, "The coarsest flow left out"). The finer flows, the whole-part
model over every tapped stage and the nearest patch still see what it saw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from calibration.metrics import auroc, pixel_auroc, pro_auc
from engines.scoring import ScoringConstants, anomaly_maps

COARSEST_WEIGHT_CANDIDATES = (1.0, 0.25, 0.0)  # the first is kept on ties
MIN_FLOWS_KEPT = 2  # weight 0 (the coarsest flow left out) is tried only where this many remain


@dataclass(frozen=True)
class WeightChoice:
    weights: tuple[float, ...] | None  # None: equal
    scores: dict[str, float]  # candidate weight of the coarsest scale -> its selection score
    synthetic_defects: int

    @property
    def drops_coarsest(self) -> bool:
        """Weight 0: the coarsest flow adds nothing to the map, so the bundle leaves it out."""
        return self.weights is not None and self.weights[-1] == 0.0


def selection_score(good_maps: np.ndarray, defect_maps: np.ndarray, defect_masks: np.ndarray) -> float:
    """Mean of image AUROC (map maximum, defects against good parts), pixel AUROC and PRO over
    the good parts' and the defects' maps together."""
    maxima = np.concatenate([good_maps.reshape(len(good_maps), -1).max(axis=1), defect_maps.reshape(len(defect_maps), -1).max(axis=1)])
    labels = np.concatenate([np.zeros(len(good_maps), bool), np.ones(len(defect_maps), bool)])
    maps = np.concatenate([good_maps, defect_maps])
    masks = np.concatenate([np.zeros(good_maps.shape, bool), defect_masks])
    return float((auroc(maxima, labels) + pixel_auroc(maps, masks) + pro_auc(maps, masks, fpr_limit=0.3)) / 3)


def choose_coarsest_weight(
    constants: ScoringConstants,
    good_log_likelihoods: list[np.ndarray],
    defect_log_likelihoods: list[np.ndarray],
    defect_masks: np.ndarray,
    output_size: tuple[int, int],
    candidates: tuple[float, ...] = COARSEST_WEIGHT_CANDIDATES,
) -> WeightChoice:
    """The coarsest scale's weight (the others 1) that best separates the synthetic defects from
    the good parts. With one scale there is nothing to weigh."""
    scales = len(constants.log_likelihood_reference)
    if scales < 2:
        return WeightChoice(None, {}, len(defect_masks))
    scores: dict[str, float] = {}
    best, best_score = None, -np.inf
    for weight in candidates:
        if weight == 0.0 and scales - 1 < MIN_FLOWS_KEPT:
            continue
        weights = None if weight == 1.0 else (*([1.0] * (scales - 1)), float(weight))
        # On the flows' scales alone: the nearest patch's term is added after, at its own weight.
        trial = dataclasses.replace(constants, scale_weights=weights, part_score=None, nearest_patch=None)
        good_maps, _ = anomaly_maps(good_log_likelihoods, trial, output_size)
        defect_maps, _ = anomaly_maps(defect_log_likelihoods, trial, output_size)
        score = selection_score(good_maps, defect_maps, defect_masks)
        scores[f"{weight:g}"] = round(score, 6)
        if score > best_score:
            best, best_score = weights, score
    return WeightChoice(best, scores, len(defect_masks))


# How much worse the synthetic defects may score with the nearest patch's term before it is left
# out. They cannot see what the term is for: they rate a sharper map lower (they prefer blur 2 to
# 4 where real outlines prefer 4, bench/README.md), so they veto only a clear loss. With the term,
# metal_plate scored 0.003 and tire 0.001 lower on them and gained on their test sets (PRO +0.023
# and +0.010); magnetic_tile scored 0.014 lower and lost image AUROC on its test set.
NEAREST_PATCH_VETO_MARGIN = 0.01


@dataclass(frozen=True)
class PatchChoice:
    keep: bool
    scores: dict[str, float]  # "with" and "without" the nearest patch's term -> selection score


def choose_nearest_patch(
    constants: ScoringConstants,
    good_log_likelihoods: list[np.ndarray],
    defect_log_likelihoods: list[np.ndarray],
    good_patch_distances: np.ndarray,
    defect_patch_distances: np.ndarray,
    defect_masks: np.ndarray,
    output_size: tuple[int, int],
) -> PatchChoice:
    """Keep the nearest patch's term in the map (`constants` has it) unless the synthetic defects
    score more than NEAREST_PATCH_VETO_MARGIN worse with it than without. Judged on the whole
    map, its maxima included, although the image score no longer reads the term (format 7): where
    it makes good parts' maps noisy (mtd/magnetic_tile) the heatmap shows that noise, and the
    term's arithmetic buys nothing."""
    scores: dict[str, float] = {}
    for label, patch in (("with", constants.nearest_patch), ("without", None)):
        trial = dataclasses.replace(constants, part_score=None, nearest_patch=patch)
        good_maps, _ = anomaly_maps(good_log_likelihoods, trial, output_size, patch_distances=good_patch_distances)
        defect_maps, _ = anomaly_maps(defect_log_likelihoods, trial, output_size, patch_distances=defect_patch_distances)
        scores[label] = round(selection_score(good_maps, defect_maps, defect_masks), 6)
    return PatchChoice(scores["with"] >= scores["without"] - NEAREST_PATCH_VETO_MARGIN, scores)
