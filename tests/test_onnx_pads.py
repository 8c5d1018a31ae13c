"""The exported encoder without Pad nodes computes what the torch encoder computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from engines.cflow import PreprocessedEncoder
from engines.encoders import load_encoder
from engines.export import export_encoder
from engines.onnx_pads import fold_pads_into_convs
from tests.conftest import METAL_PLATE


def _real_images(size_hw: tuple[int, int], count: int) -> np.ndarray:
    import cv2

    files = sorted((METAL_PLATE / "train" / "good").glob("*.png"))[:count]
    assert files, f"no MPDD images under {METAL_PLATE}"
    images = []
    for file in files:
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        images.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA))
    return np.stack(images)


def _op_types(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


# Even sides pad one more at the end than at the start, odd sides the same at both.
@pytest.mark.parametrize("size_hw", [(256, 256), (97, 130)])
def test_exported_encoder_has_no_pad_and_matches_torch(tmp_path, size_hw):
    module, info = load_encoder("efficientnet-lite0")
    encoder = PreprocessedEncoder(module, info.mean, info.std).eval()
    path = tmp_path / "encoder.onnx"
    export_encoder(encoder, size_hw, path, len(info.tap_channels))

    ops = _op_types(path)
    assert "Pad" not in ops
    images = _real_images(size_hw, 2)
    onnx_maps = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})
    with torch.no_grad():
        torch_maps = encoder(torch.from_numpy(images))
    for onnx_map, torch_map in zip(onnx_maps, torch_maps):
        expected = torch_map.numpy()
        assert onnx_map.shape == expected.shape
        assert np.abs(onnx_map - expected).max() <= 1e-4 * np.abs(expected).max()


def _pad_conv_graph(path, mode: str, fill: float, second_reader: bool) -> None:
    """x (1, 2, 5, 6) -> Pad(0 0 0 0 / 0 0 1 1) -> Conv 3x3 stride 2 [-> also Relu]."""
    weight = numpy_helper.from_array(np.arange(2 * 2 * 9, dtype=np.float32).reshape(2, 2, 3, 3) / 10, "w")
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int64), "pads")
    value = numpy_helper.from_array(np.array(fill, dtype=np.float32), "fill")
    nodes = [
        helper.make_node("Pad", ["x", "pads", "fill"], ["padded"], mode=mode),
        helper.make_node("Conv", ["padded", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 3])]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["padded"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 2, 6, 7]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 6])], outputs, [weight, pads, value])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "mode, fill, second_reader, folds",
    [
        ("constant", 0.0, False, True),
        ("reflect", 0.0, False, False),  # reflection is not zero padding
        ("constant", 1.0, False, False),  # nor is a fill of one
        ("constant", 0.0, True, False),  # another reader needs the padded map itself
    ],
)
def test_only_a_zero_pad_read_by_one_conv_is_folded(tmp_path, mode, fill, second_reader, folds):
    path = tmp_path / "g.onnx"
    _pad_conv_graph(path, mode, fill, second_reader)
    x = np.random.default_rng(0).normal(size=(1, 2, 5, 6)).astype(np.float32)
    before = _run(path, x)

    assert fold_pads_into_convs(path) == int(folds)
    assert ("Pad" in _op_types(path)) is not folds
    np.testing.assert_allclose(_run(path, x), before, rtol=1e-6, atol=1e-6)


def test_pads_that_cannot_be_worked_out_when_the_graph_is_built_are_left_alone(tmp_path):
    """Pads computed from a graph input, or by an op only some runtime knows: the export goes on
    with that Pad in place instead of failing."""
    weight = numpy_helper.from_array(np.ones((1, 1, 3, 3), dtype=np.float32), "w")
    seed = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int64), "seed")
    nodes = [
        helper.make_node("Vendor", ["seed"], ["custom_pads"], domain="com.example"),
        helper.make_node("Pad", ["x", "custom_pads"], ["a"]),
        helper.make_node("Conv", ["a", "w"], ["y"], kernel_shape=[3, 3]),
        helper.make_node("Pad", ["x", "runtime_pads"], ["b"]),
        helper.make_node("Conv", ["b", "w"], ["z"], kernel_shape=[3, 3]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 6]), helper.make_tensor_value_info("runtime_pads", TensorProto.INT64, [8])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y", "z")]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [weight, seed])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]), str(path))

    assert fold_pads_into_convs(path) == 0
    assert _op_types(path).count("Pad") == 2
