"""TensorRT runtime: the encoder and flow plans on one CUDA stream, features kept on the device.

CUDA memory and streams come from NVIDIA's cuda-python (`cuda.bindings.runtime`), the package
NVIDIA's own TensorRT Python samples use since 8.6: wheels for x86-64 and aarch64 (Jetson)
that install without a compiler, where pycuda has to be built against the local driver.

As NVIDIA's samples do: tensors looked up by name, pinned host buffers and device buffers
allocated once for the largest batch, inputs copied in with np.copyto, execute_async_v3 on the
backend's own stream, every CUDA status checked, everything freed explicitly in close().
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from engines.backends.base import BackendError, ModelOutput
from engines.bundle import Bundle
from engines.tensorrt_build import DEFAULT_MAX_BATCH, build_plans, current_target, import_tensorrt
from engines.tensorrt_plans import PlansMissing, engines_directory, rebuild_hint, select_plans

log = logging.getLogger("engines.tensorrt")


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError:
            raise BackendError("backend 'tensorrt' needs cuda-python: pip install 'edge-inspect[gpu]'") from None
    return cudart


class _Cuda:
    """The few CUDA runtime calls used here, each status checked."""

    def __init__(self):
        self.rt = _cudart()

    def call(self, result):
        status, *values = result if isinstance(result, tuple) else (result,)
        if status != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(status)[1]
            raise BackendError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else values

    def device(self, nbytes: int) -> int:
        return int(self.call(self.rt.cudaMalloc(nbytes)))

    def pinned(self, shape: tuple[int, ...], dtype) -> tuple[int, np.ndarray]:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pointer = int(self.call(self.rt.cudaMallocHost(nbytes)))
        raw = (ctypes.c_byte * nbytes).from_address(pointer)
        return pointer, np.frombuffer(raw, dtype=dtype).reshape(shape)

    def copy(self, destination: int, source: int, nbytes: int, kind, stream) -> None:
        self.call(self.rt.cudaMemcpyAsync(destination, source, nbytes, kind, stream))


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, bundle: Bundle, precision: str = "fp16", build_missing: bool = True, state_dir: Path | None = None, notifier=None):
        target, _ = current_target(precision)  # probes the GPU before TensorRT is touched
        trt = import_tensorrt()
        self.cuda = _Cuda()
        directory = engines_directory(bundle, state_dir)
        try:
            plans = select_plans(bundle, target, directory)
        except PlansMissing as missing:
            if not build_missing:
                raise BackendError(f"{missing}; {rebuild_hint(bundle, precision)}") from None
            log.warning("%s: building them now (minutes, once per machine)", missing)
            if notifier is not None:
                notifier.extend_timeout(30 * 60)  # systemd: building is start-up work, not a hang
            build_plans(bundle, precision, directory=directory, log=log.info)
            plans = select_plans(bundle, target, directory)
        self.trt_logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.trt_logger)
        self.engines = {}
        for graph, path in plans.items():
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise BackendError(f"{path}: TensorRT {trt.__version__} cannot load this plan; {rebuild_hint(bundle, precision)}")
            self.engines[graph] = engine
        self.contexts = {graph: engine.create_execution_context() for graph, engine in self.engines.items()}
        self.stream = self.cuda.call(self.cuda.rt.cudaStreamCreate())
        self.max_batch = DEFAULT_MAX_BATCH
        self.device_buffers: dict[str, int] = {}
        self.host_buffers: dict[str, tuple[int, np.ndarray]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        # One set of buffers, contexts and stream: stations that share a bundle share this
        # backend, and their calls must not interleave.
        self.lock = threading.Lock()
        self._allocate(trt)

    def _allocate(self, trt) -> None:
        # Encoder outputs and flow inputs share names (features_i): one device buffer each, so
        # the features never leave the GPU.
        for graph, engine in self.engines.items():
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                item = tuple(engine.get_tensor_shape(name))[1:]
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                self.shapes[name] = item
                if name not in self.device_buffers:
                    self.device_buffers[name] = self.cuda.device(self.max_batch * int(np.prod(item)) * dtype.itemsize)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                if (graph == "encoder" and is_input) or (graph == "flows" and not is_input):
                    self.host_buffers[name] = self.cuda.pinned((self.max_batch, *item), dtype)
        # Every output of the flows engine: log-likelihood maps, and the part and patch distances where the bundle has them.
        self.outputs = [n for n in self.host_buffers if n != "image"]

    def infer(self, images: np.ndarray) -> ModelOutput:
        results: list[list[np.ndarray]] = []
        with self.lock:
            for start in range(0, len(images), self.max_batch):
                results.append(self._run(images[start : start + self.max_batch]))
        outputs = [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]
        return ModelOutput.from_graph_outputs(self.outputs, outputs)

    def _run(self, images: np.ndarray) -> list[np.ndarray]:
        rt, batch = self.cuda.rt, len(images)
        pointer, host = self.host_buffers["image"]
        np.copyto(host[:batch], images, casting="no")
        self.cuda.copy(self.device_buffers["image"], pointer, host[:batch].nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)
        for graph in ("encoder", "flows"):
            engine, context = self.engines[graph], self.contexts[graph]
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == self._input_mode():
                    context.set_input_shape(name, (batch, *self.shapes[name]))
                context.set_tensor_address(name, self.device_buffers[name])
            if not context.execute_async_v3(int(self.stream)):
                raise BackendError(f"TensorRT {graph} execution failed")
        outputs = []
        for name in self.outputs:
            pointer, host = self.host_buffers[name]
            self.cuda.copy(pointer, self.device_buffers[name], host[:batch].nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)
            outputs.append(host)
        self.cuda.call(rt.cudaStreamSynchronize(self.stream))
        return [host[:batch].copy() for host in outputs]

    def _input_mode(self):
        return import_tensorrt().TensorIOMode.INPUT

    def close(self) -> None:
        if not hasattr(self, "lock"):
            return  # failed before anything was allocated
        with self.lock:
            rt = self.cuda.rt
            for pointer in self.device_buffers.values():
                self.cuda.call(rt.cudaFree(pointer))
            for pointer, _ in self.host_buffers.values():
                self.cuda.call(rt.cudaFreeHost(pointer))
            self.device_buffers, self.host_buffers = {}, {}
            if getattr(self, "stream", None) is not None:
                self.cuda.call(rt.cudaStreamDestroy(self.stream))
                self.stream = None
            self.contexts, self.engines = {}, {}
