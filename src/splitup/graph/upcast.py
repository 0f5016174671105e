"""Make a (task) graph compute in float32 whatever its half-precision types: the form of the task that
chooses tokens in a plan with float16 activations (docs/posp.md, "Precision of the token-choosing task").

Honest float16 / bfloat16 engines differ at the top of the logits by as much as a near-tie is wide, so no
comparison rule can tell a flipped token from an honest one there; in float32 they differ by ~1e-6 of
the range and a flip is caught. So the task emitting logits computes in float32, the others may stay in
half precision. The pass:

* half-precision initializers (weights, norms, quantisation scales) become float32: the task's shard
  holds them so (integer weights stay integer; their ``DequantizeLinear`` then yields float32);
* half-precision graph inputs that are not the task's own KV cache (the hidden state handed over by the
  previous task, which committed it in half precision) keep their interface type and are read through
  a ``Cast`` to float32, so the task takes exactly what the previous one sent;
* the KV cache, every other activation and every output (the logits) are float32: a cache stored in
  float16 would round float32 values again, and two honest engines straddling a rounding boundary would
  differ by a float16 step again;
* ``Cast``s to a half type, and half-precision ``Constant`` / ``ConstantOfShape`` values, become float32.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitup.graph.limits import Limits
from splitup.graph.precision import HALF_TYPES

_NUMPY_HALF = {np.dtype(np.float16)}


def float32_arithmetic(model: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None = None, *,
                       state: Collection[str] = (), keep_interface: bool = False,
                       ) -> tuple[onnx.ModelProto, dict[str, np.ndarray] | None]:
    """A copy of ``model`` computing in float32, and its shard arrays (``weights``) converted alike.

    ``state``: the graph inputs that are the task's own KV cache (converted with it); every other
    half-precision input keeps its type at the interface and is cast on entry. ``keep_interface``: the
    whole interface keeps its types (state included; outputs are cast back on exit), as an engine
    converts a bundle at load. Weights in an external shard that ``weights`` does not hold are read
    through a Cast (which engines fold into a float32 copy at load)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    entry: dict[str, str] = {}
    for vi in g.input:
        tt = vi.type.tensor_type
        if tt.elem_type in HALF_TYPES:
            if vi.name in state and not keep_interface:
                tt.elem_type = TensorProto.FLOAT
            else:
                entry[vi.name] = f"{vi.name}__fp32"
    exits: list[onnx.NodeProto] = []
    renamed_out: dict[str, str] = {}
    for vi in g.output:
        tt = vi.type.tensor_type
        if tt.elem_type in HALF_TYPES:
            if keep_interface:
                renamed_out[vi.name] = f"{vi.name}__fp32"
                exits.append(helper.make_node("Cast", [renamed_out[vi.name]], [vi.name], name=f"{vi.name}.to_half",
                                              to=tt.elem_type))
            else:
                tt.elem_type = TensorProto.FLOAT
    for init in g.initializer:
        if init.data_type in HALF_TYPES:
            if init.data_location == TensorProto.EXTERNAL and keep_interface:
                entry[init.name] = f"{init.name}__fp32"
            else:
                _upcast_initializer(init)
    _upcast_nodes(g)
    for node in g.node:
        # readers of an output inside the graph (a KV cache is attended to as well as handed on) read the
        # float32 value, not its half-precision copy
        node.input[:] = [entry.get(i, renamed_out.get(i, i)) for i in node.input]
        node.output[:] = [renamed_out.get(o, o) for o in node.output]
    casts = [helper.make_node("Cast", [name], [fp32], name=f"{name}.to_fp32", to=TensorProto.FLOAT)
             for name, fp32 in entry.items()]
    nodes = casts + list(g.node) + exits
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale half-precision types; inference redoes them
    converted = None if weights is None else {
        k: v.astype(np.float32) if v.dtype in _NUMPY_HALF or v.dtype.name == "bfloat16" else v
        for k, v in weights.items()}
    if not keep_interface:
        _split_wide_matmuls(g, converted, Limits().max_tensor_bytes)
    return out, converted


def _split_wide_matmuls(g: onnx.GraphProto, weights: dict[str, np.ndarray] | None, limit: int) -> None:
    """A float32 weight matrix over the per-tensor limit (a large vocabulary's LM head: 16384 x 128256 is
    8.4 GB in float32, 4.2 GB in float16) is stored in column blocks, each read by its own MatMul, and the
    products concatenated: the same logits, every tensor within the limit."""
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, int] = {}
    for node in g.node:
        for x in node.input:
            readers[x] = readers.get(x, 0) + 1
    nodes: list[onnx.NodeProto] = []
    for node in g.node:
        only = node.op_type == "MatMul" and len(node.input) == 2 and readers.get(node.input[1]) == 1
        w = inits.get(node.input[1]) if only else None
        size = 4 * int(np.prod(w.dims)) if w is not None and w.data_type == TensorProto.FLOAT else 0
        if w is None or len(w.dims) != 2 or size <= limit:
            nodes.append(node)
            continue
        rows, cols = int(w.dims[0]), int(w.dims[1])
        parts = -(-size // limit)
        step = -(-cols // parts)
        outs = []
        for i, lo in enumerate(range(0, cols, step)):
            hi = min(cols, lo + step)
            name = f"{w.name}.cols{i}"
            if weights is not None and w.name in weights:
                weights[name] = np.ascontiguousarray(weights[w.name][:, lo:hi])
            part = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[rows, hi - lo])
            if w.data_location == TensorProto.EXTERNAL:
                part.data_location = TensorProto.EXTERNAL
                part.external_data.extend(w.external_data)
            else:
                part.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:, lo:hi], name))
            g.initializer.append(part)
            outs.append(f"{node.output[0]}.cols{i}")
            nodes.append(helper.make_node("MatMul", [node.input[0], name], [outs[-1]], name=f"{node.name}.cols{i}"))
        nodes.append(helper.make_node("Concat", outs, [node.output[0]], name=f"{node.name}.concat", axis=-1))
        if weights is not None:
            weights.pop(w.name, None)
        g.initializer.remove(w)
        del inits[w.name]
    del g.node[:]
    g.node.extend(nodes)


def _upcast_initializer(init: TensorProto) -> None:
    if init.data_type not in HALF_TYPES:
        return
    if init.data_location == TensorProto.EXTERNAL:
        init.data_type = TensorProto.FLOAT  # a stub: the shard array is converted by the caller
        return
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))


def _upcast_nodes(g: onnx.GraphProto) -> None:
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in HALF_TYPES:
                attr.i = TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in HALF_TYPES:
                _upcast_initializer(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _upcast_body(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for body in attr.graphs:
                    _upcast_body(body)


def _upcast_body(body: onnx.GraphProto) -> None:
    for vi in (*body.input, *body.output):
        if vi.type.tensor_type.elem_type in HALF_TYPES:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for init in body.initializer:
        _upcast_initializer(init)
    del body.value_info[:]
    _upcast_nodes(body)

