"""The nearest good patch: beside the flows, each stride-8 position's squared distance to the
closest patch in a bank of good-part patches (PatchCore's memory bank, Roth et al., CVPR 2022).

The flows learn a smooth density over each scale's features; around a small defect that density
blurs the outline. A nearest-neighbour distance has no such smoothing: a position is as far from
the good parts as its closest good patch, so the step at a defect's edge stays sharp. As one more
term in the map's average it lifts metal_plate's outlines from pixel AUROC / PRO 0.987 / 0.928
to 0.992 / 0.951 and tire's from 0.987 / 0.941 to 0.989 / 0.948, for one (positions x bank)
matmul per frame (bench/README.md, "Nearest good patch"). On a noisy texture it can raise good
parts' maxima, so calibration leaves it out where synthetic defects say so
(calibration/scale_weights.py).

A patch is the stride-8 features and the stride-16 features upsampled to stride 8, averaged over
each 3 x 3 neighbourhood (PatchCore's local aggregation). The distance is computed inside the
flows graph in float32, so every backend returns it with the log-likelihoods.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PATCH_STRIDES = (8, 16)  # the finest scale gives the outline, the next its context
BANK_SIZE = 1024  # patches kept per station (the greedy coreset of all training patches)
CORESET_POOL = 100_000  # the coreset is chosen from at most this many patches, drawn at random
_PROJECTED_CHANNELS = 64  # the greedy search compares random projections (Johnson-Lindenstrauss)


def patch_features(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Stride-8 (B, C1, h, w) and stride-16 (B, C2, h/2, w/2) maps -> (B, C1 + C2, h, w) float32."""
    fine = fine.float()
    coarse = F.interpolate(coarse.float(), size=fine.shape[-2:], mode="bilinear", align_corners=False)
    return F.avg_pool2d(torch.cat([fine, coarse], dim=1), 3, stride=1, padding=1, count_include_pad=False)


class NearestPatch(nn.Module):
    """Encoder taps -> each stride-8 position's squared distance to its nearest bank patch,
    (B, h, w) float32. `taps` are the positions of strides 8 and 16 among the encoder's outputs."""

    bank: torch.Tensor  # buffers, declared for the type checker
    extended_bank_t: torch.Tensor

    def __init__(self, bank: torch.Tensor, taps: tuple[int, int]):
        super().__init__()
        self.taps = tuple(taps)
        self.register_buffer("bank", bank.float().clone())
        # Columns -2 b and |b|^2: a query extended by a 1 gets |b|^2 - 2 q.b from the matmul
        # alone, so the (positions x bank) matrix is written once and read once, by the min.
        # Two more sweeps over it (adding the norms, subtracting from |q|^2) cost ONNX Runtime
        # 0.5-0.7 ms per frame beside a 4 ms matmul (bench/README.md).
        extended = torch.cat([-2.0 * self.bank, (self.bank * self.bank).sum(dim=1, keepdim=True)], dim=1)
        self.register_buffer("extended_bank_t", extended.t().contiguous(), persistent=False)

    @property
    def channels(self) -> int:
        return int(self.bank.shape[1])

    def forward(self, features: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        patches = patch_features(features[self.taps[0]], features[self.taps[1]])
        batch, channels, height, width = patches.shape
        queries = patches.flatten(2).transpose(1, 2)  # (B, h*w, C)
        # |q - b|^2 = |q|^2 - 2 q.b + |b|^2; in float32 the cancellation is far below a defect's
        # distance (good parts sit at about 1 % of the features' squared norm, defects above it).
        extended = torch.cat([queries, torch.ones_like(queries[..., :1])], dim=2)
        nearest = torch.matmul(extended, self.extended_bank_t).min(dim=2).values + (queries * queries).sum(dim=2)
        return nearest.clamp_min(0.0).reshape(batch, height, width)


def patch_taps(tap_strides: tuple[int, ...]) -> tuple[int, int] | None:
    """Where strides 8 and 16 sit among the encoder's taps; None if it does not tap both."""
    if not set(PATCH_STRIDES) <= set(tap_strides):
        return None
    return (tap_strides.index(PATCH_STRIDES[0]), tap_strides.index(PATCH_STRIDES[1]))


def greedy_coreset(patches: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """`size` patches (N, C) that cover all of them: each next one is the patch farthest from
    those chosen so far (k-centre greedy, as PatchCore), so rare good appearances are kept and
    the many near-duplicates of common ones are not."""
    generator = torch.Generator().manual_seed(seed)
    if len(patches) > CORESET_POOL:
        patches = patches[torch.randperm(len(patches), generator=generator)[:CORESET_POOL]]
    if len(patches) <= size:
        return patches.clone()
    projection = torch.randn(patches.shape[1], _PROJECTED_CHANNELS, generator=generator) / _PROJECTED_CHANNELS**0.5
    projected = patches @ projection
    chosen = [int(torch.randint(len(patches), (1,), generator=generator))]
    nearest = ((projected - projected[chosen[0]]) ** 2).sum(dim=1)
    for _ in range(size - 1):
        farthest = int(nearest.argmax())
        chosen.append(farthest)
        nearest = torch.minimum(nearest, ((projected - projected[farthest]) ** 2).sum(dim=1))
    return patches[torch.tensor(chosen)].clone()


def fit_nearest_patch(features: list[torch.Tensor], taps: tuple[int, int], seed: int, size: int = BANK_SIZE, batch_size: int = 32) -> NearestPatch:
    """The bank from the training parts' encoder taps, each (N, C, h, w)."""
    with torch.inference_mode():
        patches = []
        for start in range(0, len(features[0]), batch_size):
            block = patch_features(features[taps[0]][start : start + batch_size], features[taps[1]][start : start + batch_size])
            patches.append(block.flatten(2).transpose(1, 2).reshape(-1, block.shape[1]))
        bank = greedy_coreset(torch.cat(patches), size, seed)
    return NearestPatch(bank, taps).eval()


def nearest_distances(model: NearestPatch, features: list[torch.Tensor], batch_size: int = 16) -> np.ndarray:
    """(N, h, w) float32 for encoder taps (N, C, h, w) each."""
    with torch.inference_mode():
        return np.concatenate([model([f[start : start + batch_size] for f in features]).numpy() for start in range(0, len(features[0]), batch_size)])
