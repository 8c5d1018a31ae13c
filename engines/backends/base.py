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
    def from_graph_outputs(cls, outputs: list[np.ndarray], scales: int) -> ModelOutput:
        """The flows graph's outputs in order: one log-likelihood map per scale, then the part
        distance where the graph has one."""
        return cls(list(outputs[:scales]), outputs[scales] if len(outputs) > scales else None)

    @classmethod
    def concatenate(cls, batches: list[ModelOutput]) -> ModelOutput:
        """Batches run one after another, as one output."""
        scales = len(batches[0].log_likelihoods)
        maps = [np.concatenate([b.log_likelihoods[s] for b in batches]) for s in range(scales)]
        has_part = batches[0].part_distances is not None
        return cls(maps, np.concatenate([b.part_distances for b in batches]) if has_part else None)


class InferenceBackend(Protocol):
    name: str

    def infer(self, images: np.ndarray) -> ModelOutput:
        """uint8 RGB (B, H, W, 3) at the bundle's input size -> the flows graph's outputs."""

    def close(self) -> None: ...
