"""Fold small shape arithmetic into constants so shape inference can finish the job.

ONNX's data propagation is not used (it materialises integer tensors without a bound), and plain
inference stops wherever a shape is computed from data (``Reshape(x, Shape(x))``, ``Range(0, seq)``
for position ids). On the analysis copy, where every
input dim is already concrete, such subgraphs compute small integer tensors; evaluating them turns
the unknown lengths into numbers. Only tiny tensors are ever materialised, and every output size is
bounded before anything is evaluated, so a hostile graph cannot make the validator allocate.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from splitup.graph.external import is_external

# Elements a folded tensor may have; shape tensors are a handful of int64s.
MAX_FOLD_ELEMENTS = 1024

# Ops whose output never has more elements than their inputs put together (checked ops aside).
_BOUNDED_BY_INPUTS = frozenset(
    """Abs Add And Cast Ceil Concat Div Equal Floor Gather Greater GreaterOrEqual Identity Less LessOrEqual
    Max Min Mod Mul Neg Not Or ReduceMax ReduceMin ReduceProd ReduceSum Reshape Slice Squeeze Sub
    Unsqueeze Where""".split()
)
# Ops whose output size comes from input values: bounded explicitly before evaluating.
_SIZED_BY_VALUES = frozenset({"Range", "ConstantOfShape", "Expand"})


def constant_array(t: TensorProto) -> np.ndarray | None:
    """The tensor's value, or None when its payload is malformed (that is for the runtime to refuse)."""
    if is_external(t) or math.prod(t.dims) > MAX_FOLD_ELEMENTS:
        return None
    try:
        return numpy_helper.to_array(t)
    except Exception:  # wrong payload lengths surface as ValueError, odd dtypes as TypeError
        return None


def _concrete_shape(vi: ValueInfoProto | None) -> list[int] | None:
    if vi is None or vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    if any(d.WhichOneof("value") != "dim_value" for d in dims):
        return None
    return [d.dim_value for d in dims]


def _shape_value(node: NodeProto, shape: list[int]) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(shape)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    # Shape-15 clamps start/end like Python slicing does.
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _output_bound_ok(node: NodeProto, values: list[np.ndarray | None]) -> bool:
    try:
        return _bounded(node, values)
    except (TypeError, ValueError, IndexError, OverflowError):  # missing or odd inputs: do not fold
        return False


def _bounded(node: NodeProto, values: list[np.ndarray | None]) -> bool:
    if node.op_type == "Range":
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])  # type: ignore[arg-type]
        if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
            return False
        return max(0, math.ceil((limit - start) / delta)) <= MAX_FOLD_ELEMENTS
    if node.op_type == "ConstantOfShape":
        shape = np.asarray(values[0]).reshape(-1)
        return bool((shape >= 0).all()) and math.prod(int(d) for d in shape) <= MAX_FOLD_ELEMENTS
    if node.op_type == "Expand":
        shape = [int(d) for d in np.asarray(values[1]).reshape(-1)]
        data = list(np.asarray(values[0]).shape)
        rank = max(len(shape), len(data))
        padded = [1] * (rank - len(data)) + data
        target = [1] * (rank - len(shape)) + shape
        return all(d >= 0 for d in target) and math.prod(max(a, b) for a, b in zip(padded, target, strict=True)) <= MAX_FOLD_ELEMENTS
    return True


def _evaluate(node: NodeProto, values: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(values)]
    clone = NodeProto()
    clone.CopyFrom(node)
    del clone.input[:]
    clone.input.extend(names)
    outs = [o for o in node.output]
    graph = helper.make_graph(
        [clone], "fold", [], [helper.make_empty_tensor_value_info(o) for o in outs if o],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, values, strict=True) if v is not None],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(None, {})
    except Exception:  # anything the reference ops refuse simply stays unfolded
        return None
    arrays = [np.asarray(r) for r in results]
    if any(a.size > MAX_FOLD_ELEMENTS or a.dtype == object for a in arrays):
        return None
    return arrays


def fold_shape_constants(model: ModelProto) -> bool:
    """Replace foldable nodes of the main graph by ``Constant`` nodes (same names); True if any changed."""
    graph: GraphProto = model.graph
    opset = next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
    types = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    consts: dict[str, np.ndarray] = {}
    inits = {init.name: init for init in graph.initializer}
    for init in graph.initializer:
        if (array := constant_array(init)) is not None:
            consts[init.name] = array
    changed = False
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and (array := constant_array(value)) is not None:
                consts[node.output[0]] = array
            continue
        results: list[np.ndarray] | None = None
        if node.op_type in ("Shape", "Size"):
            # an initializer's shape is its dims (exporters such as tf2onnx take Shape of constants)
            shape = list(inits[node.input[0]].dims) if node.input[0] in inits else _concrete_shape(types.get(node.input[0]))
            if shape is not None:
                value = _shape_value(node, shape) if node.op_type == "Shape" else np.array(math.prod(shape), np.int64)
                results = [value]
        elif node.op_type in _BOUNDED_BY_INPUTS | _SIZED_BY_VALUES:
            if all(not name or name in consts for name in node.input) and len(node.output) == 1:
                values = [consts[name] if name else None for name in node.input]
                if _output_bound_ok(node, values):
                    results = _evaluate(node, values, opset)
        if results is None:
            continue
        replacement = helper.make_node(
            "Constant", [], [node.output[0]], name=node.name, value=numpy_helper.from_array(results[0], node.output[0])
        )
        graph.node[index].CopyFrom(replacement)
        consts[node.output[0]] = results[0]
        changed = True
    return changed
