"""Bounded shapes: symbolic input dims get declared maxima, then ONNX infers every other shape.

The convention shared with the builder: graph-input dims are concrete ``dim_value`` or a ``dim_param``
whose maximum is declared in the model's ``metadata_props`` under ``splitup.dim_max`` as a JSON object,
e.g. ``{"seq": 2048, "past": 4096}``. Value-info in the proto is a claim and is never trusted: a copy
is stripped of it, every input dim_param is replaced by its maximum, and strict shape inference must
then give every tensor a concrete dtype and shape. Sizes at the maximum inputs bound the real sizes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx
from onnx import GraphProto, ModelProto, TypeProto, ValueInfoProto

from splitup.graph.bounds import bound_by_input
from splitup.graph.errors import MalformedGraph, StringTensor, TensorTooLarge, UnboundedDimension
from splitup.graph.fold import MAX_FOLD_ELEMENTS, fold_shape_constants
from splitup.graph.limits import Limits
from splitup.graph.loopshapes import complete_loop_shapes
from splitup.graph.meta import DIM_MAX_KEY, declared_json
from splitup.graph.monotone import check_monotone, probe_points
from splitup.graph.sizes import element_bits, element_count, tensor_bytes
from splitup.graph.structure import check_dims, node_label, subgraphs
from splitup.graph.values import read_value_max, remedy, value_ranges
from splitup.graph.valuesized import value_bounds


@dataclass(frozen=True)
class TensorType:
    elem_type: int
    shape: tuple[int, ...]


def read_dim_max(model: ModelProto, limits: Limits) -> dict[str, int]:
    """The declared maxima of symbolic input dims; an absent key means no symbolic dims are allowed."""
    parsed = declared_json(model, DIM_MAX_KEY)
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise MalformedGraph(f"{DIM_MAX_KEY} must be a JSON object of name -> maximum", where=DIM_MAX_KEY)
    for name, value in parsed.items():
        # bool is an int subclass in Python; true/false as a maximum is a mistake, not 1/0.
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedGraph(f"maximum of {name!r} must be an integer, got {value!r}", where=DIM_MAX_KEY)
        check_dims([value], limits, where=f"{DIM_MAX_KEY}[{name}]")
    return parsed


def _tensor_type(vi: ValueInfoProto, *, where: str) -> TypeProto.Tensor:
    if vi.type.WhichOneof("value") != "tensor_type":
        raise MalformedGraph("only dense tensor types are allowed (no sequences, maps, optionals)", where=where)
    return vi.type.tensor_type


def check_graph_inputs(graph: GraphProto, dim_max: dict[str, int], limits: Limits) -> None:
    """Every input dim must be concrete or a dim_param with a declared maximum."""
    for vi in graph.input:
        where = f"graph input {vi.name}"
        tt = _tensor_type(vi, where=where)
        element_bits(tt.elem_type, where=where)
        if not tt.HasField("shape"):
            raise UnboundedDimension("input has no shape (unknown rank)", where=where)
        for axis, dim in enumerate(tt.shape.dim):
            kind = dim.WhichOneof("value")
            if kind == "dim_value":
                check_dims([dim.dim_value], limits, where=where)
            elif kind == "dim_param" and dim.dim_param in dim_max:
                continue
            elif kind == "dim_param":
                raise UnboundedDimension(
                    f"dim {axis} {dim.dim_param!r} has no maximum declared in {DIM_MAX_KEY}: declare one with "
                    f"splitup.models.onnx_import.declare_dims(model, {{{dim.dim_param!r}: N}}) or "
                    f"export_torch(..., dim_max={{{dim.dim_param!r}: N}}), or set metadata_props[{DIM_MAX_KEY!r}] "
                    f"to a JSON object such as {{\"{dim.dim_param}\": 2048}}", where=where
                )
            else:
                raise UnboundedDimension(f"dim {axis} is neither a number nor a declared symbol", where=where)


def _strip(graph: GraphProto, *, outputs: bool) -> None:
    del graph.value_info[:]
    if outputs:
        for vi in graph.output:
            vi.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for _, body in subgraphs(node):
            _strip(body, outputs=True)


def infer_bounded(model: ModelProto, dim_max: dict[str, int], limits: Limits, max_rounds: int = 64) -> ModelProto:
    """Inference at the declared maxima, checked against probes at smaller dims (``splitup.graph.monotone``)."""
    inferred = infer_at(model, dim_max, limits, max_rounds)
    if dim_max:
        probes = [_try_infer_at(model, point, limits, max_rounds) for point in probe_points(dim_max)]
        check_monotone(inferred, probes)
    return inferred


def _try_infer_at(model: ModelProto, dims: dict[str, int], limits: Limits, max_rounds: int) -> ModelProto | None:
    try:
        return infer_at(model, dims, limits, max_rounds)
    except MalformedGraph:
        return None


def infer_at(model: ModelProto, dims: dict[str, int], limits: Limits, max_rounds: int = 64) -> ModelProto:
    """A copy with input dim_params set to ``dims`` and every shape inferred; the original is untouched.

    ONNX's own data propagation is never used: it materialises every integer tensor it can evaluate
    (~140 bytes per element, unbounded), so a stranger's ``Expand`` of an int64 scalar could take
    the node's memory. Instead, each plain inference pass is screened against the limits, then small
    shape arithmetic is folded into constants (``splitup.graph.fold``, bounded by its element cap) and
    inference runs again, a bounded number of times.
    """
    copy = ModelProto()
    copy.CopyFrom(model)
    _strip(copy.graph, outputs=True)
    _drop_large_payloads(copy.graph)
    _inline_outer_constants(copy.graph)
    for vi in copy.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.WhichOneof("value") == "dim_param":
                dim.dim_value = dims[dim.dim_param]
    inferred = _screened(_infer(copy), limits)
    declared = read_value_max(model, limits)
    for _ in range(max_rounds):
        if _fully_known(inferred.graph):
            break
        # Both run: a folded constant may bound a Loop, and a bounded Loop may feed a Shape.
        folded = fold_shape_constants(inferred)
        if folded:  # a shape value folded in the outer graph is a constant its bodies may read too
            _inline_outer_constants(inferred.graph)
        # Bounds come last: an exact shape found by folding or induction beats an upper bound.
        ranges = value_ranges(inferred.graph, declared)
        by_values = functools.partial(value_bounds, ranges=ranges) if declared else None
        if not (complete_loop_shapes(inferred) | folded) and not bound_by_input(inferred, by_values):
            break
        inferred = _screened(_infer(inferred), limits)
    _drop_inlined(inferred.graph, set())
    return inferred


def _inline_outer_constants(graph: GraphProto, outer: dict[str, onnx.NodeProto] | None = None) -> None:
    """Give each body a copy of the small outer ``Constant`` nodes it reads: onnx's inference of a body sees
    the types of outer tensors but not their values, so an ``Unsqueeze`` by an outer axes constant (as
    function-expanded graphs write them) would stay unsized. Only the inference copy is changed."""
    scope = dict(outer or {})
    scope.update({n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output})
    for node in graph.node:
        for _, body in subgraphs(node):
            reads = {x for n in body.node for x in n.input}
            defined = {o for n in body.node for o in n.output} | {vi.name for vi in body.input}
            copies = [scope[x] for x in sorted(reads - defined) if x in scope]
            for c in reversed(copies):
                body.node.insert(0, c)
            _inline_outer_constants(body, scope)


def _drop_inlined(graph: GraphProto, outer: set[str]) -> None:
    """Remove the copies ``_inline_outer_constants`` made (a valid graph never redefines an outer name)."""
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output and node.output[0] in outer:
            graph.node.remove(node)
    scope = outer | {o for n in graph.node for o in n.output} | {vi.name for vi in graph.input}
    for node in graph.node:
        for _, body in subgraphs(node):
            _drop_inlined(body, scope)


def _drop_large_payloads(graph: GraphProto) -> None:
    """Weights only matter by dims and dtype here; copying their bytes through inference is waste."""
    for init in graph.initializer:
        if element_count(init.dims) > MAX_FOLD_ELEMENTS:
            for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                init.ClearField(name)


def _screened(model: ModelProto, limits: Limits) -> ModelProto:
    """Refuse any tensor already known to break the limits, before another inference pass runs."""
    for graph in _all_graphs(model.graph):
        producers = {out: node_label(n, i) for i, n in enumerate(graph.node) for out in n.output if out}
        for vi in (*graph.value_info, *graph.output):
            if vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
                continue
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
            where = f"tensor {vi.name}" + (f" from {producers[vi.name]}" if vi.name in producers else "")
            check_dims(dims, limits, where=where)
            if vi.type.tensor_type.elem_type and len(dims) == len(vi.type.tensor_type.shape.dim):
                n = tensor_bytes(vi.type.tensor_type.elem_type, dims, where=where)
                if n > limits.max_tensor_bytes:
                    raise TensorTooLarge(
                        f"{n} bytes exceed the per-tensor limit of {limits.max_tensor_bytes}", where=where
                    )
    return model


def _all_graphs(graph: GraphProto) -> list[GraphProto]:
    found = [graph]
    for node in graph.node:
        for _, body in subgraphs(node):
            found.extend(_all_graphs(body))
    return found


def _infer(model: ModelProto) -> ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=False)
    except Exception as exc:  # InferenceError, ValidationError, or a RuntimeError from the C++ side
        raise MalformedGraph(f"shape inference failed: {exc}".replace("\n", " "), where=_culprit(str(exc))) from None


def _fully_known(graph: GraphProto) -> bool:
    known = {vi.name: vi for vi in (*graph.value_info, *graph.output)}
    for node in graph.node:
        for out in node.output:
            vi = known.get(out)
            if out and (vi is None or not _is_concrete(vi)):
                return False
    return True


def _is_concrete(vi: ValueInfoProto) -> bool:
    tt = vi.type.tensor_type
    return bool(tt.elem_type) and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)


def _culprit(message: str) -> str:
    """ONNX names the failing node as '(op_type:X, node name: Y)'; surface it as ``where``."""
    marker = "node name: "
    start = message.find(marker)
    if start < 0:
        return ""
    end = message.find(")", start)
    return "node " + message[start + len(marker) : end if end > 0 else None].strip()


def _concrete(vi: ValueInfoProto, limits: Limits, *, where: str) -> TensorType | None:
    if vi.type.WhichOneof("value") != "tensor_type":
        return None
    tt = vi.type.tensor_type
    if tt.elem_type == onnx.TensorProto.STRING:
        raise StringTensor("string tensors are not allowed", where=where)
    if not tt.elem_type or not tt.HasField("shape"):
        return None
    dims: list[int] = []
    for dim in tt.shape.dim:
        if dim.WhichOneof("value") != "dim_value":
            return None
        dims.append(dim.dim_value)
    check_dims(dims, limits, where=where)
    element_bits(tt.elem_type, where=where)
    return TensorType(tt.elem_type, tuple(dims))


# Ops whose output size follows the values (not the sizes) of some inputs, by input position: bounded only
# when those values are constants, computed from shapes, or in a declared range (``splitup.graph.values``).
_VALUE_SIZED: dict[str, tuple[int, ...]] = {
    "AffineGrid": (1,), "CenterCropPad": (1,), "Col2Im": (1, 2), "ConstantOfShape": (0,), "DFT": (1, 2),
    "Expand": (1,), "MaxUnpool": (2,), "OneHot": (1,), "Pad": (1, 3), "Range": (0, 1, 2), "Resize": (1, 2, 3),
    "STFT": (1, 3), "Tile": (1,), "TopK": (1,), "Reshape": (1,),
}


def _sizing_data(node: onnx.NodeProto, constant: set[str]) -> list[str]:
    """The inputs of a value-sized op whose values size its output and that are not constants."""
    sizing = [node.input[i] for i in _VALUE_SIZED.get(node.op_type, ()) if i < len(node.input)]
    return [x for x in sizing if x and x not in constant]


def _constants(graph: GraphProto) -> set[str]:
    return {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def sizing_inputs(model: ModelProto) -> list[str]:
    """Graph inputs whose values size an output (directly or through arithmetic): the ones to declare a value
    range for (``splitup.graph.values``)."""
    graph = model.graph
    constant = _constants(graph)
    data = [x for node in graph.node for x in _sizing_data(node, constant)]
    return sorted(_graph_inputs_behind(graph, data))


def _why_unbounded(node: onnx.NodeProto, graph: GraphProto) -> str:
    data = _sizing_data(node, _constants(graph))
    if data:
        inputs = {vi.name for vi in graph.input}
        named = [x for x in data if x in inputs] or sorted(_graph_inputs_behind(graph, data))
        fix = (remedy(named) if named else "make them constants, or compute them from tensor shapes")
        return (f"{node.op_type}'s output size follows the values of {', '.join(data)}, which are data here (a graph "
                f"input or computed from one), so no size can be bounded before it runs: {fix}")
    if node.op_type in ("If", "Loop", "Scan"):
        return (f"{node.op_type} output whose shape its body does not fix (onnx's inference cannot see the values "
                "of outer-graph constants a body reads, nor bound a body's data-sized outputs)")
    return "shape or dtype could not be bounded by inference"


def _graph_inputs_behind(graph: GraphProto, names: list[str]) -> set[str]:
    """The graph inputs that ``names`` are computed from (whose value ranges could bound them)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    inputs = {vi.name for vi in graph.input}
    found: set[str] = set()
    seen, todo = set(names), list(names)
    while todo:
        name = todo.pop()
        if name in inputs:
            found.add(name)
        elif name in producer and producer[name].op_type not in ("Shape", "Size"):
            for x in producer[name].input:
                if x and x not in seen:
                    seen.add(x)
                    todo.append(x)
    return found


def typed_tensors(
    graph: GraphProto, limits: Limits, outer: dict[str, TensorType] | None = None
) -> dict[str, TensorType]:
    """Concrete types of every tensor in ``graph`` and its bodies (inferred copy), or UnboundedDimension."""
    types: dict[str, TensorType] = dict(outer or {})
    for init in graph.initializer:
        types[init.name] = TensorType(init.data_type, tuple(init.dims))
    known = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    for vi in graph.input:
        t = _concrete(vi, limits, where=f"graph input {vi.name}")
        if t is None:
            raise UnboundedDimension("input shape is not concrete", where=f"graph input {vi.name}")
        types[vi.name] = t
    for index, node in enumerate(graph.node):
        label = node_label(node, index)
        for out in node.output:
            if not out:
                continue
            where = f"tensor {out} from {label}"
            vi = known.get(out)
            t = _concrete(vi, limits, where=where) if vi is not None else None
            if t is None:
                raise UnboundedDimension(_why_unbounded(node, graph), where=where)
            types[out] = t
        for _, body in subgraphs(node):
            types.update(typed_tensors(body, limits, types))
    return types
