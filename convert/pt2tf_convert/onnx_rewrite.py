"""ONNX-level rewrites applied before a converter reads the file: exact in ONNX's semantics, each aimed at a
pattern a converter mistranslates, and applied only where that pattern is present.

Scalar `Range` bounds. PyTorch's dynamo exporter writes a size taken from the symbolic batch axis (ConvNeXt's
and Swin's stochastic-depth `Range` over the batch) as `Squeeze(Shape(x, start=k, end=k+1))`. onnx2tf (1.28,
1.29) converts Shape's `start`/`end` as if they were axes, moving them from NCHW to NHWC: `end=1` becomes 3,
so the slice holds three sizes, the Squeeze cannot make a scalar of it, and `tf.range` refuses its limit
("Shape must be rank 0 but is rank 1"). `Gather(Shape(x), k)` with a scalar index is the same size as a scalar,
in every reading of the layout for the batch axis (k = 0 in both NCHW and NHWC).

Constant subgraphs. A tensor the graph computes from initializers, Constant nodes and sizes the graph fixes (not
the batch axis) has one value for every input. torchvision's Swin builds its shifted-window attention mask so, from
sizes alone (ConstantOfShape, ScatterND per window slice, Sub, Equal, Where: a 4-D float array of region ids).
onnx2tf (1.28, 1.29) computes such a tensor itself to a numpy array, and where the array stands for a node's output
Keras refuses it ("Output tensors of a Functional model must be the output of a TensorFlow `Layer`"). Each such
tensor that a node computed from the input reads becomes an initializer, its value computed by ONNX Runtime (the
runtime parity is measured against), and the nodes only it needed go: onnx2tf places an initializer as a constant
inside the layer that reads it (here the Add of the mask to the attention logits).

Omitted optional inputs, for onnx-tf only. ONNX lets a node leave an optional input out with the empty name; at the
end of the inputs that is the same as not listing it. The TorchScript exporter writes Swin-T's 15 window `Pad`s as
Pad(x, pads, ""), and onnx-tf 1.10's Pad handler, seeing three inputs, looks the constant value up under the name ""
(KeyError: ''). Each trailing empty input is dropped: the node reads what it read.
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
    nodes: list[str] = field(default_factory=list)  # the Range nodes whose bounds were made scalar
    folded_tensors: list[str] = field(default_factory=list)  # constant tensors made initializers
    folded_nodes: int = 0  # nodes removed with them: the constant subgraphs that computed them
    trailing_empty_inputs: int = 0  # omitted optional inputs ("") dropped from the end of a node's inputs (onnx-tf)

    @property
    def changed(self) -> bool:
        return self.range_scalar_bounds > 0 or bool(self.folded_tensors) or self.trailing_empty_inputs > 0

    def summary(self) -> str:
        if not self.changed:
            return "no ONNX rewrite applied (no pattern present)"
        parts = []
        if self.folded_tensors:
            parts.append(
                f"{len(self.folded_tensors)} constant tensor(s) folded into initializers, {self.folded_nodes} node(s) "
                f"removed ({', '.join(self.folded_tensors)})"
            )
        if self.range_scalar_bounds:
            parts.append(
                f"{self.range_scalar_bounds} Range bound(s) Squeeze(Shape[k:k+1]) → Gather(Shape, k) "
                f"({', '.join(self.nodes)})"
            )
        if self.trailing_empty_inputs:
            parts.append(
                f"{self.trailing_empty_inputs} trailing omitted optional input(s) ('') dropped from their nodes"
            )
        return "; ".join(parts)


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


def _set_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Make `nodes` (copied first: they may be the graph's own messages) the model's graph nodes, then check it."""
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del model.graph.node[:]
    model.graph.node.extend(copies)
    onnx.checker.check_model(model)


def _matches(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> list[tuple[int, onnx.NodeProto, int, tuple]]:
    """(index in `nodes`, Range node, input position, what _one_size_slice found) for each matching bound."""
    producers = {out: node for node in nodes for out in node.output}
    return [
        (i, node, position, found)
        for i, node in enumerate(nodes)
        if node.op_type == "Range" and node.domain in ("", "ai.onnx")
        for position, name in enumerate(node.input)
        if (found := _one_size_slice(graph, producers, name)) is not None
    ]


def scalar_range_bounds(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OnnxRewrite]:
    """A copy of `model` in which each Range bound of the form Squeeze(Shape(x, start=k, end=k+1)) is
    Gather(Shape(x), k) with a scalar index; `model` itself, untouched, when no Range has such a bound."""
    rewrite = OnnxRewrite()
    if not _matches(model.graph, list(model.graph.node)):
        return model, rewrite
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    # One list of the nodes, used throughout: a fresh iteration of the repeated field may give other Python objects.
    nodes = list(graph.node)
    taken = {out for node in graph.node for out in node.output} | {i.name for i in graph.initializer}
    taken |= {i.name for i in graph.input} | {n.name for n in graph.node}
    replacements: dict[str, str] = {}  # Squeeze output → scalar Gather output
    inserted: dict[int, list[onnx.NodeProto]] = {}  # by index of the Range they feed, placed before it
    replaced: set[str] = set()  # outputs of the matched Squeeze and Shape nodes
    for at, node, position, (squeeze, shape, k) in _matches(graph, nodes):
        old = node.input[position]
        if old not in replacements:
            index = _fresh(taken, f"{squeeze.name or old}_index")
            graph.initializer.append(numpy_helper.from_array(np.array(k, dtype=np.int64), index))
            full = _fresh(taken, f"{shape.name or old}_full")
            scalar = _fresh(taken, f"{old}_scalar")
            inserted.setdefault(at, []).extend(
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
    for at, node in enumerate(nodes):
        ordered.extend(inserted.get(at, []))
        ordered.append(node)
    # The matched Squeeze and sliced Shape stay only if something else still reads them.
    while True:
        read = {name for node in ordered for name in node.input} | {o.name for o in graph.output}
        dead = {id(n) for n in ordered if n.output[0] in replaced and n.output[0] not in read}
        if not dead:
            break
        ordered = [n for n in ordered if id(n) not in dead]
    _set_nodes(result, ordered)
    return result, rewrite


# Ops whose value is not a function of their inputs: never folded (nor is a node that holds a graph of its own).
_NOT_FOLDED = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
)
# A folded tensor is written into the file: a larger one stays computed (protobuf caps a file at 2 GB).
FOLD_LIMIT_BYTES = 64 << 20


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append(attribute.g)
        found.extend(attribute.graphs)
    return found


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names `node` reads: its inputs, and every name read inside its subgraphs (outer-scope names among them)."""
    names = set(node.input)
    for graph in _subgraphs(node):
        for inner in graph.node:
            names |= _reads(inner)
        names |= {o.name for o in graph.output}
    return names


def _static_sizes(shape: onnx.TensorShapeProto | None, node: onnx.NodeProto) -> np.ndarray | None:
    """The value of Shape(x) (`node`) when every size it takes is fixed in the graph; None when one of them is
    symbolic (the batch axis) or unknown, or x's rank is."""
    if shape is None:
        return None
    rank = len(shape.dim)
    start, end = _attribute(node, "start"), _attribute(node, "end")
    start = 0 if start is None else start + rank if start < 0 else start
    end = rank if end is None else end + rank if end < 0 else end
    dims = shape.dim[max(0, min(start, rank)) : max(0, min(end, rank))]
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return np.array([d.dim_value for d in dims], dtype=np.int64)


def _constant_cone(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], shapes: dict[str, onnx.TensorShapeProto]
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray], set[str]]:
    """The nodes, in graph order, whose outputs depend only on initializers, Constant nodes and fixed sizes; the
    value of each Shape among them that reads a tensor computed from the input; and the names that are a stored
    value as it is (an initializer, a Constant, an Identity of one)."""
    overridable = {i.name for i in graph.input}  # an initializer that is also a graph input is only its default
    known = {i.name for i in graph.initializer} - overridable | {""}  # "" is an omitted optional input
    stored = set(known)
    cone, sizes = [], {}
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NOT_FOLDED or _subgraphs(node):
            continue
        if node.op_type == "Constant":
            known.update(node.output)
            stored.update(node.output)
        elif all(name in known for name in node.input):
            cone.append(node)
            known.update(node.output)
            if node.op_type == "Identity" and node.input[0] in stored:
                stored.update(node.output)
        elif node.op_type == "Shape" and (value := _static_sizes(shapes.get(node.input[0]), node)) is not None:
            cone.append(node)
            sizes[node.output[0]] = value
            known.update(node.output)
    return cone, sizes, stored


def _evaluate(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    cone: list[onnx.NodeProto],
    sizes: dict[str, np.ndarray],
    types: dict[str, int],
    wanted: list[str],
) -> dict[str, np.ndarray]:
    """The values of `wanted` (outputs of `cone`), computed by ONNX Runtime from the nodes they need."""
    import onnxruntime

    producers = {out: node for node in nodes if node.op_type == "Constant" for out in node.output}
    producers |= {out: node for node in cone for out in node.output}
    needed, todo = set(), [name for name in wanted if name not in sizes]
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in needed and node.output[0] not in sizes:
            needed.add(id(node))
            todo.extend(node.input)
    values = {name: sizes[name] for name in wanted if name in sizes}
    computed = [name for name in wanted if name not in sizes]
    if not computed:
        return values
    needed_nodes = [node for node in nodes if id(node) in needed]
    read = {name for node in needed_nodes for name in node.input}
    initializers = [i for i in model.graph.initializer if i.name in read]
    initializers += [numpy_helper.from_array(value, name) for name, value in sizes.items() if name in read]
    outputs = [helper.make_tensor_value_info(name, types[name], None) for name in computed]
    sub = helper.make_model(
        helper.make_graph(needed_nodes, "constant_subgraphs", [], outputs, initializers),
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
    )
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # a subgraph without inputs is what it is meant to be: no warnings about it
    session = onnxruntime.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return values | dict(zip(computed, session.run(computed, {}), strict=True))


def _foldable(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto]
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], dict, dict]:
    """(the constant cone, its nodes that a node computed from the input reads, static Shape values, dtypes)."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    infos = [*inferred.input, *inferred.value_info, *inferred.output]
    shapes = {v.name: v.type.tensor_type.shape for v in infos if v.type.tensor_type.HasField("shape")}
    types = {v.name: v.type.tensor_type.elem_type for v in infos if v.type.tensor_type.elem_type}
    cone, sizes, stored = _constant_cone(graph, nodes, shapes)
    in_cone = {id(node) for node in cone}
    read = {name for node in nodes if id(node) not in in_cone for name in _reads(node)}
    outputs = {o.name for o in graph.output}
    frontier = [
        node
        for node in cone
        if read.intersection(node.output)
        # The TorchScript exporter's Identity of a shared initializer is a stored value already: folding would only
        # write the weight twice.
        and not stored.issuperset(node.output)
        and not outputs.intersection(node.output)  # a graph output stays a node's: converters name outputs so
        and all(types.get(name) for name in node.output if name in read)  # ONNX Runtime needs each output's type
    ]
    return cone, frontier, sizes, types


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OnnxRewrite]:
    """A copy of `model` in which each tensor computed only from initializers, Constant nodes and fixed sizes, and
    read by a node computed from the input, is an initializer of the same name, the nodes only it needed removed;
    `model` itself, untouched, when there is no such tensor."""
    rewrite = OnnxRewrite()
    if model.ir_version < 4:
        return model, rewrite  # IR 3 wants every initializer listed as a graph input too; exporters write IR ≥ 7
    # One list of the nodes, used throughout (nodes are told apart by id): a fresh iteration of the repeated field
    # may give other Python objects.
    nodes = list(model.graph.node)
    cone, frontier, sizes, types = _foldable(model, nodes)
    if not frontier:
        return model, rewrite
    read = {name for node in nodes for name in _reads(node)}
    wanted = [name for node in frontier for name in node.output if name in read]
    values = _evaluate(model, nodes, cone, sizes, types, wanted)
    large = {name for name, value in values.items() if value.nbytes > FOLD_LIMIT_BYTES}
    folded = [node for node in frontier if not large.intersection(node.output)]
    if not folded:
        return model, rewrite
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    names = [name for node in folded for name in node.output if name in read]
    graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in names)
    removed = {id(node) for node in folded}
    kept = [node for node in nodes if id(node) not in removed]
    outputs = {o.name for o in graph.output}
    # The nodes of the cone, and the Constant nodes, that nothing reads any more go, and the initializers only they
    # read; what nothing read before stays as it was.
    removable = {id(node) for node in cone}
    removable |= {id(n) for n in nodes if n.op_type == "Constant" and read.intersection(n.output)}
    while True:
        still_read = {name for node in kept for name in _reads(node)} | outputs
        dead = {id(n) for n in kept if id(n) in removable and not still_read.intersection(n.output)}
        if not dead:
            break
        removed |= dead
        kept = [node for node in kept if id(node) not in dead]
    unread = {i.name for i in graph.initializer if i.name in read and i.name not in still_read}
    kept_initializers = [i for i in graph.initializer if i.name not in unread]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    present = {name for node in kept for name in node.output} | {i.name for i in graph.initializer}
    value_info = [v for v in graph.value_info if v.name in present]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    _set_nodes(result, kept)
    rewrite.folded_tensors = names
    rewrite.folded_nodes = len(removed)
    return result, rewrite


def _trailing_empty(node: onnx.NodeProto) -> int:
    names = list(node.input)
    while names and names[-1] == "":
        names.pop()
    return len(node.input) - len(names)


def trailing_empty_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OnnxRewrite]:
    """A copy of `model` in which no node's inputs end with the empty name (an omitted optional input); `model`
    itself, untouched, when none does. Nodes inside subgraphs are left as they are."""
    rewrite = OnnxRewrite(trailing_empty_inputs=sum(_trailing_empty(node) for node in model.graph.node))
    if not rewrite.trailing_empty_inputs:
        return model, rewrite
    result = onnx.ModelProto()
    result.CopyFrom(model)
    nodes = list(result.graph.node)
    for node in nodes:
        for _ in range(_trailing_empty(node)):
            del node.input[-1]
    _set_nodes(result, nodes)
    return result, rewrite


def prepare(model: onnx.ModelProto, converter: str) -> tuple[onnx.ModelProto, OnnxRewrite]:
    """Every ONNX-level rewrite for `converter` (a backend name), each where its pattern is present: the model to
    convert and what changed."""
    folded, rewrite = fold_constants(model)  # first: a Range bound over a fixed size becomes a constant
    result, bounds = scalar_range_bounds(folded)
    rewrite.range_scalar_bounds, rewrite.nodes = bounds.range_scalar_bounds, bounds.nodes
    if converter == "onnx-tf":  # only onnx-tf's handlers look an omitted input up by its empty name
        result, trailing = trailing_empty_inputs(result)
        rewrite.trailing_empty_inputs = trailing.trailing_empty_inputs
    return result, rewrite
