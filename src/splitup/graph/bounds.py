"""Upper bounds for outputs that ONNX inference leaves unknown but that can never outgrow their input.

A reduction, ``Slice``, ``Split``, ``Squeeze`` or ``Unsqueeze`` whose axes / starts / split sizes arrive
as data has no static shape, yet each output dim is bounded by an input dim: a reduced or sliced axis
only shrinks, and removing or inserting size-1 axes keeps the others in order (output dim ``j`` is one
of input dims ``j .. j+k`` for ``k`` removed axes, or 1). Such an output is given the per-dim maximum as
its shape, so the tensors after it are sized at bounds too. That is sound only while the bound stays a
size and never becomes a value: an output whose shape is read (``Shape``/``Size`` downstream) keeps its
unknown shape and is refused as before. Data-sized outputs (``Reshape``/``Expand``/``Tile``/``Pad``/
``Resize``/``ConstantOfShape``/``OneHot``/``Range`` sized by data values) are not bounded by these rules:
their size follows a value, not an input's size; they are bounded only where the model declares the
range of those values (the ``extra`` rules, ``splitup.graph.valuesized``).

Outputs whose length is chosen by data but can never exceed their input are bounded the same way:
``NonZero`` (rank x at most numel), ``Compress`` and ``Unique`` (at most the input's elements, or its
dim along ``axis``), ``TopK`` with ``k`` given as data (at most the input's dim along ``axis``).
``GroupNormalization`` keeps its input's shape (ONNX's strict inference gives it none).
"""

from __future__ import annotations

from collections.abc import Callable

from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper

_REDUCE = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
})
_SAME_SHAPE = frozenset({"GroupNormalization"})
_READS_SHAPE = frozenset({"Shape", "Size"})
_BY_INPUT_LENGTH = frozenset({"NonZero", "Compress", "Unique", "TopK"})


def static_dims(vi: ValueInfoProto | None) -> list[int] | None:
    if vi is None or vi.type.WhichOneof("value") != "tensor_type":
        return None
    tt = vi.type.tensor_type
    if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return [d.dim_value for d in tt.shape.dim]


def _rank(vi: ValueInfoProto | None) -> int | None:
    if vi is None or vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
        return None
    return len(vi.type.tensor_type.shape.dim)


def int_attr(node: NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _subsequence_bound(dims: list[int], rank: int) -> list[int]:
    """Each dim of a rank-``rank`` tensor made by dropping ``len(dims) - rank`` dims of ``dims`` (order kept)."""
    k = len(dims) - rank
    return [max(dims[j : j + k + 1]) for j in range(rank)]


def _bounds(node: NodeProto, known: dict[str, ValueInfoProto]) -> list[list[int]] | None:
    """Per-output upper bounds, or None when this node's outputs cannot be bounded by its input."""
    data = static_dims(known.get(node.input[0])) if node.input else None
    if data is None:
        return None
    op = node.op_type
    if op in _SAME_SHAPE:
        return [data]
    if op in _REDUCE or op in ("Slice", "Split"):
        if op in _REDUCE:
            # Reducing an empty axis gives one element (the reduction's identity): 0 becomes 1, not less.
            data = [max(d, 1) for d in data]
        if op in _REDUCE and not int_attr(node, "keepdims", 1):
            axes = static_dims(known.get(node.input[1])) if len(node.input) > 1 and node.input[1] else None
            if axes is None or len(axes) != 1 or axes[0] == 0:
                return None  # how many axes go (all of them, for an empty list) is unknown
            return [_subsequence_bound(data, len(data) - axes[0])] if axes[0] <= len(data) else None
        return [data] * len([o for o in node.output if o])
    if op == "Squeeze" and len(node.input) > 1:
        axes = static_dims(known.get(node.input[1]))
        if axes is None or len(axes) != 1 or not 0 < axes[0] <= len(data):
            return None
        return [_subsequence_bound(data, len(data) - axes[0])]
    if op in _BY_INPUT_LENGTH:
        return _data_sized(node, data)
    if op == "NonMaxSuppression":
        scores = static_dims(known.get(node.input[1])) if len(node.input) > 1 else None
        # At most every (batch, class, box) triple is selected, one row of 3 indices each.
        return [[scores[0] * scores[1] * scores[2], 3]] if scores is not None and len(scores) == 3 else None
    if op == "Reshape":
        shape = static_dims(known.get(node.input[1])) if len(node.input) > 1 else None
        numel = 1
        for d in data:
            numel *= d
        # Same elements as the input, so no dim exceeds their count (loose: sizes only, see _shape_read...).
        # An empty input bounds nothing: [0, n] holds no element for any n.
        return [[numel] * shape[0]] if shape is not None and len(shape) == 1 and numel else None
    if op == "LinearAttention":
        return _linear_attention(node, data, known)
    if op == "Unsqueeze":
        axes = static_dims(known.get(node.input[1])) if len(node.input) > 1 else None
        if axes is None or len(axes) != 1:
            return None
        k = axes[0]
        # Output dim j is 1 or input dim i for some i in j-k .. j (k ones were inserted somewhere).
        return [[max([1, *data[max(0, j - k) : min(j, len(data) - 1) + 1]]) for j in range(len(data) + k)]]
    return None


def _linear_attention(node: NodeProto, q: list[int], known: dict[str, ValueInfoProto]) -> list[list[int]] | None:
    """Exact shapes (ONNX's inference has none): output (B, T, Hq*dv), present_state (B, Hkv, dk, dv)."""
    k = static_dims(known.get(node.input[1])) if len(node.input) > 1 else None
    v = static_dims(known.get(node.input[2])) if len(node.input) > 2 else None
    heads, kv_heads = int_attr(node, "q_num_heads", 0), int_attr(node, "kv_num_heads", 0)
    if k is None or v is None or len(q) != 3 or len(k) != 3 or len(v) != 3 or heads <= 0 or kv_heads <= 0:
        return None
    dk, dv = k[2] // kv_heads, v[2] // kv_heads
    per_output = [[q[0], q[1], heads * dv], [q[0], kv_heads, dk, dv]]
    return [b for b, o in zip(per_output, node.output, strict=False) if o]


def _data_sized(node: NodeProto, data: list[int]) -> list[list[int]] | None:
    """Bounds of the ops whose output length data chooses, per present output (None: not bounded)."""
    numel = 1
    for d in data:
        numel *= d
    has_axis = any(a.name == "axis" for a in node.attribute)
    axis = int_attr(node, "axis", -1 if node.op_type == "TopK" else 0)
    if has_axis or node.op_type == "TopK":
        if not -len(data) <= axis < len(data):
            return None
        axis %= len(data)
    if node.op_type == "NonZero":
        per_output = [[len(data), numel]]
    elif node.op_type == "TopK":
        per_output = [data, data]
    elif node.op_type == "Compress":
        per_output = [data if has_axis else [numel]]
    else:  # Unique: values, first indices, inverse indices, counts
        length = data[axis] if has_axis else numel
        per_output = [data if has_axis else [numel], [length], [length], [length]]
    return [b for b, o in zip(per_output, node.output, strict=False) if o]


def _value_elem(node: NodeProto) -> int:
    """ConstantOfShape's element type is its ``value``'s (float32 without one), not its shape input's."""
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    return value.data_type if value is not None else TensorProto.FLOAT


def _shape_read_downstream(graph: GraphProto, start: list[str]) -> bool:
    """True if any tensor derived from ``start`` has its shape read (its bound would become a value)."""
    consumers: dict[str, list[NodeProto]] = {}
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return True  # a body may read any outer tensor's shape; not worth tracing
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    seen, todo = set(start), list(start)
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.op_type in _READS_SHAPE:
                return True
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    todo.append(out)
    return False


Extra = Callable[[NodeProto, dict[str, ValueInfoProto]], "list[list[int]] | None"]


def bound_by_input(model: ModelProto, extra: Extra | None = None) -> bool:
    """Give unknown outputs of the main graph the bound their input proves (or ``extra`` gives: the
    value-sized ops, ``splitup.graph.valuesized``); True if any was added."""
    graph = model.graph
    known = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    for init in graph.initializer:
        known[init.name] = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
    added = False
    for node in graph.node:
        outs = [o for o in node.output if o]
        if not outs or all(static_dims(known.get(o)) is not None for o in outs):
            continue
        bounds = _bounds(node, known)
        if bounds is None and extra is not None:
            bounds = extra(node, known)
        if bounds is None or len(bounds) != len(outs) or _shape_read_downstream(graph, outs):
            continue
        elem = _value_elem(node) if node.op_type == "ConstantOfShape" else known[node.input[0]].type.tensor_type.elem_type
        for out, dims in zip(outs, bounds, strict=True):
            if static_dims(known.get(out)) is not None:
                continue
            rank = _rank(known.get(out))
            if rank is not None and rank != len(dims):
                continue
            if rank is not None:  # dims inference did fix are exact: keep them
                fixed = known[out].type.tensor_type.shape.dim
                dims = [d.dim_value if d.HasField("dim_value") else b for d, b in zip(fixed, dims, strict=True)]
            # Indices (NonZero, TopK, Unique) are int64 whatever the data: inference knows the type.
            inferred = known[out].type.tensor_type.elem_type if out in known else 0
            vi = helper.make_tensor_value_info(out, inferred or elem, dims)
            for existing in list(graph.value_info):
                if existing.name == out:
                    graph.value_info.remove(existing)
            graph_output = next((o for o in graph.output if o.name == out), None)
            if graph_output is not None:
                graph_output.type.CopyFrom(vi.type)
            else:
                graph.value_info.append(vi)
            known[out] = vi
            added = True
    return added
