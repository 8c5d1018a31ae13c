"""Conditional normalizing flow over feature vectors (one per encoder scale).

The flow acts on the channel vector of each position independently, so it is written on
tensors shaped (..., channels): a (batch, positions, channels) map and a (fibers, channels)
training batch go through the same code, and every "1x1 convolution" is a matmul over the
last axis. The condition enters only the first layer of each coupling subnet, as an additive
term that is a function of the position alone; callers pass that term precomputed
(`cond_term`), which is how inference folds the positional encoding into a constant bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class FlowConfig:
    coupling_blocks: int = 8
    condition_channels: int = 128
    clamp: float = 1.9
    hidden_ratio: float = 2.0  # subnet width relative to its input (split half + condition), as in CFLOW


class CouplingBlock(nn.Module):
    """Affine coupling with soft clamp, learned global affine and a fixed channel permutation."""

    permutation: torch.Tensor  # buffers, declared for the type checker
    inverse_permutation: torch.Tensor

    def __init__(self, channels: int, config: FlowConfig, permutation_seed: int):
        super().__init__()
        self.channels = channels
        self.kept = channels // 2
        self.changed = channels - self.kept
        self.clamp = config.clamp
        hidden = int(round(config.hidden_ratio * (self.kept + config.condition_channels)))
        self.hidden = hidden
        # First subnet layer split in two: the x part runs per fiber, the condition part is a
        # per-position constant that callers may precompute.
        self.in_x = nn.Linear(self.kept, hidden, bias=False)
        self.in_cond = nn.Linear(config.condition_channels, hidden, bias=True)
        self.out = nn.Linear(hidden, 2 * self.changed)
        # Zero output layer: the block starts as the identity (z = permuted x, log-det 0).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.global_log_scale = nn.Parameter(torch.zeros(channels))
        self.global_offset = nn.Parameter(torch.zeros(channels))
        generator = torch.Generator().manual_seed(permutation_seed)
        permutation = torch.randperm(channels, generator=generator)
        self.register_buffer("permutation", permutation, persistent=True)
        self.register_buffer("inverse_permutation", torch.argsort(permutation), persistent=True)

    def cond_term(self, condition: torch.Tensor) -> torch.Tensor:
        """First-layer contribution of the condition: (..., condition_channels) -> (..., hidden)."""
        return self.in_cond(condition)

    def _scale_shift(self, kept: torch.Tensor, cond_term: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The subnet (the matmuls, nearly all the work) runs in its weights' dtype, float16 in a
        # GPU engine; the flow's state stays float32. A half state overflowed: anomalous fibers
        # are scaled by up to e^1.9 per block and z passed 65504 on real defects (-inf maps).
        dtype = self.in_x.weight.dtype
        hidden = F.relu(self.in_x(kept.to(dtype)) + cond_term.to(dtype))
        raw = self.out(hidden).to(kept.dtype)
        raw_scale, shift = raw[..., : self.changed], raw[..., self.changed :]
        # Soft clamp keeps exp(scale) bounded so one odd fiber cannot blow up training.
        log_scale = self.clamp * torch.tanh(raw_scale / self.clamp)
        return log_scale, shift

    def forward(self, x: torch.Tensor, cond_term: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, changed = x[..., : self.kept], x[..., self.kept :]
        log_scale, shift = self._scale_shift(kept, cond_term)
        changed = changed * torch.exp(log_scale) + shift
        y = torch.cat([kept, changed], dim=-1)
        y = y * torch.exp(self.global_log_scale) + self.global_offset
        y = y[..., self.permutation]
        log_det = wide(log_scale).sum(dim=-1) + wide(self.global_log_scale).sum()
        return y, log_det

    def inverse(self, y: torch.Tensor, cond_term: torch.Tensor) -> torch.Tensor:
        y = y[..., self.inverse_permutation]
        y = (y - self.global_offset) * torch.exp(-self.global_log_scale)
        kept, changed = y[..., : self.kept], y[..., self.kept :]
        log_scale, shift = self._scale_shift(kept, cond_term)
        changed = (changed - shift) * torch.exp(-log_scale)
        return torch.cat([kept, changed], dim=-1)


class ConditionalFlow(nn.Module):
    """A stack of coupling blocks on top of a fixed per-channel standardisation.

    The standardisation (fitted once on good features) is part of the density, with its
    log-determinant, so the likelihood stays exact while the optimiser sees unit-scale inputs.
    """

    input_mean: torch.Tensor  # buffers, declared for the type checker
    input_std: torch.Tensor

    def __init__(self, channels: int, config: FlowConfig, seed: int = 0):
        super().__init__()
        self.channels = channels
        self.config = config
        self.blocks = nn.ModuleList(CouplingBlock(channels, config, permutation_seed=seed * 1000 + i) for i in range(config.coupling_blocks))
        self.register_buffer("input_mean", torch.zeros(channels))
        self.register_buffer("input_std", torch.ones(channels))

    @property
    def coupling_blocks(self) -> Sequence[CouplingBlock]:
        """`blocks` as what it holds (a type checker sees an nn.ModuleList yield plain Modules)."""
        return cast("Sequence[CouplingBlock]", self.blocks)

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    def cond_terms(self, condition: torch.Tensor) -> list[torch.Tensor]:
        return [block.cond_term(condition) for block in self.coupling_blocks]

    def forward(self, x: torch.Tensor, cond_terms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Map features to latents; returns (z, log|det dz/dx|) with log-det in float32."""
        z = (x - self.input_mean) / self.input_std
        log_det = -torch.log(wide(self.input_std)).sum()
        for block, term in zip(self.blocks, cond_terms):
            z, block_log_det = block(z, term)
            log_det = log_det + block_log_det
        return z, log_det

    def inverse(self, z: torch.Tensor, cond_terms: list[torch.Tensor]) -> torch.Tensor:
        for block, term in zip(reversed(self.coupling_blocks), reversed(cond_terms)):
            z = block.inverse(z, term)
        return z * self.input_std + self.input_mean

    def log_likelihood_per_dim(self, x: torch.Tensor, cond_terms: list[torch.Tensor]) -> torch.Tensor:
        """log p(x) / channels for every position, always reduced in float32.

        In half precision the sum of squares over hundreds of channels overflows on exactly the
        anomalous positions, so the reduction is done after an explicit cast.
        """
        z, log_det = self.forward(x, cond_terms)
        return gaussian_log_likelihood_per_dim(z, log_det)


_half_reductions = False  # only ever set by half_reductions(), for the FP16 evaluation


def wide(tensor: torch.Tensor) -> torch.Tensor:
    """At least float32: reductions never run in half precision."""
    if _half_reductions:
        return tensor.half()
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


@contextmanager
def half_reductions():
    """Run the log-likelihood reductions (sum of z squared, log-det sums) in float16.

    Evaluation only: bench/fp16.py uses it to show what the float32 reduction buys. Nothing
    that inspects parts may run under it.
    """
    global _half_reductions
    previous, _half_reductions = _half_reductions, True
    try:
        yield
    finally:
        _half_reductions = previous


def gaussian_log_likelihood_per_dim(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    z32 = wide(z)
    channels = z.shape[-1]
    log_p = -0.5 * (z32 * z32).sum(dim=-1) - 0.5 * channels * LOG_2PI + wide(log_det)
    return log_p / channels
