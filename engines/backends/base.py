"""What every inference backend provides: model-input images in, log-likelihood maps out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.bundle import LOG_LIKELIHOOD_PREFIX, PART_DISTANCE, PATCH_DISTANCE


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says what is missing and what to do."""


@dataclass(frozen=True)
class ModelOutput:
    """What the flows graph gives for a batch of frames."""

    log_likelihoods: list[np.ndarray]  # per scale (B, h, w) float32, per channel
    part_distances: np.ndarray | None = None  # (B,) float32; None for a bundle without a part appearance model
    patch_distances: np.ndarray | None = None  # (B, h8, w8) float32; None for a bundle without a patch bank

    @classmethod
    def from_graph_outputs(cls, names: list[str], outputs: list[np.ndarray]) -> ModelOutput:
        """The flows graph's outputs by name (engines/bundle.py names them): log_likelihood_i
        per scale, and part_distance and patch_distance where the graph has them."""
        named = dict(zip(names, outputs))
        scales = sorted((n for n in named if n.startswith(LOG_LIKELIHOOD_PREFIX)), key=lambda n: int(n[len(LOG_LIKELIHOOD_PREFIX) :]))
        return cls([named[n] for n in scales], named.get(PART_DISTANCE), named.get(PATCH_DISTANCE))

    @classmethod
    def concatenate(cls, batches: list[ModelOutput]) -> ModelOutput:
        """Batches run one after another, as one output."""
        scales = len(batches[0].log_likelihoods)
        maps = [np.concatenate([b.log_likelihoods[s] for b in batches]) for s in range(scales)]

        def joined(field: str) -> np.ndarray | None:
            parts = [getattr(b, field) for b in batches]
            return None if parts[0] is None else np.concatenate(parts)

        return cls(maps, joined("part_distances"), joined("patch_distances"))


class InferenceBackend(Protocol):
    name: str

    def infer(self, images: np.ndarray) -> ModelOutput:
        """uint8 RGB (B, H, W, 3) at the bundle's input size -> the flows graph's outputs."""

    def close(self) -> None: ...
