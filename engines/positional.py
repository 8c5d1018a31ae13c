"""2D sinusoidal positional encoding, the condition of every CFLOW decoder.

Half of the channels encode the column, half the row, as interleaved sin/cos pairs at
geometrically spaced frequencies (the transformer encoding applied per axis, as in CFLOW-AD).
"""

from __future__ import annotations

import numpy as np


def positional_encoding_2d(channels: int, height: int, width: int) -> np.ndarray:
    """Return a float32 array (height * width, channels), row-major over positions."""
    if channels % 4 != 0:
        raise ValueError(f"positional encoding channels must be a multiple of 4, got {channels}")
    if channels == 0:  # the unconditioned ablation
        return np.zeros((height * width, 0), dtype=np.float32)
    half = channels // 2
    frequencies = np.exp(np.arange(0, half, 2, dtype=np.float64) * -(np.log(10000.0) / half))
    cols = np.arange(width, dtype=np.float64)[:, None] * frequencies[None, :]  # (W, half/2)
    rows = np.arange(height, dtype=np.float64)[:, None] * frequencies[None, :]  # (H, half/2)
    encoding = np.zeros((height, width, channels), dtype=np.float64)
    encoding[:, :, 0:half:2] = np.sin(cols)[None, :, :]
    encoding[:, :, 1:half:2] = np.cos(cols)[None, :, :]
    encoding[:, :, half::2] = np.sin(rows)[:, None, :]
    encoding[:, :, half + 1 :: 2] = np.cos(rows)[:, None, :]
    return encoding.reshape(height * width, channels).astype(np.float32)
