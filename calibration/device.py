"""Where calibration trains: `--device auto|cpu|cuda`. Only the encoding of the good parts and the
flows' training run there; the trained model comes back to the CPU before the scoring constants,
the threshold and the exported graphs are computed, so a bundle is the same whichever device
trained it (and its graphs are checked against the CPU model as always)."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """The device asked for cannot be used; str() says why and what to do."""


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise DeviceError(f"--device {name}: expected one of {', '.join(DEVICES)}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "auto":
        return torch.device("cpu")
    built = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU or driver is visible"
    raise DeviceError(f"--device cuda: torch {torch.__version__} is {built}; use --device cpu (or auto), or install the CUDA build of torch on a machine with an NVIDIA GPU")
