"""Anomaly map and score to a verdict with defect regions, against the calibrated thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DefectRegion:
    x: int  # bounding box in the frame's pixels (after ROI offset)
    y: int
    width: int
    height: int
    area: int  # pixels above the region threshold, in frame pixels
    peak: float  # highest map value inside the region

    def to_json(self) -> dict:
        return {"bbox": [self.x, self.y, self.width, self.height], "area": self.area, "peak": round(self.peak, 4)}


# Why a part was rejected: the map half of its score (the anomaly map's maximum, or the flows'
# where the nearest patch only shapes the outlines, engines/scoring.py) is above the image
# threshold, or it stays below and the whole-part appearance score (engines/part_appearance.py)
# lifted the score.
CAUSE_REGION = "defect region"
CAUSE_WHOLE_PART = "whole part"
# A score that is not a number (a non-finite feature, a broken engine): nobody can say the part
# is good, so it must not pass.
CAUSE_NOT_FINITE = "score not finite"


@dataclass(frozen=True)
class Verdict:
    reject: bool
    score: float
    threshold: float
    regions: tuple[DefectRegion, ...]
    cause: str | None = None  # a reject's: one of the CAUSE_ constants above; None for a pass
    region_threshold: float | None = None  # the map level regions are cut at (the heatmap's colour scale reads it)


def decide(
    anomaly_map: np.ndarray,
    score: float,
    image_threshold: float,
    pixel_threshold: float,
    min_region_area: int,
    frame_box: tuple[int, int, int, int],
    map_score: float | None = None,
) -> Verdict:
    """Reject when the score exceeds the image threshold (strictly, as calibrated), or is not
    a finite number.

    A reject whose map half of the score (map_score; None: the map's maximum) stays at or below
    the image threshold was decided by the whole-part appearance score; it may have no regions
    at all.

    Regions are the 8-connected components of the map above the pixel threshold, at least
    min_region_area frame pixels large, mapped from map coordinates into the frame's
    (x, y, width, height) box: the inspected region of interest.
    """
    if not math.isfinite(score):
        return Verdict(True, float(score), float(image_threshold), (), CAUSE_NOT_FINITE, float(pixel_threshold))
    reject = bool(score > image_threshold)
    if not reject:
        return Verdict(False, float(score), float(image_threshold), (), region_threshold=float(pixel_threshold))
    box_x, box_y, box_w, box_h = frame_box
    map_h, map_w = anomaly_map.shape
    sx, sy = box_w / map_w, box_h / map_h
    above = (anomaly_map > pixel_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    regions = []
    for index in range(1, count):
        x, y, w, h, area = stats[index]
        frame_area = int(round(area * sx * sy))
        if frame_area < min_region_area:
            continue
        peak = float(anomaly_map[labels == index].max())
        regions.append(
            DefectRegion(
                x=box_x + int(x * sx),
                y=box_y + int(y * sy),
                width=max(1, int(round(w * sx))),
                height=max(1, int(round(h * sy))),
                area=frame_area,
                peak=peak,
            )
        )
    regions.sort(key=lambda r: -r.peak)
    map_half = float(anomaly_map.max()) if map_score is None else map_score
    cause = CAUSE_REGION if map_half > image_threshold else CAUSE_WHOLE_PART
    return Verdict(True, float(score), float(image_threshold), tuple(regions), cause, float(pixel_threshold))
