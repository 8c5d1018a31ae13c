"""CFLOW-AD decoders over the encoder's scales, and the graphs that are exported from them."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from engines.flow import ConditionalFlow, FlowConfig, gaussian_log_likelihood_per_dim
from engines.positional import positional_encoding_2d


@dataclass(frozen=True)
class FeatureShape:
    channels: int
    height: int
    width: int

    @property
    def positions(self) -> int:
        return self.height * self.width


def feature_shapes(tap_channels: tuple[int, ...], tap_strides: tuple[int, ...], input_size: tuple[int, int]) -> list[FeatureShape]:
    height, width = input_size
    # TF-style 'same' padding gives ceil(size / stride) at every stride.
    return [FeatureShape(c, -(-height // s), -(-width // s)) for c, s in zip(tap_channels, tap_strides)]


class CflowDecoders(nn.Module):
    """One conditional flow per scale; the condition is the 2D positional encoding of the map."""

    def __init__(self, shapes: list[FeatureShape], config: FlowConfig):
        super().__init__()
        self.shapes = list(shapes)
        self.config = config
        self.flows = nn.ModuleList(ConditionalFlow(shape.channels, config, seed=i) for i, shape in enumerate(shapes))
        for i, shape in enumerate(shapes):
            encoding = torch.from_numpy(positional_encoding_2d(config.condition_channels, shape.height, shape.width))
            self.register_buffer(f"position_encoding_{i}", encoding, persistent=False)

    def position_encoding(self, scale: int) -> torch.Tensor:
        return getattr(self, f"position_encoding_{scale}")

    def log_likelihood_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feature maps (B, C, h, w) -> per-position log-likelihood per channel (B, h, w), float32."""
        maps = []
        for i, (flow, feature) in enumerate(zip(self.flows, features)):
            batch, _, height, width = feature.shape
            fibers = feature.flatten(2).transpose(1, 2)  # (B, positions, C)
            terms = flow.cond_terms(self.position_encoding(i))
            maps.append(flow.log_likelihood_per_dim(fibers, terms).reshape(batch, height, width))
        return maps


class FoldedDecoders(nn.Module):
    """Inference form of the decoders: the positional term of every coupling subnet's first
    layer is a constant of the position, so it is computed once here and stored as a bias map.
    That is exact, and it removes the condition channels from every per-frame matmul.

    `compute_dtype` runs the coupling subnets (the matmuls) in that precision; the flow state,
    the affine updates and the log-likelihood reduction stay float32 whatever it is.
    """

    def __init__(self, decoders: CflowDecoders, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.flows = decoders.flows
        self.shapes = decoders.shapes
        self.compute_dtype = compute_dtype
        with torch.no_grad():
            for i, flow in enumerate(decoders.flows):
                terms = flow.cond_terms(decoders.position_encoding(i))
                for j, term in enumerate(terms):
                    self.register_buffer(f"cond_bias_{i}_{j}", term.detach().clone().to(compute_dtype))
        if compute_dtype != torch.float32:
            self.flows = _cast_copy(decoders.flows, compute_dtype)

    def cond_biases(self, scale: int) -> list[torch.Tensor]:
        return [getattr(self, f"cond_bias_{scale}_{j}") for j in range(len(self.flows[scale].blocks))]

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = []
        for i, (flow, feature) in enumerate(zip(self.flows, features)):
            batch, _, height, width = feature.shape
            fibers = feature.float().flatten(2).transpose(1, 2)
            z, log_det = flow(fibers, self.cond_biases(i))
            maps.append(gaussian_log_likelihood_per_dim(z, log_det).reshape(batch, height, width))
        return tuple(maps)


def _cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy with only the subnet layers in `dtype` (the float32 training weights stay
    untouched, and so do the standardisation and global affine of the state)."""
    copied = copy.deepcopy(module)
    for layer in copied.modules():
        if isinstance(layer, nn.Linear):
            layer.to(dtype)
    return copied


class PreprocessedEncoder(nn.Module):
    """The encoder with its input normalisation inside the graph: uint8 RGB NHWC in, so the
    caller only resizes (one OpenCV call) and every backend sees identical arithmetic."""

    def __init__(self, encoder: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.encoder = encoder
        self.compute_dtype = torch.float32
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def with_compute_dtype(self, dtype: torch.dtype) -> "PreprocessedEncoder":
        """A copy whose convolutions run in `dtype` (features come out in it); the uint8 to
        normalised-float step stays float32, so the half graph sees the same rounded input."""
        copied = copy.deepcopy(self)
        copied.encoder = copied.encoder.to(dtype)
        copied.compute_dtype = dtype
        return copied

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return tuple(self.encoder(x.to(self.compute_dtype)))
