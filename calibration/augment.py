"""Small shifts and rotations of good parts, for stations where parts are not fixtured."""

from __future__ import annotations

import cv2
import numpy as np


def shift_rotate(image: np.ndarray, dx: float, dy: float, degrees: float) -> np.ndarray:
    """Rotate about the centre, then shift by (dx, dy) fractions of the size; the border is
    reflected so no black wedges appear."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0)
    matrix[0, 2] += dx * width
    matrix[1, 2] += dy * height
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def augmented_copies(images: np.ndarray, copies: int, max_shift: float, max_degrees: float, seed: int) -> np.ndarray:
    """The originals followed by `copies` randomly moved versions of each."""
    rng = np.random.default_rng(seed)
    out = [images]
    for _ in range(copies):
        moved = np.empty_like(images)
        for i, image in enumerate(images):
            dx, dy = rng.uniform(-max_shift, max_shift, size=2)
            moved[i] = shift_rotate(image, dx, dy, rng.uniform(-max_degrees, max_degrees))
        out.append(moved)
    return np.concatenate(out)


def move_parts(images: np.ndarray, masks: np.ndarray, max_shift: float, max_degrees: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Move every test part (and its defect mask with it) by a random small shift and rotation:
    how a station without fixtures presents parts."""
    rng = np.random.default_rng(seed)
    moved_images, moved_masks = np.empty_like(images), np.empty_like(masks)
    for i, (image, mask) in enumerate(zip(images, masks)):
        dx, dy = rng.uniform(-max_shift, max_shift, size=2)
        degrees = rng.uniform(-max_degrees, max_degrees)
        moved_images[i] = shift_rotate(image, dx, dy, degrees)
        height, width = mask.shape
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0)
        matrix[0, 2] += dx * width
        matrix[1, 2] += dy * height
        moved_masks[i] = cv2.warpAffine(mask.astype(np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101) > 0
    return moved_images, moved_masks


# What a camera does to the same good part from one frame to the next: a sub-pixel shift, a
# degree or two of rotation, a touch of defocus. The whole-part statistics are fitted on one
# such copy of every good image besides the originals. Fitted on the originals alone, the
# Gaussian learned that good parts are exactly as sharp as the teach-in frames: a Gaussian blur
# of sigma 0.5 px, a 3 degree turn or a half-pixel resample put every good tire test part past
# the threshold (bench/README.md, "Whole-part appearance").
NUISANCE_SHIFT_PX = 1.0
NUISANCE_DEGREES = 2.0
NUISANCE_BLUR_SIGMA = 0.7


def nuisance_copies(images: np.ndarray, seed: int) -> np.ndarray:
    """One copy of each image, shifted by up to a pixel, turned by up to two degrees and
    blurred by a Gaussian of sigma up to 0.7 px, all drawn at random."""
    rng = np.random.default_rng(seed)
    height, width = images.shape[1:3]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        dx, dy = rng.uniform(-NUISANCE_SHIFT_PX, NUISANCE_SHIFT_PX, size=2)
        moved = shift_rotate(image, dx / width, dy / height, rng.uniform(-NUISANCE_DEGREES, NUISANCE_DEGREES))
        sigma = rng.uniform(0.0, NUISANCE_BLUR_SIGMA)
        out[i] = cv2.GaussianBlur(moved, (0, 0), sigma) if sigma >= 0.1 else moved
    return out
