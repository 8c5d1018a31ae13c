"""Frame to model input: the one resize and colour conversion every path shares.

Frames are OpenCV images (BGR, BGRA or single channel; uint8 or uint16). The model input is
uint8 RGB (H, W, 3) at the bundle's input size; normalisation happens inside the encoder graph.
"""

from __future__ import annotations

import cv2
import numpy as np

COLOUR_MODES = ("rgb", "gray")
# A part this much wider or taller than the widest or tallest good part is another camera
# setting, not another part: resized to the model's square it would be squashed out of shape.
# Loose enough for a crop a little off (a 4:3 picture of a square part passes), tight enough for
# a frame of another shape (16:9 against square, a line-scan strip). The daemon refuses such a
# frame (edge/inspection.py), calibration such a good image (calibration/calibrate.py).
PART_ASPECT_TOLERANCE = 1.5


class FrameError(ValueError):
    """A frame that cannot be inspected (empty, wrong channels or depth); the message says why."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # Machine-vision cameras deliver 10-16 bit data in uint16; keep the top 8 bits.
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating) and image.size and np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1:
        return (image * 255.0 + 0.5).astype(np.uint8)
    raise FrameError(f"unsupported pixel type {image.dtype} (expected uint8, uint16 or float in [0, 1])")


def to_model_input(image: np.ndarray, input_size: tuple[int, int], colour: str) -> np.ndarray:
    """Return uint8 RGB (height, width, 3) at input_size = (height, width)."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        raise FrameError("empty frame")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise FrameError(f"unsupported frame shape {image.shape} (expected HxW, HxWx3 or HxWx4)")
    if min(image.shape[:2]) < 8:
        raise FrameError(f"frame too small: {image.shape[1]}x{image.shape[0]} pixels")
    image = to_uint8(image)
    if colour == "gray":
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif colour == "rgb":
        if image.ndim == 2:
            rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
    else:
        raise FrameError(f"unknown colour mode {colour!r}; expected one of {COLOUR_MODES}")
    height, width = input_size
    if rgb.shape[:2] != (height, width):
        shrinking = rgb.shape[0] * rgb.shape[1] > height * width
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb)
