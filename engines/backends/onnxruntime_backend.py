"""ONNX Runtime on the CPU: the default backend of a line PC without an NVIDIA GPU."""

from __future__ import annotations

import numpy as np

from engines.backends.base import BackendError, ModelOutput
from engines.bundle import ENCODER_ONNX, FLOWS_ONNX, Bundle


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # 0 lets ONNX Runtime use every core; a line PC running other services sets it lower.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads sleep instead of spinning. The encoder and the flows each have a
        # pool, and the daemon's capture and publish threads share the same cores: spinning
        # workers took CPU from all of them. Lite0 256 end to end, 2 cores, two runs each:
        # 76 and 55 frames/s spinning, 83 and 87 not (bench/README.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(bundle.file(ENCODER_ONNX)), options, providers=providers)
        self.flows = ort.InferenceSession(str(bundle.file(FLOWS_ONNX)), options, providers=providers)
        self.feature_names = [o.name for o in self.encoder.get_outputs()]
        self.flow_inputs = [i.name for i in self.flows.get_inputs()]
        self.flow_outputs = [o.name for o in self.flows.get_outputs()]

    def infer(self, images: np.ndarray) -> ModelOutput:
        features = self.encoder.run(self.feature_names, {"image": np.ascontiguousarray(images, dtype=np.uint8)})
        outputs = self.flows.run(self.flow_outputs, dict(zip(self.flow_inputs, features)))
        return ModelOutput.from_graph_outputs(self.flow_outputs, outputs)

    def close(self) -> None:
        self.encoder = self.flows = None
