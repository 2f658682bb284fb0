"""ONNX-level rewrites applied before a converter reads the file: exact in ONNX's semantics, each aimed at a
pattern a converter mistranslates, and applied only where that pattern is present.

Scalar `Range` bounds. PyTorch's dynamo exporter writes a size taken from the symbolic batch axis (ConvNeXt's
and Swin's stochastic-depth `Range` over the batch) as `Squeeze(Shape(x, start=k, end=k+1))`. onnx2tf (1.28,
1.29) converts Shape's `start`/`end` as if they were axes, moving them from NCHW to NHWC: `end=1` becomes 3,
so the slice holds three sizes, the Squeeze cannot make a scalar of it, and `tf.range` refuses its limit
("Shape must be rank 0 but is rank 1"). `Gather(Shape(x), k)` with a scalar index is the same size as a scalar,
in every reading of the layout for the batch axis (k = 0 in both NCHW and NHWC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class OnnxRewrite:
    """What prepare() changed in the ONNX graph: counts per rewrite, and the nodes rewritten."""

    range_scalar_bounds: int = 0
    nodes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.range_scalar_bounds > 0

    def summary(self) -> str:
        if not self.changed:
            return "no ONNX rewrite applied (no pattern present)"
        nodes = ", ".join(self.nodes)
        return f"{self.range_scalar_bounds} Range bound(s) Squeeze(Shape[k:k+1]) → Gather(Shape, k) ({nodes})"


def _attribute(node: onnx.NodeProto, name: str) -> int | None:
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else None


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _one_size_slice(
    graph: onnx.GraphProto, producers: dict, name: str
) -> tuple[onnx.NodeProto, onnx.NodeProto, int] | None:
    """(Squeeze, Shape, k) when `name` is Squeeze(Shape(x, start=k, end=k+1)) squeezing its only axis, else None."""
    squeeze = producers.get(name)
    if squeeze is None or squeeze.op_type != "Squeeze" or squeeze.domain not in ("", "ai.onnx"):
        return None
    axes = _attribute(squeeze, "axes")  # before opset 13
    if len(squeeze.input) > 1 and squeeze.input[1]:
        axes = _constant(graph, squeeze.input[1])
        if axes is None:
            return None
        axes = axes.tolist()
    if axes is not None and list(np.atleast_1d(axes)) not in ([0], [-1]):
        return None
    shape = producers.get(squeeze.input[0])
    if shape is None or shape.op_type != "Shape":
        return None
    start, end = _attribute(shape, "start"), _attribute(shape, "end")
    if start is None or end is None or start < 0 or end != start + 1:
        return None  # a negative start needs the rank to say which axis; a longer slice is not one size
    return squeeze, shape, start


def _fresh(taken: set[str], base: str) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _matches(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, int, tuple]]:
    producers = {out: node for node in graph.node for out in node.output}
    return [
        (node, position, found)
        for node in graph.node
        if node.op_type == "Range" and node.domain in ("", "ai.onnx")
        for position, name in enumerate(node.input)
        if (found := _one_size_slice(graph, producers, name)) is not None
    ]


def scalar_range_bounds(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OnnxRewrite]:
    """A copy of `model` in which each Range bound of the form Squeeze(Shape(x, start=k, end=k+1)) is
    Gather(Shape(x), k) with a scalar index; `model` itself, untouched, when no Range has such a bound."""
    rewrite = OnnxRewrite()
    if not _matches(model.graph):
        return model, rewrite
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    taken = {out for node in graph.node for out in node.output} | {i.name for i in graph.initializer}
    taken |= {i.name for i in graph.input} | {n.name for n in graph.node}
    replacements: dict[str, str] = {}  # Squeeze output → scalar Gather output
    inserted: dict[int, list[onnx.NodeProto]] = {}  # by id of the Range they feed, placed before it
    replaced: set[str] = set()  # outputs of the matched Squeeze and Shape nodes
    for node, position, (squeeze, shape, k) in _matches(graph):
        old = node.input[position]
        if old not in replacements:
            index = _fresh(taken, f"{squeeze.name or old}_index")
            graph.initializer.append(numpy_helper.from_array(np.array(k, dtype=np.int64), index))
            full = _fresh(taken, f"{shape.name or old}_full")
            scalar = _fresh(taken, f"{old}_scalar")
            inserted.setdefault(id(node), []).extend(
                [
                    helper.make_node("Shape", [shape.input[0]], [full], name=_fresh(taken, f"{full}_node")),
                    helper.make_node("Gather", [full, index], [scalar], axis=0, name=_fresh(taken, f"{scalar}_node")),
                ]
            )
            replacements[old] = scalar
            replaced |= {squeeze.output[0], shape.output[0]}
        node.input[position] = replacements[old]
        rewrite.range_scalar_bounds += 1
        rewrite.nodes.append(node.name or node.output[0])
    ordered = []
    for node in graph.node:
        ordered.extend(inserted.get(id(node), []))
        ordered.append(node)
    # The matched Squeeze and sliced Shape stay only if something else still reads them.
    while True:
        read = {name for node in ordered for name in node.input} | {o.name for o in graph.output}
        dead = {id(n) for n in ordered if n.output[0] in replaced and n.output[0] not in read}
        if not dead:
            break
        ordered = [n for n in ordered if id(n) not in dead]
    kept = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(kept, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(kept)
    onnx.checker.check_model(result)
    return result, rewrite


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OnnxRewrite]:
    """Every ONNX-level rewrite, each where its pattern is present: the model to convert and what changed."""
    return scalar_range_bounds(model)
