"""Graph rewrites applied to a converted model before it is wrapped, chosen from a profile.

`nox -s profile` showed where a Session's time went on the converted ResNet18 (reports/profile/):
onnx2tf wraps every residual Add in a Transpose pair (NHWC → NCHW → NHWC), 20 of which run per
call and keep Grappler's remapper from fusing the Add and the Relu into the convolution.
Transposes are layout bookkeeping, not maths, so this module:

1. freezes the converted graph (variables become constants, nested functions are inlined), so
   Grappler can fold weight-side work once at load instead of on every call;
2. sinks every Transpose below the elementwise ops it feeds (Add, Relu, ...: applying them before or
   after a transpose computes the same values) and cancels each pair that meets its
   inverse, until no pair is left to cancel;
3. writes a per-channel constant added to a convolution (depthwise too) as BiasAdd, the pattern Grappler's
   remapper fuses (with the residual Add and the Relu, or a hard-swish) into one oneDNN convolution;
4. folds the max-pool's -inf padding (a PadV2 copying the whole activation) into the MaxPool itself;
5. pins the input's shape (EnsureShape) so that Grappler's shape inference knows the spatial sizes.
   Its remapper fuses a residual Add only when both operands' shapes are provably equal, and by
   default it assumes a fed tensor may have any shape ("assume_valid_feeds" is off below AGGRESSIVE):
   a stride-2 convolution of an unknown size and the downsampling shortcut's then get different
   unknown sizes, and ResNet's three downsampling Add+Relu ran unfused.

The result is a plain GraphDef imported into the serving function, so the rewrite lives in the
SavedModel and every server that loads it (TF Serving included) runs the leaner graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from .signatures import CROP, ConvertedModel

# Elementwise ops for which op(transpose(x)) == transpose(op(x)), value for value.
UNARY = {"Relu", "Relu6", "Identity", "Neg", "Sigmoid", "Tanh", "Elu", "Selu"}
BINARY = {"Add", "AddV2", "Sub", "Mul", "Maximum", "Minimum", "RealDiv", "BiasAdd"}
PADS = {"Pad", "PadV2", "MirrorPad"}
# Reductions over constant axes: reduce(transpose(x, p), axes) == transpose'(reduce(x, p[axes])), up to the
# order in which Mean, Sum and Prod add (Max and Min are exact).
REDUCTIONS = {"Mean", "Sum", "Max", "Min", "Prod"}
# Ops that only compute shapes and amounts when all their inputs are constants. Split and SplitV have an
# output per part (onnx-tf's global average pool reads its axes from SplitV(Range(4), [2, 2])'s second).
SHAPE_ARITHMETIC = {
    "Pack",
    "StridedSlice",
    "Add",
    "AddV2",
    "Sub",
    "Mul",
    "Cast",
    "Reshape",
    "ConcatV2",
    "Range",
    "Split",
    "SplitV",
}
# Constants at least this large are weights, stored once in the SavedModel rather than in each function.
WEIGHT_BYTES = 1024


@dataclass(frozen=True)
class Rewrite:
    """What optimize() did: op counts before and after, and how many transposes it removed."""

    ops_before: dict[str, int]
    ops_after: dict[str, int]
    transposes_sunk: int
    transpose_pairs_cancelled: int
    bias_adds: int
    pads_folded: int
    max_pool_pads_folded: int = 0
    # The input's shape as EnsureShape pins it (None: a dimension any size may take, the batch).
    input_shape: tuple[int | None, ...] | None = None

    def summary(self) -> str:
        before, after = self.ops_before.get("Transpose", 0), self.ops_after.get("Transpose", 0)
        return (
            f"{before} → {after} Transpose ops ({self.transpose_pairs_cancelled} inverse pairs cancelled), "
            f"{self.pads_folded} Pad folded into Conv2D padding, {self.max_pool_pads_folded} into MaxPool, "
            f"{self.bias_adds} Add → BiasAdd, input shape pinned to "
            f"[{', '.join('batch' if d is None else str(d) for d in self.input_shape or ())}]"
        )


def _split(name: str) -> tuple[str, int]:
    """'node:1' → ('node', 1); 'node' → ('node', 0); control inputs are not passed here."""
    node, _, port = name.partition(":")
    return node, int(port) if port else 0


class _Graph:
    """A GraphDef as a mutable name → NodeDef map with helpers for rewiring."""

    def __init__(self, graph_def: graph_pb2.GraphDef, keep: set[str]):
        self.graph_def = graph_def
        self.nodes = {n.name: n for n in graph_def.node}
        self.keep = keep
        self._fresh = 0

    def const_value(self, name: str) -> np.ndarray | None:
        node = self.nodes.get(_split(name)[0])
        if node is None or node.op != "Const":
            return None
        return tf.make_ndarray(node.attr["value"].tensor)

    def perm(self, node: node_def_pb2.NodeDef) -> tuple[int, ...] | None:
        value = self.const_value(node.input[1])
        return None if value is None else tuple(int(v) for v in value)

    def producer(self, name: str) -> node_def_pb2.NodeDef | None:
        node, port = _split(name)
        found = self.nodes.get(node)
        return found if found is not None and port == 0 else None

    def transpose_input(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """(x, perm) when `name` is the output of Transpose(x, constant perm)."""
        node = self.producer(name)
        if node is None or node.op != "Transpose":
            return None
        perm = self.perm(node)
        return None if perm is None else (node.input[0], perm)

    def add_node(self, op: str, name: str, inputs: list[str], attrs: dict) -> node_def_pb2.NodeDef:
        self._fresh += 1
        node = self.graph_def.node.add(op=op, name=f"{name}/pt2tf_{self._fresh}", input=inputs)
        for key, value in attrs.items():
            node.attr[key].CopyFrom(value)
        self.nodes[node.name] = node
        return node

    def add_const(self, name: str, value: np.ndarray) -> str:
        node = self.add_node("Const", name, [], {})
        node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        return node.name

    def ports_read(self, name: str) -> set[int]:
        """The outputs of node `name` that some node reads as data."""
        return {
            port
            for node in self.graph_def.node
            for node_name, port in (_split(i) for i in node.input if not i.startswith("^"))
            if node_name == name
        }

    def consumers(self, name: str) -> list[node_def_pb2.NodeDef]:
        """Nodes reading output 0 of node `name` as data."""
        return [
            node
            for node in self.graph_def.node
            if any(not i.startswith("^") and _split(i) == (name, 0) for i in node.input)
        ]

    def rewire(self, old: str, new: str, skip: node_def_pb2.NodeDef | None = None) -> None:
        """Every consumer of tensor `old` ('node:k', or 'node' for port 0) reads `new` instead, except `skip`."""
        tensor = _split(old)
        for node in self.graph_def.node:
            if node is skip:
                continue
            for i, name in enumerate(node.input):
                if not name.startswith("^") and _split(name) == tensor:
                    node.input[i] = new

    def prune(self) -> None:
        """Drop nodes nothing kept depends on."""
        live, stack = set(), list(self.keep)
        while stack:
            name = stack.pop()
            if name in live or name not in self.nodes:
                continue
            live.add(name)
            stack.extend(_split(i.lstrip("^"))[0] for i in self.nodes[name].input)
        kept = [n for n in self.graph_def.node if n.name in live]
        del self.graph_def.node[:]
        self.graph_def.node.extend(kept)
        self.nodes = {n.name: n for n in self.graph_def.node}


def _broadcast_transposed(value: np.ndarray, perm: tuple[int, ...]) -> np.ndarray | None:
    """A constant c with op(transpose(x, perm), c) == transpose(op(x, c'), perm): c' returned, or None."""
    if value.ndim > len(perm):
        return None
    full = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
    inverse = tuple(int(i) for i in np.argsort(perm))
    return np.ascontiguousarray(np.transpose(full, inverse))


def _sink_below_pad(graph: _Graph, node: node_def_pb2.NodeDef) -> bool:
    """Pad(Transpose(x, p), paddings) → Transpose(Pad(x, paddings permuted back), p).

    Only where every consumer of the Pad is a Transpose (which then meets its inverse): a Pad that
    feeds a convolution directly is one Grappler fuses into it, and stays where it is.
    """
    source = graph.transpose_input(node.input[0])
    paddings = graph.const_value(node.input[1])
    if source is None or paddings is None or len(paddings) != len(source[1]):
        return False
    consumers = graph.consumers(node.name)
    if not consumers or any(c.op != "Transpose" for c in consumers):
        return False
    x, perm = source
    moved = graph.add_const(node.name + "/paddings", np.ascontiguousarray(paddings[np.argsort(perm)]))
    node.input[0], node.input[1] = x, moved
    _transpose_after(graph, node, perm)
    return True


def _sink_below_reduction(graph: _Graph, node: node_def_pb2.NodeDef) -> bool:
    """Reduce(Transpose(x, p), axes) → Transpose(Reduce(x, p[axes]), q), q the order left of p.

    The global average pool of a converted ResNet reads the last block's output through a layout
    transpose of the whole activation; reduced first, what is left to transpose is one value per
    channel (and nothing at all when the kept axes stay in order).
    """
    source = graph.transpose_input(node.input[0])
    axes = graph.const_value(node.input[1])
    if source is None or axes is None:
        return False
    x, perm = source
    rank = len(perm)
    listed = [int(a) for a in np.atleast_1d(axes)]
    reduced = {a % rank for a in listed}
    if any(not -rank <= a < rank for a in listed) or len(reduced) != len(listed):
        return False  # TensorFlow refuses these at run time; left for it to say so
    if node.attr["keep_dims"].b:
        after = perm
    else:
        kept = [perm[i] for i in range(rank) if i not in reduced]
        after = tuple(sorted(kept).index(k) for k in kept)
    identity = after == tuple(range(len(after)))
    transpose = _split(node.input[0])[0]
    if not identity and (transpose in graph.keep or [c.name for c in graph.consumers(transpose)] != [node.name]):
        # The full-size transpose stays for its other readers (a LayerNorm's Sub): one more, not one fewer.
        return False
    moved = graph.add_const(node.name + "/axes", np.array(sorted(perm[a] for a in reduced), dtype=axes.dtype))
    node.input[0], node.input[1] = x, moved
    if identity:
        node.attr.pop("_output_shapes", None)
        return True
    _transpose_after(graph, node, after)
    return True


def _transpose_after(graph: _Graph, node, perm) -> None:
    """Put Transpose(perm) after `node` (whose inputs were just un-transposed) and feed its consumers from it."""
    node.attr.pop("_output_shapes", None)
    perm_const = graph.add_const(node.name + "/perm", np.array(perm, dtype=np.int32))
    attrs = {"T": node.attr["T"], "Tperm": tf.compat.v1.AttrValue(type=tf.int32.as_datatype_enum)}
    moved_transpose = graph.add_node("Transpose", node.name, [node.name, perm_const], attrs)
    graph.rewire(node.name, moved_transpose.name, skip=moved_transpose)


def _sink_once(graph: _Graph) -> bool:
    """Move one Transpose below one elementwise op or Pad; True if something changed."""
    for node in list(graph.graph_def.node):
        if node.name in graph.keep:
            continue
        if node.op in PADS:
            if _sink_below_pad(graph, node):
                return True
            continue
        if node.op in REDUCTIONS:
            if _sink_below_reduction(graph, node):
                return True
            continue
        if node.op not in UNARY | BINARY:
            continue
        data = [i for i in node.input if not i.startswith("^")]
        sources = [graph.transpose_input(i) for i in data]
        perms = {s[1] for s in sources if s is not None}
        if len(perms) != 1:
            continue
        perm = perms.pop()
        new_inputs = []
        for name, source in zip(data, sources, strict=True):
            if source is not None:
                new_inputs.append(source[0])
                continue
            value = graph.const_value(name)
            moved = None if value is None or node.op == "BiasAdd" else _broadcast_transposed(value, perm)
            if moved is None:
                break
            new_inputs.append(graph.add_const(node.name + "/operand", moved))
        else:
            controls = [i for i in node.input if i.startswith("^")]
            del node.input[:]
            node.input.extend(new_inputs + controls)
            _transpose_after(graph, node, perm)
            return True
    return False


def _bypass_identities(graph: _Graph) -> int:
    """Consumers of Identity(x) read x (onnx-tf's graphs carry one per tensor); returns how many.

    One pass to find them and one to rewire every input: linear in the graph. Rewiring each with a pass over
    every node took 452 s on Swin-T's onnx-tf graph with its loops lowered (40 866 nodes).
    """
    source = {
        node.name: node.input[0]
        for node in graph.graph_def.node
        if node.op == "Identity" and node.name not in graph.keep and len(node.input) == 1
        if not node.input[0].startswith("^")
    }

    def resolve(name: str) -> str:
        seen = []
        while True:
            node, port = _split(name)
            if port or node not in source:
                break
            seen.append(node)
            name = source[node]
        for node in seen:  # a chain Identity(Identity(x)) is walked once
            source[node] = name
        return name

    for node in graph.graph_def.node:  # an Identity kept alive by a control input reads x too
        for i, name in enumerate(node.input):
            if not name.startswith("^") and _split(name)[0] in source:
                node.input[i] = resolve(name)
    return len(source)


def _fold_layout_constants(graph: _Graph) -> int:
    """Transpose(constant) becomes a constant, Split into one part its input; returns how many.

    onnx-tf transposes every filter from OIHW to HWIO and splits it into `group` parts on each
    call; Grappler would fold that too, but only at load, and the filter must be a constant here
    for the BiasAdd rewrite to see its channel count.
    """
    folded = 0
    for node in list(graph.graph_def.node):
        if node.name in graph.keep:
            continue
        if node.op == "Transpose":
            value, perm = graph.const_value(node.input[0]), graph.perm(node)
            if value is None or perm is None:
                continue
            _make_const(node, np.ascontiguousarray(np.transpose(value, perm)))
            folded += 1
        elif node.op == "Split" and node.attr["num_split"].i == 1:
            graph.rewire(node.name, node.input[1], skip=node)
            folded += 1
    return folded


def _fold_shape_arithmetic(graph: _Graph) -> int:
    """Small ops computed from constants only (onnx-tf's pad amounts, pooling axes) become constants.

    A Pad whose amounts are a Pack of StridedSlices of constants is still a constant Pad, a Mean
    whose axes are a SplitV's part of a Range is still a Mean over constant axes; folded here, a
    transpose can be sunk below them like below any other. Returns how many ops were folded.
    """
    folded = 0
    for node in list(graph.graph_def.node):
        if node.op not in SHAPE_ARITHMETIC or node.name in graph.keep or any(i.startswith("^") for i in node.input):
            continue
        values = [graph.const_value(i) for i in node.input]
        if not values or any(v is None for v in values) or any(_split(i)[1] for i in node.input):
            continue
        read = graph.ports_read(node.name)
        if not read:
            continue  # pruned, not computed (onnx-tf's one-part Split of each filter, bypassed already)
        outputs = _evaluate(graph, node)
        # The constants' control inputs go to the folded node: they put it in its loop's frame and after its asserts.
        controls = list(dict.fromkeys(c for i in node.input for c in graph.nodes[_split(i)[0]].input))
        if len(outputs) == 1:
            if outputs[0].nbytes < WEIGHT_BYTES:
                _make_const(node, outputs[0])
                node.input.extend(controls)
                folded += 1
            continue
        # One Const per output read (a Const has one output): readers of `node:k` read the k-th.
        ports = [port for port in sorted(read) if outputs[port].nbytes < WEIGHT_BYTES]
        for port in ports:
            constant = graph.add_const(f"{node.name}/output_{port}", outputs[port])
            graph.nodes[constant].input.extend(controls)
            graph.rewire(f"{node.name}:{port}", constant)
        if ports:
            folded += 1
    return folded


def _evaluate(graph: _Graph, node: node_def_pb2.NodeDef) -> list[np.ndarray]:
    """Every output of `node`, whose inputs are all constants, computed by TensorFlow itself."""
    subgraph = graph_pb2.GraphDef()
    for name in dict.fromkeys(node.input):
        constant = subgraph.node.add()
        constant.CopyFrom(graph.nodes[_split(name)[0]])
        # A Const's inputs can only be control inputs (onnx-tf's run after its shape asserts): they order its
        # run, not its value, and name nodes the subgraph does not hold.
        del constant.input[:]
    subgraph.node.append(node)
    with tf.Graph().as_default() as evaluation:
        tf.graph_util.import_graph_def(subgraph, name="")
    with tf.compat.v1.Session(graph=evaluation) as session:
        return [np.asarray(v) for v in session.run(evaluation.get_operation_by_name(node.name).outputs)]


def _make_const(node, value: np.ndarray) -> None:
    """Turn `node`, in place and under its own name, into a Const holding `value`."""
    node.op = "Const"
    del node.input[:]
    node.ClearField("attr")
    node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))


def _cancel_pairs(graph: _Graph) -> int:
    """Transpose(Transpose(x, a), b) with a∘b the identity reads x directly; returns how many."""
    cancelled = 0
    for node in list(graph.graph_def.node):
        if node.op != "Transpose" or node.name in graph.keep:
            continue
        outer = graph.perm(node)
        inner = graph.transpose_input(node.input[0])
        if outer is None or inner is None:
            continue
        source, inner_perm = inner
        if tuple(inner_perm[i] for i in outer) == tuple(range(len(outer))):
            graph.rewire(node.name, source, skip=node)
            cancelled += 1
    return cancelled


def _fold_pads(graph: _Graph) -> int:
    """Pad(x) → Conv2D(VALID) becomes Conv2D(x) with the padding in its attributes; returns how many.

    A stride-1 convolution padded by (k - 1) / 2 on each side is SAME; any other zero padding of
    the spatial axes is EXPLICIT. Either way Grappler's remapper can fuse the convolution with its
    BiasAdd, residual Add and Relu, which it does not do for a Pad-fused one.
    """
    folded = 0
    for conv in graph.graph_def.node:
        if (
            conv.op != "Conv2D"
            or conv.attr["padding"].s != b"VALID"
            or conv.attr["data_format"].s not in (b"", b"NHWC")
        ):
            continue
        pad = graph.producer(conv.input[0])
        if pad is None or pad.op not in ("Pad", "PadV2"):
            continue
        paddings, filters = graph.const_value(pad.input[1]), graph.const_value(conv.input[1])
        fill = graph.const_value(pad.input[2]) if pad.op == "PadV2" else np.zeros(())
        if paddings is None or filters is None or fill is None or np.any(fill != 0) or paddings.shape != (4, 2):
            continue
        if np.any(paddings[[0, 3]] != 0):
            continue
        strides, dilations = list(conv.attr["strides"].list.i), list(conv.attr["dilations"].list.i) or [1, 1, 1, 1]
        kernel = filters.shape[:2]
        same = all(
            strides[axis + 1] == 1
            and dilations[axis + 1] == 1
            and (kernel[axis] - 1) == 2 * paddings[axis + 1][0]
            and paddings[axis + 1][0] == paddings[axis + 1][1]
            for axis in (0, 1)
        )
        conv.input[0] = pad.input[0]
        conv.attr.pop("_output_shapes", None)
        if same:
            conv.attr["padding"].s = b"SAME"
        else:
            conv.attr["padding"].s = b"EXPLICIT"
            conv.attr["explicit_paddings"].list.i.extend(int(v) for v in paddings.reshape(-1))
        folded += 1
    return folded


def _fold_max_pool_pads(graph: _Graph) -> int:
    """PadV2(x, lowest float) → MaxPool(VALID) becomes MaxPool(x) with EXPLICIT padding; returns how many.

    Converters write PyTorch's padded max-pool as a pad with the lowest float (so the padding never
    wins a max) and an unpadded pool: the pad copies the whole activation first (8 ms of 361 per
    batch of 32 for ResNet18 on a Sapphire Rapids Xeon). A MaxPool with explicit padding never lets a
    padded position win either, and reads the activation once.
    """
    folded = 0
    lowest = np.finfo(np.float32).min
    for pool in graph.graph_def.node:
        if (
            pool.op != "MaxPool"
            or pool.attr["padding"].s != b"VALID"
            or pool.attr["data_format"].s not in (b"", b"NHWC")
            or pool.name in graph.keep
        ):
            continue
        pad = graph.producer(pool.input[0])
        if pad is None or pad.op != "PadV2" or pad.name in graph.keep:
            continue
        paddings, fill = graph.const_value(pad.input[1]), graph.const_value(pad.input[2])
        if paddings is None or fill is None or paddings.shape != (4, 2) or np.any(paddings[[0, 3]] != 0):
            continue
        if not paddings.any():
            continue  # no padding: nothing for the pool to take over
        ksize = list(pool.attr["ksize"].list.i)
        if fill.size != 1 or float(fill) > lowest or any(paddings[a][s] >= ksize[a] for a in (1, 2) for s in (0, 1)):
            continue  # a window of padding only would give the fill value, not what EXPLICIT gives
        pool.input[0] = pad.input[0]
        pool.attr.pop("_output_shapes", None)
        pool.attr["padding"].s = b"EXPLICIT"
        pool.attr["explicit_paddings"].list.i.extend(int(v) for v in paddings.reshape(-1))
        folded += 1
    return folded


def _conv2d_input_channels(graph_def: graph_pb2.GraphDef) -> dict[str, int | None]:
    """Each Conv2D's input channels as TensorFlow's shape inference knows them (None: not known)."""
    imported = tf.Graph()
    with imported.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    found = {}
    for op in imported.get_operations():
        if op.type == "Conv2D":
            shape = op.inputs[0].shape
            axis = 1 if op.get_attr("data_format") == b"NCHW" else -1
            found[op.name] = shape[axis] if shape.rank == 4 else None
    return found


def _bias_adds(graph: _Graph) -> int:
    """Add(conv, per-channel constant) → BiasAdd; returns how many.

    Grappler's arithmetic optimizer merges Add(Add(conv, bias), shortcut) into one AddN, which its
    remapper cannot fuse into the convolution; BiasAdd(conv) + shortcut + Relu it fuses into one op.
    A depthwise convolution's bias must be a BiasAdd too: TensorFlow 2.19's remapper takes an
    AddV2(depthwise, bias) followed by a hard-swish for its conv + bias + hard-swish fusion, then fails
    to apply it ("Mutation::Apply error: fanout ... exist for missing node"), which throws away every
    fusion of that remapper pass (MobileNetV3-Small on onnx2tf: no Relu, hard-swish or residual Add went
    into any of its 52 convolutions).

    A grouped Conv2D (its filter has fewer input channels than its input) keeps its Add: with oneDNN off
    (TensorFlow's default on the AVX2 kind) the remapper fuses a Conv2D and its BiasAdd into Eigen's
    _FusedConv2D, which then fails every call ("Fused conv implementation does not support grouped
    convolutions for now"); with oneDNN on, its grouped convolution runs either way.
    """
    rewritten = 0
    conv_inputs: dict[str, int | None] | None = None  # each Conv2D's input channels, once a Conv2D's bias is met
    for node in graph.graph_def.node:
        if node.op not in ("Add", "AddV2") or len(node.input) != 2:
            continue
        for data, other in (node.input, reversed(node.input)):
            producer = graph.producer(data)
            value = graph.const_value(other)
            if producer is None or value is None or producer.op not in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
                continue
            if producer.op != "MatMul" and producer.attr["data_format"].s not in (b"", b"NHWC"):
                continue
            weights = graph.const_value(producer.input[1])
            if producer.op == "Conv2D":
                conv_inputs = _conv2d_input_channels(graph.graph_def) if conv_inputs is None else conv_inputs
                if weights is None or conv_inputs.get(producer.name) != weights.shape[2]:
                    continue  # grouped, or not known not to be (see above)
            transposed = producer.op == "MatMul" and producer.attr["transpose_b"].b
            if weights is None:
                channels = None
            elif producer.op == "DepthwiseConv2dNative":
                channels = weights.shape[2] * weights.shape[3]  # [height, width, in, multiplier]
            else:
                channels = weights.shape[0 if transposed else -1]
            if value.ndim == 0 or any(d != 1 for d in value.shape[:-1]) or value.shape[-1] != channels:
                continue
            bias = graph.add_const(node.name + "/bias", np.ascontiguousarray(value.reshape(-1)))
            del node.input[:]
            node.input.extend([data, bias])
            node.op = "BiasAdd"
            node.attr.pop("_output_shapes", None)
            node.attr["data_format"].s = b"NHWC"
            rewritten += 1
            break
    return rewritten


def sink_transposes(graph_def: graph_pb2.GraphDef, outputs: list[str]) -> tuple[graph_pb2.GraphDef, int, int]:
    """The graph with transposes sunk below elementwise ops and inverse pairs cancelled."""
    result = graph_pb2.GraphDef()
    result.CopyFrom(graph_def)
    graph = _Graph(result, {_split(o)[0] for o in outputs})
    sunk = cancelled = 0
    while True:
        _bypass_identities(graph)
        _fold_layout_constants(graph)
        _fold_shape_arithmetic(graph)
        cancelled += _cancel_pairs(graph)
        graph.prune()
        if not _sink_once(graph):
            break
        sunk += 1
        if sunk > 10 * len(graph.graph_def.node):
            raise RuntimeError("transpose sinking does not converge; this is a bug in pt2tf_convert.optimize")
    return result, sunk, cancelled


def input_spec(layout: str) -> list[int | None]:
    """The converted call's input shape: any batch, the contract's crop, in the converter's layout."""
    return [None, CROP, CROP, 3] if layout == "NHWC" else [None, 3, CROP, CROP]


def _has_loops(graph: tf.Graph) -> bool:
    """Whether `graph` or a function it calls holds a While loop."""
    graph_def = graph.as_graph_def()
    ops = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
    return bool(ops & {"While", "StatelessWhile"})


def freeze(converted: ConvertedModel) -> tuple[graph_pb2.GraphDef, str, str]:
    """The converted call as one flat GraphDef with constant weights: (graph, input name, output name)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(converted.call).get_concrete_function(
        tf.TensorSpec(input_spec(converted.layout), tf.float32, name="images")
    )
    # Loops stay functional While ops: lowered to TF1 frames, onnx-tf's (one per ScatterND, 45 in Swin-T) give a
    # graph that TensorFlow refuses when it is imported back ("has inputs from different frames").
    frozen = convert_variables_to_constants_v2(function, lower_control_flow=not _has_loops(function.graph))
    graph_def = frozen.graph.as_graph_def()
    return graph_def, frozen.inputs[0].name, frozen.outputs[0].name


def _lift_weights(graph_def: graph_pb2.GraphDef) -> dict[str, tf.Tensor]:
    """Turn large Const nodes into Placeholders; return their values as eager constants by tensor name.

    Both signatures import the graph: weights left as Const nodes would be stored once per traced
    function (180 MB instead of 45). Eager constants captured by the functions are stored once and
    still load as Const nodes in a Session, so Grappler folds what depends only on them.
    """
    weights = {}
    for node in graph_def.node:
        if node.op != "Const" or node.attr["value"].tensor.ByteSize() < WEIGHT_BYTES:
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        weights[f"{node.name}:0"] = tf.constant(value)
        dtype = node.attr["dtype"]
        node.op = "Placeholder"
        node.ClearField("attr")
        node.attr["dtype"].CopyFrom(dtype)
        node.attr["shape"].shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
    return weights


def optimize(converted: ConvertedModel, fold_pads: bool = True) -> tuple[ConvertedModel, Rewrite]:
    """Freeze and rewrite the converted graph; the returned model computes the same logits."""
    graph_def, input_name, output_name = freeze(converted)
    before = Counter(n.op for n in graph_def.node)
    rewritten, sunk, cancelled = sink_transposes(graph_def, [output_name])
    graph = _Graph(rewritten, {_split(output_name)[0]})
    pads_folded = _fold_pads(graph) if fold_pads else 0
    max_pool_pads_folded = _fold_max_pool_pads(graph) if fold_pads else 0
    bias_adds = _bias_adds(graph)
    graph.prune()
    after = Counter(n.op for n in rewritten.node)
    weights = _lift_weights(rewritten)
    input_shape = input_spec(converted.layout)

    def call(images: tf.Tensor) -> tf.Tensor:
        # EnsureShape: the remapper's shape inference then knows every activation's spatial size
        # (see the module's docstring); a wrongly sized input fails here, naming both shapes.
        images = tf.ensure_shape(images, input_shape)
        # tf.identity captures each eager constant into the function being traced (import_graph_def
        # takes graph tensors only); Grappler removes the Identity ops again.
        feeds = {input_name: images} | {name: tf.identity(value) for name, value in weights.items()}
        (logits,) = tf.graph_util.import_graph_def(
            rewritten, input_map=feeds, return_elements=[output_name], name="converted"
        )
        return logits

    rewrite = Rewrite(
        dict(before), dict(after), sunk, cancelled, bias_adds, pads_folded, max_pool_pads_folded, tuple(input_shape)
    )
    return ConvertedModel(call=call, trackable=list(weights.values()), layout=converted.layout), rewrite
