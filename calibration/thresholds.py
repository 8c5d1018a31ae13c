"""Scoring constants and decision thresholds from held-out good parts only."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from engines.bundle import Thresholds
from engines.scoring import NearestPatchScoring, ScoringConstants

EULER_GAMMA = 0.5772156649015329


def fit_scoring_constants(log_likelihoods: list[np.ndarray], blur_sigma: float, scale_weights: tuple[float, ...] | None = None) -> ScoringConstants:
    """Per scale, the 99th percentile of the held-out good parts' log-likelihood per channel over
    every position (the maximum itself moves with a single odd position; q99 and the maximum
    scored the same on MPDD metal_plate). `scale_weights`: each scale's weight in the map (None:
    equal)."""
    references = tuple(float(np.percentile(ll.astype(np.float64), 99)) for ll in log_likelihoods)
    return ScoringConstants(references, blur_sigma, scale_weights=scale_weights)


def with_nearest_patch(constants: ScoringConstants, patch_distances: np.ndarray, weight: float = 1.0, in_image_score: bool = False) -> ScoringConstants:
    """The nearest good patch's term fitted on held-out good parts' distances (N, h, w): its
    spread is their mean, so a typical good position reads -0.5 nats per channel as a flow's
    would, and its reference is their 99th percentile on that scale, as for each flow. New
    bundles keep it out of the image score (engines/scoring.py: in_image_score); a refit keeps
    what its bundle was calibrated with."""
    distances = np.asarray(patch_distances, dtype=np.float64)
    spread = max(float(distances.mean()), 1e-12)  # a bank that holds every held-out patch exactly
    reference = float(np.percentile(-distances / (2.0 * spread), 99))
    return dataclasses.replace(constants, nearest_patch=NearestPatchScoring(spread, reference, weight, in_image_score))


def with_part_score(constants: ScoringConstants, map_maxima: np.ndarray, part_distances: np.ndarray) -> ScoringConstants:
    """Put the part appearance distance on the anomaly map's scale: the affine map that gives
    held-out good parts' distances the mean and standard deviation of their map maxima. A
    part then scores high when it is as far out among good parts in either measure, and the
    score keeps the map's unit (nats) wherever the map decides."""
    maxima = np.asarray(map_maxima, dtype=np.float64)
    distances = np.asarray(part_distances, dtype=np.float64)
    spread = float(distances.std())
    scale = float(maxima.std()) / spread if spread > 0 else 0.0
    offset = float(maxima.mean()) - scale * float(distances.mean())
    return dataclasses.replace(constants, part_score=(scale, offset))


def gumbel_quantile(scores: np.ndarray, probability: float) -> float:
    """Quantile of a Gumbel law fitted by moments: the image score is a maximum over many
    positions, whose tail an extreme-value law extrapolates better than a handful of samples."""
    beta = float(np.std(scores, ddof=1)) * math.sqrt(6.0) / math.pi
    location = float(np.mean(scores)) - EULER_GAMMA * beta
    return location - beta * math.log(-math.log(probability))


def image_threshold(good_scores: np.ndarray, target_frr: float) -> tuple[float, str]:
    """Image threshold for the target false-reject rate on held-out good parts, and how it was
    chosen. With enough parts (at least 10 expected rejects) the empirical quantile is used; with
    fewer, the quantile of a fitted Gumbel law, never below the empirical quantile."""
    scores = np.sort(np.asarray(good_scores, dtype=np.float64))
    n = len(scores)
    empirical = float(np.quantile(scores, 1.0 - target_frr, method="higher"))
    if n * target_frr >= 10:
        return empirical, f"empirical {100 * (1 - target_frr):g}% quantile of {n} held-out good parts"
    method = f"Gumbel fit to {n} held-out good parts' scores (too few for an empirical {100 * (1 - target_frr):g}% quantile), not below the empirical one"
    return max(gumbel_quantile(scores, 1.0 - target_frr), empirical), method


def choose_thresholds(good_scores: np.ndarray, good_maps: np.ndarray, target_frr: float, target_pixel_fpr: float) -> Thresholds:
    """The image threshold (image_threshold) and the pixel threshold that marks defect regions:
    the level that target_pixel_fpr of good pixels exceed. The scores are kept, sorted, so the
    image threshold can be chosen again for another target without the images."""
    scores = np.sort(np.asarray(good_scores, dtype=np.float64))
    image, method = image_threshold(scores, target_frr)
    pixel = float(np.quantile(good_maps.ravel(), 1.0 - target_pixel_fpr))
    quantiles = {f"q{q:g}": float(np.quantile(scores, q / 100.0)) for q in (50, 90, 95, 99, 100)}
    return Thresholds(
        image=image,
        pixel=min(pixel, image),
        target_false_reject_rate=target_frr,
        target_pixel_false_positive_rate=target_pixel_fpr,
        method=method,
        good_parts=len(scores),
        good_score_quantiles=quantiles,
        good_scores=tuple(round(float(v), 6) for v in scores),
    )
