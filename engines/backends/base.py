"""What every inference backend provides: model-input images in, log-likelihood maps out."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says what is missing and what to do."""


class InferenceBackend(Protocol):
    name: str

    def log_likelihoods(self, images: np.ndarray) -> list[np.ndarray]:
        """uint8 RGB (B, H, W, 3) at the bundle's input size -> per scale (B, h, w) float32."""

    def close(self) -> None: ...
