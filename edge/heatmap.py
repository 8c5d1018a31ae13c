"""The heatmap JPEG of an inspected part: what the camera saw with the anomaly map over it."""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.answer import Answer
from edge.decision import CAUSE_WHOLE_PART
from edge.jpeg_comment import with_comment
from engines.overlay import colour_bar, colour_top, label, overlay
from engines.preprocess import to_model_input

HEATMAP_LONG_SIDE = 512  # pixels: enough to see a defect, small enough for a JPEG per reject
HEATMAP_MIN_SIDE = 256  # pixels: below this the labels would not fit on the picture
PREVIEW_LONG_SIDE = 320  # the live view: a glance at the line, several times a second


def picture_meta(answer: Answer) -> dict:
    verdict = answer.verdict
    return {
        "station": answer.station,
        "part_id": answer.part_id,
        "frame_id": answer.frame.frame_id if answer.frame else None,
        "verdict": answer.outcome.value,
        "score": round(verdict.score, 5) if verdict is not None and math.isfinite(verdict.score) else None,
        "threshold": round(verdict.threshold, 5) if verdict is not None else None,
    }


def render_heatmap(answer: Answer, quality: int, long_side: int = HEATMAP_LONG_SIDE) -> bytes:
    """The ROI crop the inspection made (in its own aspect and colour, at most 512 px a side)
    with the anomaly map over it, the defect boxes, the verdict and a colour bar scaled to the
    region threshold (engines/overlay.py: colour_top; the same colour means the same thing on
    every part). Empty for an answer that was not inspected."""
    if answer.inspected is None or answer.verdict is None:
        return b""
    verdict, inspected = answer.verdict, answer.inspected
    x0, y0, width, height = inspected.box
    # Down to at most long_side; small crops up to HEATMAP_MIN_SIDE, so the verdict and score
    # written on the picture fit on it.
    scale = min(long_side, max(HEATMAP_MIN_SIDE, max(width, height))) / max(width, height)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    view_rgb = to_model_input(inspected.view, size, "rgb")  # any depth and channels to display RGB
    anomaly_map = cv2.resize(inspected.anomaly_map, (view_rgb.shape[1], view_rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    top = colour_top(verdict.threshold, verdict.region_threshold)
    picture = overlay(view_rgb, anomaly_map, 0.0, top)
    sx, sy = picture.shape[1] / width, picture.shape[0] / height
    for r in verdict.regions:
        p0 = (int((r.x - x0) * sx), int((r.y - y0) * sy))
        p1 = (int((r.x - x0 + r.width) * sx), int((r.y - y0 + r.height) * sy))
        cv2.rectangle(picture, p0, p1, (255, 255, 255), 1)
    said = "REJECT" if verdict.reject else "pass"
    if verdict.cause == CAUSE_WHOLE_PART:
        said += " (whole part)"  # the map may show nothing: say where the decision came from
    picture = label(picture, [f"{answer.part_id} {said}", f"score {verdict.score:.2f} / {verdict.threshold:.2f}"])
    picture = np.hstack([picture, colour_bar(picture.shape[0], 0.0, top)])
    ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return with_comment(jpeg.tobytes(), picture_meta(answer)) if ok else b""
