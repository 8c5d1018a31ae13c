"""The picture a person looks at: a part with its anomaly map overlaid."""

from __future__ import annotations

import math

import cv2
import numpy as np


def colour_top(image_threshold: float, region_threshold: float | None) -> float:
    """The map level at the top of the heatmap's colour scale: twice the region threshold, so a
    region's edge is mid-scale and its core runs to red. The region threshold is fitted on the
    published map itself; the image threshold is not, where the score reads the flows' map alone
    (bundle format 7), and scaling by it washed out every heatmap of such a bundle. Without a
    usable region threshold: 1.5 times the image threshold, as before."""
    if region_threshold is not None and math.isfinite(region_threshold) and region_threshold > 0:
        return 2.0 * region_threshold
    return 1.5 * image_threshold


def overlay(image_rgb: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, alpha: float = 0.45) -> np.ndarray:
    """BGR uint8 of the image with the map in JET colours; [low, high] spans the colour scale, so
    the same level has the same colour on every part (no per-image normalisation)."""
    height, width = anomaly_map.shape
    image = cv2.cvtColor(cv2.resize(image_rgb, (width, height)), cv2.COLOR_RGB2BGR)
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-6), 0.0, 1.0)
    colours = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(colours, alpha, image, 1.0 - alpha, 0.0)


def colour_bar(height: int, low: float, high: float, width: int = 48) -> np.ndarray:
    ramp = np.linspace(255, 0, height, dtype=np.float32)[:, None].repeat(width // 2, axis=1).astype(np.uint8)
    bar = np.full((height, width, 3), 255, np.uint8)
    bar[:, : width // 2] = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)
    for text, y in ((f"{high:.1f}", 12), (f"{low:.1f}", height - 4)):
        cv2.putText(bar, text, (width // 2 + 1, y), cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def label(image_bgr: np.ndarray, lines: list[str], colour=(255, 255, 255)) -> np.ndarray:
    out = image_bgr.copy()
    # A dark band behind the text keeps it readable on any heatmap colour.
    cv2.rectangle(out, (0, 0), (out.shape[1], 6 + 14 * len(lines)), (0, 0, 0), thickness=-1)
    for i, text in enumerate(lines):
        cv2.putText(out, text, (4, 14 + 14 * i), cv2.FONT_HERSHEY_PLAIN, 1.0, colour, 1, cv2.LINE_AA)
    return out
