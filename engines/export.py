"""ONNX graphs of the encoder and the flows: the exact input of every inference backend."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from engines.cflow import CflowDecoders, FeatureShape, FlowsGraph, FoldedDecoders, PreprocessedEncoder
from engines.nearest_patch import NearestPatch
from engines.onnx_pads import fold_pads_into_convs
from engines.part_appearance import PartAppearance

OPSET = 17


def feature_names(count: int) -> list[str]:
    return [f"features_{i}" for i in range(count)]


def export_encoder(encoder: PreprocessedEncoder, input_size: tuple[int, int], path: Path, scales: int) -> None:
    """uint8 RGB (N, H, W, 3) -> feature maps; the batch axis is dynamic, the image size fixed."""
    example = torch.zeros((1, input_size[0], input_size[1], 3), dtype=torch.uint8)
    outputs = feature_names(scales)
    _export(encoder, (example,), path, ["image"], outputs, {name: {0: "batch"} for name in ["image", *outputs]})


def export_flows(
    decoders: CflowDecoders,
    path: Path,
    compute_dtype: torch.dtype = torch.float32,
    part_appearance: PartAppearance | None = None,
    tap_shapes: list[FeatureShape] | None = None,
    flow_taps: tuple[int, ...] | None = None,
    nearest_patch: NearestPatch | None = None,
) -> None:
    """Every encoder tap's feature maps (`tap_shapes`; default: one per flow) -> float32
    log-likelihood per channel at every position of each flow's scale (`flow_taps`), with a
    part appearance model the part's distance from the good parts, and with a patch bank each
    stride-8 position's distance to its nearest good patch (both float32 too)."""
    graph = FlowsGraph(FoldedDecoders(decoders, compute_dtype), part_appearance, flow_taps, nearest_patch).eval()
    shapes = decoders.shapes if tap_shapes is None else tap_shapes
    examples = tuple(torch.zeros((1, s.channels, s.height, s.width), dtype=compute_dtype) for s in shapes)
    inputs, outputs = feature_names(len(examples)), graph.output_names
    _export(graph, examples, path, inputs, outputs, {name: {0: "batch"} for name in [*inputs, *outputs]})


def export_half_graphs(
    encoder: PreprocessedEncoder,
    decoders: CflowDecoders,
    input_size: tuple[int, int],
    encoder_path: Path,
    flows_path: Path,
    part_appearance: PartAppearance | None = None,
    tap_shapes: list[FeatureShape] | None = None,
    flow_taps: tuple[int, ...] | None = None,
    nearest_patch: NearestPatch | None = None,
) -> None:
    """The mixed-precision pair a GPU engine is built from: convolutions and couplings in
    float16 with explicit casts, the input normalisation, every log-likelihood reduction and
    the part appearance model and the nearest-patch distances in float32. Strongly typed TensorRT builds exactly these types;
    the weakly typed build constrains each layer to the type declared here. The features
    between the two graphs are float16, so they stay half on the device."""
    taps = len(decoders.shapes if tap_shapes is None else tap_shapes)
    export_encoder(encoder.with_compute_dtype(torch.float16).eval(), input_size, encoder_path, taps)
    export_flows(decoders, flows_path, torch.float16, part_appearance, tap_shapes, flow_taps, nearest_patch)


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    with warnings.catch_warnings():
        # The tracer warns about shape arithmetic that is constant for a fixed input size.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    fold_pads_into_convs(path)
