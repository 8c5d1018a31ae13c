"""Backends by name. Each is imported only when chosen, so the daemon never pulls in torch
unless the torch backend is asked for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args

from engines.backends.base import BackendError, InferenceBackend, ModelOutput
from engines.bundle import Bundle

# The one list of backend names: the daemon's config accepts exactly these (edge/config.py).
BackendName = Literal["auto", "onnxruntime", "torch", "tensorrt"]
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
log = logging.getLogger("engines.backends")


def open_backend(name: str, bundle: Bundle, threads: int = 0, state_dir: Path | None = None, notifier=None) -> InferenceBackend:
    """`auto`: TensorRT where it and a GPU are present, else ONNX Runtime on the CPU."""
    name = resolve_backend_name(name)
    if name == "onnxruntime":
        from engines.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, threads=threads)
    if name == "torch":
        from engines.backends.torch_backend import TorchBackend

        return TorchBackend(bundle, threads=threads)
    if name == "tensorrt":
        from engines.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle, state_dir=state_dir, notifier=notifier)
    raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKEND_NAMES)}")


def resolve_backend_name(name: str) -> str:
    """The backend `name` stands for on this machine (`auto` probes the GPU; others are as given)."""
    return _auto_choice() if name == "auto" else name


def _auto_choice() -> str:
    from engines.gpu_probe import probe_gpu

    gpu = probe_gpu()  # before any TensorRT import: without a driver the lean runtime crashes later
    if not gpu.available:
        log.info("backend auto: ONNX Runtime on the CPU (%s)", gpu.reason)
        return "onnxruntime"
    try:
        import tensorrt  # noqa: F401

        from engines.backends.tensorrt_backend import _cudart

        _cudart()
    except (ImportError, BackendError) as error:
        log.warning(
            "backend auto: GPU %s found but TensorRT or cuda-python is missing (%s); using ONNX Runtime on the CPU. "
            "Install TensorRT (pip install 'edge-inspect[gpu]'), or set backend: torch where torch with CUDA is installed",
            gpu.reason,
            error,
        )
        return "onnxruntime"
    log.info("backend auto: TensorRT on %s", gpu.reason)
    return "tensorrt"


__all__ = ["BACKEND_NAMES", "BackendName", "BackendError", "InferenceBackend", "ModelOutput", "open_backend", "resolve_backend_name"]
