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
each 3 x 3 neighbourhood (PatchCore's local aggregation). Distances are measured in the training
patches' first 96 principal directions (of Lite0's 120 channels): a fifth less of the (positions
x bank) matmul, which is most of the term's cost, for the same outlines and image AUROC on tire
and slightly sharper outlines on metal_plate over four coreset draws; 64 directions would halve
the matmul but cost tire about 0.01 image AUROC (bench/README.md). The distance is computed
inside the flows graph in float32, so every backend returns it with the log-likelihoods.
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
PRINCIPAL_COMPONENTS = 96  # the directions distances are measured in (bundle format 6)


def patch_features(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Stride-8 (B, C1, h, w) and stride-16 (B, C2, h/2, w/2) maps -> (B, C1 + C2, h, w) float32."""
    fine = fine.float()
    coarse = F.interpolate(coarse.float(), size=fine.shape[-2:], mode="bilinear", align_corners=False)
    return F.avg_pool2d(torch.cat([fine, coarse], dim=1), 3, stride=1, padding=1, count_include_pad=False)


class NearestPatch(nn.Module):
    """Encoder taps -> each stride-8 position's squared distance to its nearest bank patch,
    (B, h, w) float32. `taps` are the positions of strides 8 and 16 among the encoder's outputs.

    `projection` (C, k), where given, maps a patch into the k directions distances are measured
    in, and `bank` (K, k) holds the bank's patches already projected. Without it (bundles of
    format 5) the bank is (K, C) and distances are in all C channels."""

    bank: torch.Tensor  # buffers, declared for the type checker
    projection: torch.Tensor | None
    extended_bank_t: torch.Tensor

    def __init__(self, bank: torch.Tensor, taps: tuple[int, int], projection: torch.Tensor | None = None):
        super().__init__()
        if projection is not None and (projection.dim() != 2 or projection.shape[1] != bank.shape[1]):
            raise ValueError(f"a projection of shape {tuple(projection.shape)} does not map patches onto a bank of shape {tuple(bank.shape)}")
        self.taps = tuple(taps)
        self.register_buffer("bank", bank.float().clone())
        self.register_buffer("projection", None if projection is None else projection.float().clone())
        # Columns -2 b and |b|^2: a query extended by a 1 gets |b|^2 - 2 q.b from the matmul
        # alone, so the (positions x bank) matrix is written once and read once, by the min.
        # Two more sweeps over it (adding the norms, subtracting from |q|^2) cost ONNX Runtime
        # 0.5-0.7 ms per frame beside a 4 ms matmul (bench/README.md).
        extended = torch.cat([-2.0 * self.bank, (self.bank * self.bank).sum(dim=1, keepdim=True)], dim=1)
        self.register_buffer("extended_bank_t", extended.t().contiguous(), persistent=False)

    @property
    def channels(self) -> int:
        """The channels of a patch, before any projection."""
        return int(self.bank.shape[1] if self.projection is None else self.projection.shape[0])

    def saved_state(self) -> dict[str, torch.Tensor]:
        """What nearest_patch.pt holds; `load_nearest_patch` reads it back."""
        return {"bank": self.bank} if self.projection is None else {"bank": self.bank, "projection": self.projection}

    def forward(self, features: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        patches = patch_features(features[self.taps[0]], features[self.taps[1]])
        batch, channels, height, width = patches.shape
        queries = patches.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.projection is not None:
            queries = torch.matmul(queries, self.projection)  # (B, h*w, k)
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


def principal_directions(patches: torch.Tensor, count: int = PRINCIPAL_COMPONENTS) -> torch.Tensor | None:
    """The `count` directions (C, count) along which the patches (N, C) vary most, largest first;
    None where a patch has no more than `count` channels (nothing to save) or there are too few
    patches to estimate them."""
    if patches.shape[1] <= count or len(patches) <= count:
        return None
    patches = patches.double()
    centred = patches - patches.mean(dim=0)
    _, vectors = torch.linalg.eigh(centred.t() @ centred)  # eigenvalues ascending
    return vectors[:, -count:].flip(1).float().contiguous()


def fit_nearest_patch(features: list[torch.Tensor], taps: tuple[int, int], seed: int, size: int = BANK_SIZE, batch_size: int = 32) -> NearestPatch:
    """The bank from the training parts' encoder taps, each (N, C, h, w): a coreset of their
    patches, projected onto the patches' principal directions."""
    with torch.inference_mode():
        patches = []
        for start in range(0, len(features[0]), batch_size):
            block = patch_features(features[taps[0]][start : start + batch_size], features[taps[1]][start : start + batch_size])
            patches.append(block.flatten(2).transpose(1, 2).reshape(-1, block.shape[1]))
        pool = torch.cat(patches)
        bank = greedy_coreset(pool, size, seed)
        projection = principal_directions(pool)
        if projection is not None:
            bank = bank @ projection
    return NearestPatch(bank, taps, projection).eval()


def load_nearest_patch(state: object, taps: tuple[int, int], channels: int, name: str) -> NearestPatch:
    """The term from what `saved_state` wrote, for patches of `channels` channels (the two taps'
    together); `name` is the file, for the error."""
    if not isinstance(state, dict) or not isinstance(state.get("bank"), torch.Tensor) or set(state) - {"bank", "projection"}:
        raise ValueError(f"{name}: expected a bank tensor and an optional projection; re-calibrate")
    projection = state.get("projection")
    if projection is not None and not isinstance(projection, torch.Tensor):
        raise ValueError(f"{name}: the projection is not a tensor; re-calibrate")
    if state["bank"].dim() != 2:
        raise ValueError(f"{name}: the bank has shape {tuple(state['bank'].shape)}, expected (patches, channels); re-calibrate")
    try:
        model = NearestPatch(state["bank"], taps, projection).eval()
    except ValueError as error:
        raise ValueError(f"{name}: {error}; re-calibrate") from None
    if model.channels != channels:
        raise ValueError(f"{name}: patches of {model.channels} channels, the encoder's taps at strides 8 and 16 give {channels}; re-calibrate")
    return model


def nearest_distances(model: NearestPatch, features: list[torch.Tensor], batch_size: int = 16) -> np.ndarray:
    """(N, h, w) float32 for encoder taps (N, C, h, w) each."""
    with torch.inference_mode():
        return np.concatenate([model([f[start : start + batch_size] for f in features]).numpy() for start in range(0, len(features[0]), batch_size)])
