"""Upper bounds for outputs that ONNX inference leaves unknown but that can never outgrow their input.

A reduction, ``Slice``, ``Split``, ``Squeeze`` or ``Unsqueeze`` whose axes / starts / split sizes arrive
as data has no static shape, yet each output dim is bounded by an input dim: a reduced or sliced axis
only shrinks, and removing or inserting size-1 axes keeps the others in order (output dim ``j`` is one
of input dims ``j .. j+k`` for ``k`` removed axes, or 1). Such an output is given the per-dim maximum as
its shape, so the tensors after it are sized at bounds too. That is sound only while the bound stays a
size and never becomes a value: an output whose shape is read (``Shape``/``Size`` downstream) keeps its
unknown shape and is refused as before. Data-sized outputs (``Reshape``/``Expand``/``Tile``/``Pad``/
``Resize``/``ConstantOfShape``/``TopK``/``OneHot`` sized by data, ``NonZero``) are never bounded here.
``GroupNormalization`` keeps its input's shape (ONNX's strict inference gives it none).
"""

from __future__ import annotations

from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto, helper

_REDUCE = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
})
_SAME_SHAPE = frozenset({"GroupNormalization"})
_READS_SHAPE = frozenset({"Shape", "Size"})


def _dims(vi: ValueInfoProto | None) -> list[int] | None:
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


def _attr(node: NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _subsequence_bound(dims: list[int], rank: int) -> list[int]:
    """Each dim of a rank-``rank`` tensor made by dropping ``len(dims) - rank`` dims of ``dims`` (order kept)."""
    k = len(dims) - rank
    return [max(dims[j : j + k + 1]) for j in range(rank)]


def _bounds(node: NodeProto, known: dict[str, ValueInfoProto]) -> list[list[int]] | None:
    """Per-output upper bounds, or None when this node's outputs cannot be bounded by its input."""
    data = _dims(known.get(node.input[0])) if node.input else None
    if data is None:
        return None
    op = node.op_type
    if op in _SAME_SHAPE:
        return [data]
    if op in _REDUCE or op in ("Slice", "Split"):
        if op in _REDUCE and not _attr(node, "keepdims", 1):
            axes = _dims(known.get(node.input[1])) if len(node.input) > 1 and node.input[1] else None
            if axes is None or len(axes) != 1 or axes[0] == 0:
                return None  # how many axes go (all of them, for an empty list) is unknown
            return [_subsequence_bound(data, len(data) - axes[0])] if axes[0] <= len(data) else None
        return [data] * len([o for o in node.output if o])
    if op == "Squeeze" and len(node.input) > 1:
        axes = _dims(known.get(node.input[1]))
        if axes is None or len(axes) != 1 or not 0 < axes[0] <= len(data):
            return None
        return [_subsequence_bound(data, len(data) - axes[0])]
    if op == "Unsqueeze":
        axes = _dims(known.get(node.input[1])) if len(node.input) > 1 else None
        if axes is None or len(axes) != 1:
            return None
        k = axes[0]
        # Output dim j is 1 or input dim i for some i in j-k .. j (k ones were inserted somewhere).
        return [[max([1, *data[max(0, j - k) : min(j, len(data) - 1) + 1]]) for j in range(len(data) + k)]]
    return None


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


def bound_by_input(model: ModelProto) -> bool:
    """Give unknown outputs of the main graph the bound their input proves; True if any was added."""
    graph = model.graph
    known = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    for init in graph.initializer:
        known[init.name] = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
    added = False
    for node in graph.node:
        outs = [o for o in node.output if o]
        if not outs or all(_dims(known.get(o)) is not None for o in outs):
            continue
        bounds = _bounds(node, known)
        if bounds is None or len(bounds) != len(outs) or _shape_read_downstream(graph, outs):
            continue
        elem = known[node.input[0]].type.tensor_type.elem_type
        for out, dims in zip(outs, bounds, strict=True):
            if _dims(known.get(out)) is not None:
                continue
            rank = _rank(known.get(out))
            if rank is not None and rank != len(dims):
                continue
            vi = helper.make_tensor_value_info(out, elem, dims)
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
