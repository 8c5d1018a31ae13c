"""Per-position log-likelihoods to an anomaly map and an image score, with calibrated constants.

Everything here is a pure function of one frame's likelihoods and constants fitted on good parts
at calibration time; nothing depends on other frames (the paper's test-set-max normalisation
lives in calibration/ as an evaluation reference only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, model_validator

# exp() of float64 underflows below about -745; clipping there keeps -log finite everywhere.
_LOWEST_LOG_RATIO = -700.0


@dataclass(frozen=True)
class NearestPatchScoring:
    """The nearest good patch's term in the map (engines/nearest_patch.py). A position's squared
    distance d to its nearest bank patch is read as the log-likelihood of an isotropic Gaussian
    around that patch, -d / (2 spread), with spread the held-out good positions' mean distance;
    from there it is one more term of the average, like a flow's scale, with its own reference
    (the held-out good positions' 99th percentile) and weight."""

    spread: float
    reference: float
    weight: float = 1.0
    # Whether the map the image score takes its maximum from includes this term. Averaged with
    # the flows' likelihoods, a position is unlikely only where the flows and the patch agree: that
    # sharpens outlines but hides defects that one of them alone sees (mvtec3d/tire: image AUROC of
    # the map's maximum 0.765 with the term, 0.805 with the flows alone, bench/README.md). Since
    # bundle format 7 edge-calibrate writes False: the term shapes the map's outlines and the
    # image score reads the flows' map. True: every format-5 and -6 bundle, scored as calibrated.
    in_image_score: bool = True

    def log_likelihoods(self, distances: np.ndarray) -> np.ndarray:
        return -np.asarray(distances, dtype=np.float64) / (2.0 * self.spread)


@dataclass(frozen=True)
class ScoringConstants:
    """Per scale, a reference log-likelihood per channel: the 99th percentile over every position
    of the held-out good parts.

    Each scale's relative likelihood exp(min(ll - reference, 0)) lies in (0, 1]; the scales are
    upsampled, averaged (weighted per scale where scale_weights says so) and smoothed, and the anomaly map is minus the log of that average:
    0 where every scale is as likely as good parts get, growing by one per nat less likely.
    This is the paper's aggregation (sum of exp(ll - max) over scales) with the test-set maximum
    replaced by a constant fitted on good parts, so no frame's score depends on another; the log
    is monotone, so it ranks pixels and parts exactly as the paper's sum does, but it does not
    saturate near the number of scales as that sum does, which thresholds need. Bounding each
    scale's contribution keeps one scale's heavy tail from drowning the others (measured on MPDD
    metal_plate: image AUROC 0.986 -> 0.999, PRO 0.862 -> 0.923 against averaging standardised NLL).
    """

    log_likelihood_reference: tuple[float, ...]
    blur_sigma: float = 4.0
    # (scale, offset): the part appearance distance d on the anomaly map's scale, scale * d +
    # offset, fitted so held-out good parts' distances have the mean and spread of their map
    # maxima. The image score is the larger of the map half (ScoredFrames.map_scores) and that.
    # None: no part model.
    part_score: tuple[float, float] | None = None
    # Per scale, its weight in the average of relative likelihoods (normalised to sum 1). None:
    # equal weights, as every bundle before issue 22 was calibrated with.
    scale_weights: tuple[float, ...] | None = None
    # The nearest good patch's term beside the flows' scales; None: the map is the flows' alone,
    # as in every bundle before format 5.
    nearest_patch: NearestPatchScoring | None = None

    def to_json(self) -> dict:
        part = None if self.part_score is None else PartScoreJson(scale=self.part_score[0], offset=self.part_score[1])
        weights = None if self.scale_weights is None else list(self.scale_weights)
        patch = None if self.nearest_patch is None else NearestPatchJson(**asdict(self.nearest_patch))
        data = ScoringJson(log_likelihood_reference=list(self.log_likelihood_reference), blur_sigma=self.blur_sigma, part_score=part, scale_weights=weights, nearest_patch=patch)
        written = data.model_dump(exclude_none=True)
        if self.nearest_patch is not None and self.nearest_patch.in_image_score:
            # The format 5 and 6 meaning, which those bundles' manifests leave unsaid: a retuned
            # or resealed old bundle keeps the bytes of its scoring section.
            del written["nearest_patch"]["in_image_score"]
        return written

    @classmethod
    def from_json(cls, data: dict) -> ScoringConstants:
        """Raises pydantic's ValidationError (a ValueError) naming the bad key."""
        return ScoringJson.model_validate(data).constants()

    def subset(self, scales: tuple[int, ...]) -> ScoringConstants:
        """The constants of some flows' scales alone, without the part score (it pools every
        scale) and the nearest patch (it is not a flow)."""
        weights = None if self.scale_weights is None else tuple(self.scale_weights[i] for i in scales)
        return ScoringConstants(tuple(self.log_likelihood_reference[i] for i in scales), self.blur_sigma, scale_weights=weights)

    def image_terms(self) -> int:
        """How many of the map's terms (the flows' scales, then the nearest patch) the image
        score's map half reads: all, or the flows' alone where the patch only shapes outlines."""
        flows = len(self.log_likelihood_reference)
        patch = self.nearest_patch
        return flows + 1 if patch is not None and patch.in_image_score else flows

    def normalised_weights(self) -> np.ndarray:
        """Each flow scale's weight in the map's average, then the nearest patch's where there is one."""
        count = len(self.log_likelihood_reference)
        weights = np.ones(count) if self.scale_weights is None else np.asarray(self.scale_weights, dtype=np.float64)
        if self.nearest_patch is not None:
            weights = np.append(weights, self.nearest_patch.weight)
        return weights / weights.sum()

    def part_scores(self, part_distances: np.ndarray) -> np.ndarray:
        if self.part_score is None:
            raise ValueError("these scoring constants have no part score")
        scale, offset = self.part_score
        return scale * np.asarray(part_distances, dtype=np.float64) + offset


class _Json(BaseModel):
    # A key this version does not know is refused, not dropped; a NaN or infinite constant too.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PartScoreJson(_Json):
    scale: StrictFloat
    offset: StrictFloat


class NearestPatchJson(_Json):
    spread: StrictFloat
    reference: StrictFloat
    weight: StrictFloat
    in_image_score: StrictBool = True  # written since format 7; absent in format 5 and 6: True

    @model_validator(mode="after")
    def _positive(self) -> NearestPatchJson:
        if not (self.spread > 0 and self.weight >= 0 and np.isfinite([self.spread, self.reference, self.weight]).all()):
            raise ValueError("nearest_patch: spread must be positive, weight non-negative, all finite")
        return self


class ScoringJson(_Json):
    """The manifest's `scoring` section as written (engines/bundle.py reads it as part of the manifest)."""

    log_likelihood_reference: list[StrictFloat]
    blur_sigma: StrictFloat
    part_score: PartScoreJson | None = None  # written only where the bundle has a part model
    scale_weights: list[StrictFloat] | None = None  # written only where the scales are not weighted equally
    nearest_patch: NearestPatchJson | None = None  # written only where the bundle has a patch bank

    @model_validator(mode="after")
    def _one_weight_per_scale(self) -> ScoringJson:
        weights = self.scale_weights
        if weights is not None and (len(weights) != len(self.log_likelihood_reference) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError("scale_weights: one non-negative weight per scale, not all zero")
        return self

    def constants(self) -> ScoringConstants:
        part = None if self.part_score is None else (self.part_score.scale, self.part_score.offset)
        weights = None if self.scale_weights is None else tuple(self.scale_weights)
        patch = None if self.nearest_patch is None else NearestPatchScoring(**self.nearest_patch.model_dump())
        return ScoringConstants(tuple(self.log_likelihood_reference), self.blur_sigma, part, weights, patch)


def _relative(log_likelihoods: np.ndarray, reference: float) -> np.ndarray:
    return np.exp(np.clip(log_likelihoods.astype(np.float64) - reference, _LOWEST_LOG_RATIO, 0.0))


def relative_likelihoods(log_likelihoods: list[np.ndarray], constants: ScoringConstants, patch_distances: np.ndarray | None = None) -> list[np.ndarray]:
    """The map's terms, each in (0, 1]: one per flow scale, then the nearest patch's where the
    constants have one (its distances are then required: a map without the term it was
    calibrated with would be judged against the wrong threshold)."""
    terms = [_relative(ll, reference) for ll, reference in zip(log_likelihoods, constants.log_likelihood_reference)]
    patch = constants.nearest_patch
    if patch is not None:
        if patch_distances is None:
            raise ValueError("these scoring constants include the nearest good patch, but no patch distances were given")
        terms.append(_relative(patch.log_likelihoods(patch_distances), patch.reference))
    return terms


@dataclass(frozen=True)
class ScoredFrames:
    maps: np.ndarray  # (B, H, W) float32: the anomaly maps, every term in them
    map_scores: np.ndarray  # (B,): the maximum of the map the image score reads (see image_terms)
    scores: np.ndarray  # (B,): the image scores, the larger of map_scores and the part score where there is one


def score_frames(
    log_likelihoods: list[np.ndarray],
    constants: ScoringConstants,
    output_size: tuple[int, int],
    part_distances: np.ndarray | None = None,
    patch_distances: np.ndarray | None = None,
) -> ScoredFrames:
    """(B, h_s, w_s) log-likelihood per channel at each scale (and, where the constants have the
    nearest patch's term, its (B, h, w) distances) -> anomaly maps and image scores.

    The image score is the maximum of the map over the terms image_terms() names (the whole
    map, or the flows' alone), or where the constants have a part score and the part distances
    are given, the larger of that and the part score."""
    terms = relative_likelihoods(log_likelihoods, constants, patch_distances)
    weights = constants.normalised_weights()
    image_terms = constants.image_terms()
    batch = terms[0].shape[0]
    maps = np.empty((batch, *output_size), dtype=np.float32)
    map_scores = np.empty(batch, dtype=np.float32)
    for b in range(batch):
        maps[b], map_scores[b] = _one_frame([term[b] for term in terms], weights, output_size, constants.blur_sigma, image_terms)
    return ScoredFrames(maps, map_scores, image_scores(map_scores, constants, part_distances))


def anomaly_maps(
    log_likelihoods: list[np.ndarray],
    constants: ScoringConstants,
    output_size: tuple[int, int],
    part_distances: np.ndarray | None = None,
    patch_distances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """score_frames' maps (B, H, W) and image scores (B,); without part distances the scores are
    the map halves alone."""
    scored = score_frames(log_likelihoods, constants, output_size, part_distances, patch_distances)
    return scored.maps, scored.scores


# float32 makes the map in less than half float64's time (0.7-1.1 against 1.8-2.8 ms per 256x256
# frame, bench/README.md) and is exact to about 1e-6 nats wherever the averaged likelihood stays above
# _FLOAT32_TRUSTED. Each weighted term is floored at _FLOAT32_FLOOR first, which keeps the arithmetic
# off float32's slow subnormals and moves no result above _FLOAT32_TRUSTED by more than a
# relative 1e-7. A frame with any position below it (some region more than 69 nats less likely
# than good parts on every term) is made again in float64, which stays exact to 700 nats.
_FLOAT32_FLOOR = 1e-37
_FLOAT32_TRUSTED = 1e-30


def _one_frame(terms: list[np.ndarray], weights: np.ndarray, output_size: tuple[int, int], blur_sigma: float, image_terms: int) -> tuple[np.ndarray, float]:
    """One frame's terms (each (h_s, w_s) in (0, 1]) -> its anomaly map (H, W) and the maximum
    of the map over its first image_terms terms. Upsampling and blur are linear, so the two
    groups are averaged apart and added: the map is the same sum as one average of all terms."""
    whole = image_terms == len(terms)
    image_part = _averaged_likelihood(terms[:image_terms], weights[:image_terms], output_size, blur_sigma, np.float32, _FLOAT32_FLOOR)
    likelihood = image_part if whole else image_part + _averaged_likelihood(terms[image_terms:], weights[image_terms:], output_size, blur_sigma, np.float32, _FLOAT32_FLOOR)
    low = float(likelihood.min())
    if math.isnan(low):
        # A term that is not a number (a non-finite feature, a broken engine) spreads over the
        # map; the score must say so too, whichever terms it reads, so the part cannot pass.
        return -np.log(likelihood), math.nan
    image_low = low if whole else float(image_part.min()) / float(weights[:image_terms].sum())
    if low < _FLOAT32_TRUSTED or image_low < _FLOAT32_TRUSTED:
        anomaly_map = float64_map(terms, weights, output_size, blur_sigma)
        return anomaly_map, float(anomaly_map.max()) if whole else _float64_image_maximum(terms, weights, output_size, blur_sigma, image_terms)
    anomaly_map = -np.log(likelihood)  # every position is at least _FLOAT32_TRUSTED
    return anomaly_map, float(anomaly_map.max()) if whole else -math.log(image_low)


def float64_map(terms: list[np.ndarray], weights: np.ndarray, output_size: tuple[int, int], blur_sigma: float) -> np.ndarray:
    """One frame's map in float64 throughout, exact to 700 nats: the fallback above, and how
    every map was made before the float32 path (bench/interleaved.py times the two)."""
    likelihood = _averaged_likelihood(terms, weights, output_size, blur_sigma, np.float64, 0.0)
    return -np.log(np.maximum(likelihood, np.exp(_LOWEST_LOG_RATIO)))


def _float64_image_maximum(terms: list[np.ndarray], weights: np.ndarray, output_size: tuple[int, int], blur_sigma: float, image_terms: int) -> float:
    share = weights[:image_terms] / weights[:image_terms].sum()
    return float(float64_map(terms[:image_terms], share, output_size, blur_sigma).max())


def _averaged_likelihood(terms: list[np.ndarray], weights: np.ndarray, output_size: tuple[int, int], blur_sigma: float, dtype, term_floor: float) -> np.ndarray:
    height, width = output_size
    likelihood = np.zeros((height, width), dtype=dtype)
    for weight, term in zip(weights, terms):
        small = np.maximum(weight * term, term_floor).astype(dtype)
        likelihood += cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if blur_sigma > 0:
        likelihood = cv2.GaussianBlur(likelihood, (0, 0), blur_sigma, borderType=cv2.BORDER_REFLECT)
    return likelihood


def image_scores(map_maxima: np.ndarray, constants: ScoringConstants, part_distances: np.ndarray | None = None) -> np.ndarray:
    """The image score: the map half (the maximum of the map the score reads), or the larger of
    it and the part score where the constants have one and the part distances are given."""
    if constants.part_score is None or part_distances is None:
        return map_maxima
    return np.maximum(map_maxima, constants.part_scores(part_distances).astype(map_maxima.dtype))
