"""What every inference backend provides: model-input images in, log-likelihood maps out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says what is missing and what to do."""


@dataclass(frozen=True)
class ModelOutput:
    """What the flows graph gives for a batch of frames."""

    log_likelihoods: list[np.ndarray]  # per scale (B, h, w) float32, per channel
    part_distances: np.ndarray | None = None  # (B,) float32; None for a bundle without a part appearance model

    @classmethod
    def from_graph_outputs(cls, outputs: list[np.ndarray], scales: int) -> "ModelOutput":
        """The flows graph's outputs in order: one log-likelihood map per scale, then the part
        distance where the graph has one."""
        return cls(list(outputs[:scales]), outputs[scales] if len(outputs) > scales else None)


class InferenceBackend(Protocol):
    name: str

    def infer(self, images: np.ndarray) -> ModelOutput:
        """uint8 RGB (B, H, W, 3) at the bundle's input size -> the flows graph's outputs."""

    def close(self) -> None: ...
