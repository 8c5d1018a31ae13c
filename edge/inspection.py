"""One frame to one Answer: ROI crop, model input, anomaly map, decision.

A pure function of the frame, the station's camera settings and the bundle's engine: nothing
here depends on other frames, threads or the broker."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge.alarms import PART_SHAPE, ROI_OUTSIDE_FRAME
from edge.answer import Answer, Inspected, Outcome
from edge.capture import LIVE_SOURCES, Frame, known_frame_size, roi_outside
from edge.config import CameraConfig
from edge.decision import decide
from edge.station_engine import StationEngine
from engines.preprocess import PART_ASPECT_TOLERANCE, FrameError


def answers_every_frame(camera: CameraConfig) -> bool:
    """Whether each frame is a part that must be answered: a triggered frame is one the PLC
    asked about, a file is one the line camera delivered. A free-running live camera's frames are
    views of the line: skipping one it cannot inspect is how it keeps up."""
    return camera.mode == "triggered" or camera.source.type not in LIVE_SOURCES


def cannot_inspect(frame: Frame, why: str, camera: CameraConfig, bundle_id: str, outcome: Outcome = Outcome.ERROR) -> Answer:
    """The answer for a frame that was not inspected: a reject if it is a part, else a skipped view."""
    outcome = outcome if answers_every_frame(camera) else Outcome.SKIPPED
    return Answer.not_inspected(camera.station, frame.part_id or str(frame.frame_id), outcome, why, bundle_id, frame)


def roi_outside_known_frames(camera: CameraConfig) -> str | None:
    """Why the ROI does not fit the frames the source will deliver, where their size is known
    before the first one (None if it fits, or if only the first frame will tell)."""
    size = known_frame_size(camera.source) if camera.roi is not None else None
    return roi_outside(camera.roi, *size) if size else None


def roi_view(frame: Frame, camera: CameraConfig) -> np.ndarray | None:
    """The part as the model sees it, before resizing: the ROI crop of the frame at full
    resolution (a view, not a copy); None for a frame without an image or too small for the ROI."""
    image = frame.image
    if frame.unreadable or image is None or image.ndim < 2:
        return None
    if camera.roi is None:
        return image
    if roi_outside(camera.roi, image.shape[1], image.shape[0]):
        return None
    x, y, w, h = camera.roi
    return image[y : y + h, x : x + w]


def shape_mismatch(image: np.ndarray, known: tuple[float, float] | None) -> str | None:
    """Why the part's width / height is far outside the calibration's good parts' range, or
    None; bundles calibrated before it was recorded (None) are not checked."""
    if known is None:
        return None
    low, high = known
    height, width = image.shape[:2]
    aspect = width / max(1, height)
    if low / PART_ASPECT_TOLERANCE <= aspect <= high * PART_ASPECT_TOLERANCE:
        return None
    learned = f"{low:.2f}" if high == low else f"{low:.2f} to {high:.2f}"
    return (
        f"the part is {width}x{height} pixels (width/height {aspect:.2f}), the bundle's good parts were {learned}: "
        "has the camera's resolution or the ROI changed since calibration? Fix that or re-calibrate"
    )


def inspect_frame(frame: Frame, engine: StationEngine, camera: CameraConfig, worker: int = 0) -> Answer:
    """Inspect one frame with the engine's inspector for `worker`. A frame that cannot be
    inspected (unreadable, smaller than the ROI, an image the model cannot take) is answered as
    such; an engine failure raises, for the caller to log and answer."""
    bundle = engine.bundle
    if frame.unreadable or frame.image is None:
        return cannot_inspect(frame, f"cannot be inspected: {frame.unreadable or 'no image'}", camera, bundle.bundle_id)
    image = frame.image
    height, width = image.shape[:2] if image.ndim >= 2 else (0, 0)
    box = (0, 0, width, height)
    if camera.roi is not None:
        outside = roi_outside(camera.roi, width, height)
        if outside:
            return replace(cannot_inspect(frame, f"cannot be inspected: {outside}", camera, bundle.bundle_id), fault=ROI_OUTSIDE_FRAME)
        x, y, w, h = camera.roi
        image, box = image[y : y + h, x : x + w], (x, y, w, h)
    squashed = shape_mismatch(image, engine.part_aspect)
    if squashed:
        return replace(cannot_inspect(frame, f"cannot be inspected: {squashed}", camera, bundle.bundle_id), fault=PART_SHAPE)
    inspector = engine.inspectors[worker]
    try:
        model_input = inspector.model_input(image)
    except FrameError as error:
        return cannot_inspect(frame, f"cannot be inspected: {error}", camera, bundle.bundle_id)
    scored = inspector.inspect_frames(model_input[None])
    thresholds = bundle.manifest.thresholds
    verdict = decide(scored.maps[0], float(scored.scores[0]), thresholds.image, thresholds.pixel, camera.min_region_area, box, float(scored.map_scores[0]))
    return Answer.of_inspection(camera.station, frame, verdict, bundle.bundle_id, Inspected(scored.maps[0], image, box))
