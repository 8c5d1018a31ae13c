"""Fold the exporter's zero Pad nodes into the convolutions they feed.

EfficientNet's stride-2 convolutions pad TensorFlow's way, one pixel more at the bottom and
right than at the top and left. torch's Conv2d pads symmetrically only, so the model pads
explicitly and the exporter writes a Pad node before each of them. ONNX's Conv takes separate
begin and end pads, and ONNX Runtime does not merge the two itself: each Pad copied the whole
map and forced its layout out of and back into the blocked format the convolutions run in
(about 2.5 of 17 ms of the encoder on one core, bench/README.md). TensorRT's parser takes
asymmetric convolution pads as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator


def fold_pads_into_convs(path: Path) -> int:
    """Rewrite the ONNX file at `path` in place; returns how many Pad nodes were folded.

    A Pad is folded only where the result is the same arithmetic: constant mode with a zero
    fill, no padding of the batch or channel axes, pads known when the graph is built, and its
    output read by nothing but one Conv with explicit pads."""
    model = onnx.load(str(path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    folded = []
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        conv = _sole_conv_reader(pad, readers, graph_outputs)
        spatial = _zero_spatial_pads(pad, graph, producers, model.opset_import) if conv is not None else None
        if conv is None or spatial is None:
            continue
        rank = len(spatial) // 2
        conv_pads = _attribute(conv, "pads") or [0] * (2 * rank)
        merged = [a + b for a, b in zip(conv_pads, spatial)]
        _set_attribute(conv, "pads", merged)
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    if folded:
        _drop_unread_nodes(graph)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return len(folded)


def _sole_conv_reader(pad: onnx.NodeProto, readers, graph_outputs: set[str]) -> onnx.NodeProto | None:
    out = pad.output[0]
    reading = readers.get(out, [])
    if out in graph_outputs or len(reading) != 1:
        return None
    conv = reading[0]
    if conv.op_type != "Conv" or conv.input[0] != out:
        return None
    auto_pad = _attribute(conv, "auto_pad")
    if auto_pad not in (None, b"NOTSET", "NOTSET"):
        return None
    return conv


def _zero_spatial_pads(pad: onnx.NodeProto, graph: onnx.GraphProto, producers, opsets) -> list[int] | None:
    """The Pad's spatial pads in Conv's order (begins, then ends), or None if it cannot fold."""
    mode = _attribute(pad, "mode")
    if mode not in (None, b"constant", "constant"):
        return None
    if len(pad.input) > 3 and pad.input[3]:
        return None  # an `axes` input: not what the exporter writes, not worth handling
    if len(pad.input) > 2 and pad.input[2]:
        fill = _constant_value(pad.input[2], graph, producers, opsets)
        if fill is None or np.any(fill != 0):
            return None
    value = _constant_value(pad.input[1], graph, producers, opsets)
    if value is None:
        return None
    pads = [int(p) for p in value.reshape(-1)]
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if rank < 3 or any(p != 0 for p in begins[:2] + ends[:2]) or any(p < 0 for p in pads):
        return None
    return begins[2:] + ends[2:]


def _constant_value(name: str, graph: onnx.GraphProto, producers, opsets) -> np.ndarray | None:
    """The value of `name` if it depends on initializers and Constant nodes only."""
    initializers = {i.name: i for i in graph.initializer}
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    chain, needed, pending = [], set(), [name]
    while pending:
        current = pending.pop()
        if current in initializers:
            needed.add(current)
            continue
        node = producers.get(current)
        if node is None:
            return None  # a graph input: known only when a frame arrives
        if node not in chain:
            chain.append(node)
            pending.extend(i for i in node.input if i)
    order = [n for n in graph.node if n in chain]
    sub = helper.make_graph(
        order,
        "pads",
        [],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
        [initializers[n] for n in sorted(needed)],
    )
    sub_model = helper.make_model(sub, opset_imports=list(opsets))
    try:
        outputs = cast("list[np.ndarray]", ReferenceEvaluator(sub_model).run(None, {}))
    except Exception:  # an op the reference evaluator lacks: leave that Pad as it is, never fail an export
        return None
    return np.asarray(outputs[0])


def _drop_unread_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes (the folded pads' constant arithmetic) whose outputs nothing reads."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unread = [n for n in graph.node if not any(out in read for out in n.output)]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for initializer in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(initializer)


def _attribute(node: onnx.NodeProto, name: str):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(name, value))
