"""Synthetic defects with known masks, made from held-out good parts: what calibration chooses
scoring settings on when a station has no marked defects.

Three kinds, one picked at random per defect: a Perlin-noise blemish (DRAEM, Zavrtanik et al.
2021: another good part's texture or a brightness/colour change inside a random window, sometimes
faint), a cut-paste rectangle (CutPaste, Li et al. 2021: a jittered patch of the same part moved
elsewhere) and a thin scar. None is tuned to any category's real defects.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("perlin", "cutpaste", "scar")


@dataclass(frozen=True)
class SyntheticDefects:
    images: np.ndarray  # uint8 (N, H, W, 3)
    masks: np.ndarray  # bool (N, H, W)
    kinds: tuple[str, ...]


def perlin_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """2D gradient noise in about [-1, 1] with `cells` lattice cells per side."""
    height, width = shape
    y = np.arange(height) * cells / height
    x = np.arange(width) * cells / width
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]
    angles = 2 * np.pi * rng.random((cells + 1, cells + 1))
    gy, gx = np.sin(angles), np.cos(angles)

    def corner(dy: int, dx: int) -> np.ndarray:
        cy, cx = (yi + dy)[:, None], (xi + dx)[None, :]
        return gy[cy, cx] * (fy - dy) + gx[cy, cx] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return np.sqrt(2) * (top * (1 - uy) + bottom * uy)


def _perlin(image: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    mask = np.zeros((height, width), bool)
    for _ in range(50):
        noise = perlin_noise((height, width), int(rng.choice([4, 8, 16])), rng)
        window = np.zeros_like(mask)
        wh, ww = int(rng.uniform(0.1, 0.6) * height), int(rng.uniform(0.1, 0.6) * width)
        y, x = rng.integers(0, height - wh + 1), rng.integers(0, width - ww + 1)
        window[y : y + wh, x : x + ww] = True
        mask = (noise > rng.uniform(0.05, 0.5)) & window
        if 30 <= mask.sum() <= 0.2 * height * width:
            break
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)[..., None]
    picture = image.astype(np.float32)
    if rng.random() < 0.5:
        turns = int(rng.integers(1, 4))
        if height != width:
            turns = 2  # a quarter turn would swap a non-square part's height and width
        other = np.rot90(others[rng.integers(len(others))], turns).astype(np.float32)
        fill = np.roll(other, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1)) * rng.uniform(0.6, 1.4)
    else:
        gain = rng.uniform(0.5, 1.5) if rng.random() < 0.7 else rng.uniform(0.85, 1.15)
        gray = bool(np.array_equal(image[..., 0], image[..., 1]))
        fill = picture * gain + (rng.uniform(-25, 25) if gray else rng.uniform(-25, 25, size=3))
    beta = rng.uniform(0.5, 1.0)
    out = picture * (1 - beta * soft) + fill * beta * soft
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _cutpaste(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    ph = max(3, int(rng.uniform(0.04, 0.2) * height))
    pw = int(np.clip(ph * rng.uniform(0.3, 3.3), 3, 0.4 * width))
    sy, sx = rng.integers(0, height - ph), rng.integers(0, width - pw)
    patch = image[sy : sy + ph, sx : sx + pw].astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    if rng.random() < 0.5:
        patch = patch[::-1]
    dy, dx = rng.integers(0, height - ph), rng.integers(0, width - pw)
    out = image.copy()
    out[dy : dy + ph, dx : dx + pw] = np.clip(patch, 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), bool)
    mask[dy : dy + ph, dx : dx + pw] = True
    return out, mask


def _scar(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    layer = np.zeros((height, width), np.uint8)
    points = [np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])]
    step, angle = rng.uniform(0.05, 0.4) * width / 3, rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(1, 4))):
        angle += rng.uniform(-0.5, 0.5)
        points.append(points[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    cv2.polylines(layer, [np.array(points, np.int32).reshape(-1, 1, 2)], False, 255, int(rng.integers(1, 4)))
    soft = cv2.GaussianBlur(layer.astype(np.float32) / 255, (0, 0), 0.7)[..., None]
    colour = rng.uniform(0, 60) if rng.random() < 0.5 else rng.uniform(190, 255)
    out = image.astype(np.float32) * (1 - soft) + colour * soft
    return np.clip(out, 0, 255).astype(np.uint8), layer > 0


def synthetic_defects(images: np.ndarray, count: int, seed: int) -> SyntheticDefects:
    """About `count` defects, spread evenly over the good images (uint8 (N, H, W, 3))."""
    rng = np.random.default_rng(seed)
    per_image = max(1, int(round(count / len(images))))
    outs, masks, kinds = [], [], []
    for i, image in enumerate(images):
        others = np.delete(images, i, axis=0) if len(images) > 1 else images
        for _ in range(per_image):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            if kind == "perlin":
                out, mask = _perlin(image, others, rng)
            elif kind == "cutpaste":
                out, mask = _cutpaste(image, rng)
            else:
                out, mask = _scar(image, rng)
            outs.append(out)
            masks.append(mask)
            kinds.append(kind)
    return SyntheticDefects(np.stack(outs), np.stack(masks), tuple(kinds))
