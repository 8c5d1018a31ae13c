"""Registry of frozen ImageNet encoders that CFLOW-AD can sit on.

Each entry yields a module mapping a normalised float NCHW RGB batch to feature maps at strides
8, 16 and 32 (a station may choose a subset, or add 4), plus what the bundle must record to
reproduce it (weights' sha256,
channel counts, input normalisation in pixel units).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from engines.bundle import sha256_file

if TYPE_CHECKING:
    from torchvision.models import ResNet


class EncoderError(RuntimeError):
    """An encoder cannot be built here; the message says what to install or pass."""


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    tap_channels: tuple[int, ...]
    tap_strides: tuple[int, ...]
    mean: tuple[float, float, float]  # pixel units, RGB
    std: tuple[float, float, float]
    weights_sha256: str
    weights_path: str


# TF-Lite preprocessing of the EfficientNet-Lite checkpoints: (x - 127) / 128.
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

LITE_ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
TORCHVISION_ENCODERS = ("resnet18", "wide_resnet50_2")
ENCODER_NAMES = LITE_ENCODERS + TORCHVISION_ENCODERS
TAP_STRIDES = (8, 16, 32)  # the paper's scales, the default
OPTIONAL_STRIDES = (4, 8, 16, 32)  # what a station may choose from


def check_tap_strides(strides: tuple[int, ...]) -> tuple[int, ...]:
    """The scales CFLOW-AD models: a non-empty, increasing subset of 4, 8, 16 and 32."""
    strides = tuple(int(s) for s in strides)
    if not strides or any(s not in OPTIONAL_STRIDES for s in strides) or list(strides) != sorted(set(strides)):
        raise EncoderError(f"feature strides {','.join(map(str, strides)) or '(none)'}: choose an increasing subset of 4,8,16,32, e.g. 8,16")
    return strides


def load_encoder(name: str, weights_path: str | None = None, tap_channels: tuple[int, ...] | None = None, tap_strides: tuple[int, ...] = TAP_STRIDES) -> tuple[nn.Module, EncoderInfo]:
    """Build a frozen, eval-mode encoder by name, giving feature maps at `tap_strides`.
    `tap_channels`: rebuild the taps a bundle recorded (None: this version's default). Raises
    EncoderError with a remedy."""
    tap_strides = check_tap_strides(tap_strides)
    if name in LITE_ENCODERS:
        module, info = _load_lite(name, weights_path, tap_channels, tap_strides)
    elif name in TORCHVISION_ENCODERS:
        module, info = _load_torchvision_resnet(name, weights_path, tap_strides)
    else:
        raise EncoderError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")
    if tap_channels is not None and tuple(tap_channels) != info.tap_channels:
        raise EncoderError(f"{name} gives feature channels {info.tap_channels}, the bundle records {tuple(tap_channels)}; re-calibrate")
    return module, info


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _load_lite(name: str, weights_path: str | None, tap_channels: tuple[int, ...] | None, tap_strides: tuple[int, ...]) -> tuple[nn.Module, EncoderInfo]:
    from engines import efficientnet_lite

    variant = name.split("-")[1]
    stages = efficientnet_lite.default_tap_stages(tap_strides)
    if tap_channels is not None:
        try:
            stages = efficientnet_lite.tap_stages_for(variant, tuple(tap_channels), tap_strides)
        except ValueError as error:
            raise EncoderError(f"{error}; the bundle was not made for {name}: re-calibrate") from None
    if weights_path is None:
        model, weights = efficientnet_lite.load_pretrained(variant, stages)
        path, sha = weights.path, weights.sha256
    else:
        model = efficientnet_lite.EfficientNetLite(variant, stages)
        state = _load_state_dict(weights_path)
        state = {k: v for k, v in state.items() if k.startswith(("_conv_stem", "_bn0", "_blocks."))}
        model.load_state_dict(state, strict=True)
        path, sha = str(weights_path), sha256_file(Path(weights_path))
    info = EncoderInfo(name, tuple(model.tap_channels), tuple(model.tap_strides), _LITE_MEAN, _LITE_STD, sha, path)
    return _freeze(model), info


def _load_state_dict(path: str | os.PathLike) -> dict:
    if not Path(path).is_file():
        raise EncoderError(f"encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad file
        raise EncoderError(f"cannot read encoder weights {path}: {error}") from None
    if not isinstance(state, dict):
        raise EncoderError(f"encoder weights {path} are not a state dict")
    return state


class _ResNetTaps(nn.Module):
    """layer1 to layer4 end at strides 4, 8, 16 and 32; layers past the deepest tap are left
    out."""

    def __init__(self, resnet: ResNet, tap_strides: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        layers = [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
        self.layers = nn.ModuleList(layers[: OPTIONAL_STRIDES.index(tap_strides[-1]) + 1])
        self.taps = tuple(OPTIONAL_STRIDES.index(s) for s in tap_strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        taps = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.taps:
                taps.append(x)
        return taps


def _load_torchvision_resnet(name: str, weights_path: str | None, tap_strides: tuple[int, ...]) -> tuple[nn.Module, EncoderInfo]:
    try:
        import torchvision.models as models
    except Exception as error:  # a CUDA-only torchvision wheel fails with various errors
        raise EncoderError(
            f"encoder {name!r} needs torchvision, which does not import here ({type(error).__name__}: {error}); "
            f"install a torchvision build matching torch {torch.__version__}, or use one of {', '.join(LITE_ENCODERS)}"
        ) from None
    builder = getattr(models, name)
    if weights_path is None:
        weights_enum = {"resnet18": models.ResNet18_Weights, "wide_resnet50_2": models.Wide_ResNet50_2_Weights}[name]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.IMAGENET1K_V1.url).name
        if not cached.is_file():
            raise EncoderError(f"no ImageNet weights for {name!r} in torchvision's cache ({cached}); download them on a connected machine and pass --encoder-weights FILE")
        weights_path = str(cached)
    model = builder(weights=None)
    model.load_state_dict(_load_state_dict(weights_path), strict=True)
    channels: tuple[int, ...] = {"resnet18": (64, 128, 256, 512), "wide_resnet50_2": (256, 512, 1024, 2048)}[name]
    channels = tuple(channels[OPTIONAL_STRIDES.index(s)] for s in tap_strides)
    info = EncoderInfo(name, channels, tap_strides, _IMAGENET_MEAN, _IMAGENET_STD, sha256_file(Path(weights_path)), str(weights_path))
    return _freeze(_ResNetTaps(model, tap_strides)), info
