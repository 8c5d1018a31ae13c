"""CFLOW-AD decoders over the encoder's scales, and the graphs that are exported from them."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from engines.bundle import LOG_LIKELIHOOD_PREFIX, PART_DISTANCE, PATCH_DISTANCE
from engines.flow import LOG_2PI, ConditionalFlow, CouplingBlock, FlowConfig, wide
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

    @property
    def conditional_flows(self) -> Sequence[ConditionalFlow]:
        """`flows` as what it holds (a type checker sees an nn.ModuleList yield plain Modules)."""
        return cast("Sequence[ConditionalFlow]", self.flows)

    def position_encoding(self, scale: int) -> torch.Tensor:
        return getattr(self, f"position_encoding_{scale}")

    def log_likelihood_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feature maps (B, C, h, w) -> per-position log-likelihood per channel (B, h, w), float32."""
        maps = []
        for i, (flow, feature) in enumerate(zip(self.conditional_flows, features)):
            batch, _, height, width = feature.shape
            fibers = feature.flatten(2).transpose(1, 2)  # (B, positions, C)
            terms = flow.cond_terms(self.position_encoding(i))
            maps.append(flow.log_likelihood_per_dim(fibers, terms).reshape(batch, height, width))
        return maps


class FoldedCoupling(nn.Module):
    """One coupling block in inference form, channels-first: (B, C, positions) in and out."""

    in_weight: torch.Tensor  # buffers, declared for the type checker
    in_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    permutation: torch.Tensor

    def __init__(self, block: CouplingBlock, cond_term: torch.Tensor, compute_dtype: torch.dtype):
        super().__init__()
        self.kept, self.changed, self.clamp = block.kept, block.changed, block.clamp
        out_weight = block.out.weight.detach().clone()
        out_bias = block.out.bias.detach().clone()
        out_weight[: block.changed] /= block.clamp  # the soft clamp's 1/clamp, folded
        out_bias[: block.changed] /= block.clamp
        self.register_buffer("in_weight", block.in_x.weight.detach().to(compute_dtype))  # (hidden, kept)
        self.register_buffer("in_bias", cond_term.detach().t().contiguous().to(compute_dtype))  # (hidden, positions)
        self.register_buffer("out_weight", out_weight.to(compute_dtype))  # (2 changed, hidden)
        self.register_buffer("out_bias", out_bias[:, None].to(compute_dtype))
        self.register_buffer("scale", torch.exp(block.global_log_scale.detach())[:, None])
        self.register_buffer("offset", block.global_offset.detach()[:, None].clone())
        self.register_buffer("permutation", block.permutation.clone())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (next state, the coupling's log-det per position; the global affine's is constant)."""
        kept, changed = z[:, : self.kept], z[:, self.kept :]
        hidden = torch.relu(torch.matmul(self.in_weight, kept.to(self.in_weight.dtype)) + self.in_bias)
        raw = (torch.matmul(self.out_weight, hidden) + self.out_bias).to(z.dtype)
        log_scale = self.clamp * torch.tanh(raw[:, : self.changed])
        changed = changed * torch.exp(log_scale) + raw[:, self.changed :]
        y = torch.cat([kept, changed], dim=1) * self.scale + self.offset
        return y[:, self.permutation], wide(log_scale).sum(dim=1)


class FoldedFlow(nn.Module):
    """One scale's flow in inference form: features (B, C, h, w) -> log-likelihood per channel."""

    mean: torch.Tensor  # buffers, declared for the type checker
    std: torch.Tensor

    def __init__(self, flow: ConditionalFlow, condition: torch.Tensor, compute_dtype: torch.dtype):
        super().__init__()
        with torch.no_grad():
            self.blocks = nn.ModuleList(FoldedCoupling(block, term, compute_dtype) for block, term in zip(flow.coupling_blocks, flow.cond_terms(condition)))
            self.register_buffer("mean", flow.input_mean.detach()[:, None].clone())
            self.register_buffer("std", flow.input_std.detach()[:, None].clone())
            # Every term of log p that does not depend on the frame: standardisation and global
            # affine log-dets, and the Gaussian's normaliser.
            channels = flow.channels
            log_det = -torch.log(flow.input_std.double()).sum() + sum(block.global_log_scale.double().sum() for block in flow.coupling_blocks)
            self.constant = float(log_det) - 0.5 * channels * LOG_2PI

    def latents(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, C, h, w) -> z (B, C, positions) and the couplings' log-det (B, positions)."""
        z = (feature.float().flatten(2) - self.mean) / self.std
        log_dets = []
        for block in self.blocks:
            z, log_det = block(z)
            log_dets.append(log_det)
        return z, sum(log_dets)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = feature.shape
        z, log_det = self.latents(feature)
        z32 = wide(z)
        log_p = -0.5 * (z32 * z32).sum(dim=1) + log_det + self.constant
        return (log_p / channels).reshape(batch, height, width)


class FoldedDecoders(nn.Module):
    """Inference form of the decoders, the same arithmetic rearranged for speed:

    - the positional term of every coupling subnet's first layer is a constant of the position,
      computed once and stored as a bias map: the condition channels leave every per-frame matmul;
    - the state is kept channels-first, (batch, channels, positions), as the encoder emits it:
      the fixed permutations and the kept/changed split then move whole rows of positions
      (a Gather on the last axis cost ONNX Runtime 7.5 of 28 ms per frame);
    - the soft clamp's 1/clamp is folded into the output layer's scale rows, and every
      frame-independent term of the log-density is one constant per scale.

    `compute_dtype` runs the coupling subnets (the matmuls) in that precision; the flow state,
    the affine updates and the log-likelihood reduction stay float32 whatever it is.
    """

    def __init__(self, decoders: CflowDecoders, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.shapes = decoders.shapes
        self.compute_dtype = compute_dtype
        self.flows = nn.ModuleList(FoldedFlow(flow, decoders.position_encoding(i), compute_dtype) for i, flow in enumerate(decoders.conditional_flows))

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flow(feature) for flow, feature in zip(self.flows, features))


class FlowsGraph(nn.Module):
    """What the flows graph computes: per-scale log-likelihood maps; where the bundle has a
    whole-part appearance model, each part's distance from the good parts (B,) float32; where
    it has a patch bank, each stride-8 position's distance to its nearest good patch (B, h, w)
    float32. `output_names` names them in order.

    It takes every encoder tap. `flow_taps` names those with a flow (default: all); the
    whole-part model pools them all, so a station that drops the stride-32 flow (its few
    positions are the least reliable likelihoods) keeps the coarse stage in its part score."""

    def __init__(self, folded: FoldedDecoders, part_appearance: nn.Module | None = None, flow_taps: tuple[int, ...] | None = None, nearest_patch: nn.Module | None = None):
        super().__init__()
        self.folded = folded
        self.part_appearance = part_appearance
        self.nearest_patch = nearest_patch
        self.flow_taps = tuple(range(len(folded.flows))) if flow_taps is None else tuple(flow_taps)

    @property
    def output_names(self) -> list[str]:
        names = [f"{LOG_LIKELIHOOD_PREFIX}{i}" for i in range(len(self.flow_taps))]
        if self.part_appearance is not None:
            names.append(PART_DISTANCE)
        if self.nearest_patch is not None:
            names.append(PATCH_DISTANCE)
        return names

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = tuple(self.folded(*(features[i] for i in self.flow_taps)))
        if self.part_appearance is not None:
            outputs = (*outputs, self.part_appearance(features))
        if self.nearest_patch is not None:
            outputs = (*outputs, self.nearest_patch(features))
        return outputs


class PreprocessedEncoder(nn.Module):
    """The encoder with its input normalisation inside the graph: uint8 RGB NHWC in, so the
    caller only resizes (one OpenCV call) and every backend sees identical arithmetic.

    feature_pooling > 1 averages each feature map over a k x k neighbourhood (stride 1, same
    size), so every position describes its surroundings too: it helps large, faint defects and
    image-level detection and costs localisation of small ones (bench/README.md)."""

    mean: torch.Tensor  # buffers, declared for the type checker
    std: torch.Tensor

    def __init__(self, encoder: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float], feature_pooling: int = 1):
        super().__init__()
        self.encoder = encoder
        self.feature_pooling = feature_pooling
        self.compute_dtype = torch.float32
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def with_compute_dtype(self, dtype: torch.dtype) -> PreprocessedEncoder:
        """A copy whose convolutions run in `dtype` (features come out in it); the uint8 to
        normalised-float step stays float32, so the half graph sees the same rounded input."""
        copied = copy.deepcopy(self)
        copied.encoder = copied.encoder.to(dtype)
        copied.compute_dtype = dtype
        return copied

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        maps = tuple(self.encoder(x.to(self.compute_dtype)))
        if self.feature_pooling > 1:
            k = self.feature_pooling
            # Border positions average only what exists (no zero padding pulled in).
            maps = tuple(F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False) for m in maps)
        return maps
