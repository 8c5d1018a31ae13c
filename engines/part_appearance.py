"""The whole-part appearance model: a Gaussian over each part's pooled encoder statistics.

CFLOW-AD's flows model every position's features; a defect that changes the whole part a little
everywhere (uneven shading, a wrong texture, a different colour) makes no single position
unlikely. This model sees the part as one vector: per scale and channel, the mean and the
standard deviation of the feature map over all positions. A Gaussian fitted to good parts'
vectors (Rippel et al., ICPR 2020: pretrained features, one Gaussian, Ledoit-Wolf shrinkage)
gives each frame a Mahalanobis distance from the good parts. On MTD magnetic_tile this alone
separates defects at image AUROC 0.961 where the flows' map maximum gives 0.909
(bench/README.md).

The distance is computed inside the flows graph, in float32, so every backend returns it with
the log-likelihoods; the scoring turns it into a score on the anomaly map's scale.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def part_statistics(features: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Feature maps (B, C, h, w) per scale -> (B, 2 * sum C) float32: every channel's mean over
    the positions, then every channel's standard deviation, scale after scale."""
    means, deviations = [], []
    for feature in features:
        flat = feature.float().flatten(2)  # float32 even from a half encoder: sums of 1024 terms
        mean = flat.mean(dim=2)
        means.append(mean)
        # Two passes: E[x^2] - E[x]^2 cancels in float32 where a channel's mean is large against
        # its spread, and each backend sums in its own order.
        centred = flat - mean.unsqueeze(2)
        deviations.append(torch.sqrt((centred * centred).mean(dim=2)))
    return torch.cat(means + deviations, dim=1)


class PartAppearance(nn.Module):
    """Pooled statistics -> Mahalanobis distance from the good parts' mean, (B,) float32.

    distance = || (s - mean) @ whitening ||, where whitening @ whitening.T is the precision
    matrix: one matmul and one reduction, which every backend runs as it is.
    """

    mean: torch.Tensor  # buffers, declared for the type checker
    whitening: torch.Tensor

    def __init__(self, mean: torch.Tensor, whitening: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("whitening", whitening.float().clone())

    @property
    def dimensions(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, features: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.distances(part_statistics(features))

    def distances(self, statistics: torch.Tensor) -> torch.Tensor:
        whitened = torch.matmul(statistics - self.mean, self.whitening)
        return torch.sqrt((whitened * whitened).sum(dim=1))


def sample_covariance(centred: np.ndarray) -> np.ndarray:
    return centred.T @ centred / len(centred)


def ledoit_wolf_shrinkage(centred: np.ndarray, covariance: np.ndarray) -> float:
    """The covariance shrinkage towards a scaled identity that minimises the expected squared
    error (Ledoit and Wolf, 2004); chosen from the data alone, no tuning on defects.
    `covariance` is sample_covariance(centred), passed in because the caller needs it too."""
    samples, dims = centred.shape
    target = np.trace(covariance) / dims
    # ||S - target I||^2 without building the identity (a wide encoder has thousands of statistics).
    distance = ((covariance**2).sum() - 2.0 * target * np.trace(covariance) + dims * target**2) / dims
    # sum over parts of ||x x^T - S||^2, from each part's squared norm.
    spread = (((centred * centred).sum(axis=1) ** 2).sum() / samples - (covariance**2).sum()) / (dims * samples)
    if distance <= 0:
        return 1.0
    return float(min(spread, distance) / distance)


def fit_part_appearance(statistics: np.ndarray) -> tuple[PartAppearance, float]:
    """Fit the Gaussian to good parts' statistics (N, D); returns the model and its shrinkage."""
    data = np.asarray(statistics, dtype=np.float64)
    mean = data.mean(axis=0)
    centred = data - mean
    covariance = sample_covariance(centred)
    shrinkage = ledoit_wolf_shrinkage(centred, covariance)
    dims = covariance.shape[0]
    target = np.trace(covariance) / dims
    covariance *= 1.0 - shrinkage
    covariance[np.diag_indices(dims)] += shrinkage * target
    # Symmetric eigendecomposition rather than Cholesky: a covariance from fewer parts than
    # dimensions is singular before shrinkage, and this stays exact for it after. The floor keeps
    # the distance finite even for statistics that never vary (a blank test pattern).
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, max(float(values.max()) * 1e-12, 1e-12))
    whitening = vectors / np.sqrt(values)
    model = PartAppearance(torch.from_numpy(mean), torch.from_numpy(whitening))
    return model.eval(), shrinkage
