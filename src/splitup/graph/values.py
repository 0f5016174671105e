"""Declared value ranges of graph inputs, and the ranges they give the small tensors computed from them.

An output sized by the *values* of an input (``Expand`` to a shape, ``Tile`` by repeats, ``Resize`` by
scales or sizes, ``Pad`` by pads, ...) has no size until it runs. The model may declare, per graph input,
the range its elements stay in (``metadata_props["splitup.value_max"]``): ``N`` means every element is in
``0..N``, ``[lo, hi]`` every element in ``lo..hi``, ``{"max": [...], "min": [...]}`` one range per element
(``min`` defaults to zeros), so ``Expand`` to ``[batch, 4096]`` can be bounded by ``{"max": [8, 4096]}``
rather than 4096 on every axis. The node refuses a feed outside it (``splitup.runtime.interface``), so the
sizes at the ranges' ends bound the real ones (``splitup.graph.valuesized``). Ranges follow the declared
inputs, element by element, through a few order-keeping or interval-arithmetic ops (casts, reshapes,
concatenation with constants, min/max, add/sub/mul/neg/abs), so an exporter's ``Cast`` or ``Concat`` in
front of the sizing input keeps its bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto

from splitup.graph.errors import MalformedGraph
from splitup.graph.fold import MAX_FOLD_ELEMENTS, constant_array
from splitup.graph.limits import Limits
from splitup.graph.meta import VALUE_MAX_KEY, declared_json

Range = tuple[float, float]
# One range per element, or a single range that every element shares.
Ranges = tuple[Range, ...]

_INTEGER = frozenset({
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
})
_UNSIGNED = frozenset({TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64})
_FLOAT = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
# Beyond 2**53 a float64 no longer holds every integer, and the interval arithmetic below would round.
_EXACT = 2**53


def remedy(names: list[str]) -> str:
    """How to declare a value range: the API, the CLI option and the metadata key."""
    example = ", ".join(f'"{n}": N' for n in names)
    cli = " ".join(f"--value-max {n}=N" for n in names)
    return (f"declare the most each of their values may be with splitup.models.onnx_import.declare_values(model, "
            f"{{{example}}}) or `splitup validate/plan MODEL {cli}` (N, LO:HI for negative values, or one per "
            f"element: 8/4096), stored as JSON in metadata_props[{VALUE_MAX_KEY!r}]; the node then refuses any "
            "feed beyond it")


def ranges_json(ranges: Ranges) -> object:
    """The metadata form of a declaration: ``[lo, hi]`` shared, or ``{"min": [...], "max": [...]}``."""
    if len(ranges) == 1:
        return list(ranges[0])
    return {"min": [r[0] for r in ranges], "max": [r[1] for r in ranges]}


def span(ranges: Ranges) -> Range:
    """The range every element lies in."""
    return (min(r[0] for r in ranges), max(r[1] for r in ranges))


def read_value_max(model: ModelProto, limits: Limits) -> dict[str, Ranges]:
    """The declared ranges of each named graph input; every entry must name a numeric graph input."""
    parsed = declared_json(model, VALUE_MAX_KEY)
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise MalformedGraph(f"{VALUE_MAX_KEY} must be a JSON object of input name -> N, [lo, hi] or "
                             '{"max": [...]}', where=VALUE_MAX_KEY)
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    return {name: _declared(name, spec, inputs.get(name), limits) for name, spec in parsed.items()}


def _declared(name: str, spec: object, vi: ValueInfoProto | None, limits: Limits) -> Ranges:
    where = f"{VALUE_MAX_KEY}[{name}]"
    if vi is None:
        raise MalformedGraph(f"{name!r} is not a graph input (only graph inputs' values can be declared)", where=where)
    tt = vi.type.tensor_type if vi.type.WhichOneof("value") == "tensor_type" else None
    if tt is None or tt.elem_type not in _INTEGER | _FLOAT:
        raise MalformedGraph(f"{name!r} is not an integer or float tensor", where=where)
    bad = MalformedGraph(f"the range of {name!r} must be N (0..N), [lo, hi] or {{\"max\": [...], \"min\": [...]}}"
                         f" with one entry per element, got {spec!r}", where=where)
    if isinstance(spec, dict):
        if not set(spec) <= {"min", "max"} or not isinstance(spec.get("max"), list):
            raise bad
        most = spec["max"]
        least = spec.get("min", [0] * len(most))
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if not isinstance(least, list) or len(least) != len(most) or len(dims) > 1 or math.prod(dims) != len(most):
            raise bad  # one range per element of a static vector (or scalar)
        if len(most) > MAX_FOLD_ELEMENTS:  # sizing vectors are a handful of numbers; this is work, not a size
            raise MalformedGraph(f"{name!r} has {len(most)} per-element ranges, more than {MAX_FOLD_ELEMENTS}: "
                                 "declare one range for all of them", where=where)
        pairs = list(zip(least, most, strict=True))
    elif isinstance(spec, list):
        pairs = [tuple(spec)] if len(spec) == 2 else []
    else:
        pairs = [(0, spec)]
    if not pairs:
        raise bad
    return tuple(_pair(name, lo, hi, tt.elem_type, spec, limits, where) for lo, hi in pairs)


def _pair(name: str, lo: object, hi: object, elem: int, spec: object, limits: Limits, where: str) -> Range:
    # bool is an int subclass: true/false as a bound is a mistake, not 1/0; NaN and infinities bound nothing
    # (an int is always finite, and may be too large to convert to a float: the dimension limit comes first).
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not (isinstance(v, int) or math.isfinite(v))
           for v in (lo, hi)):
        raise MalformedGraph(f"the range of {name!r} must hold finite numbers, got {spec!r}", where=where)
    assert isinstance(lo, int | float) and isinstance(hi, int | float)  # for the type checker: tested above
    if max(abs(lo), abs(hi)) > limits.max_dim:
        raise MalformedGraph(f"the range of {name!r} ({lo}..{hi}) goes beyond the dimension limit of "
                             f"{limits.max_dim}", where=where)
    if elem in _INTEGER and not all(float(v).is_integer() for v in (lo, hi)):
        raise MalformedGraph(f"{name!r} holds integers: its range must be integers, got {spec!r}", where=where)
    if lo > hi:
        raise MalformedGraph(f"the range of {name!r} is empty ({lo} > {hi})", where=where)
    if elem in _UNSIGNED and lo < 0:
        raise MalformedGraph(f"{name!r} is unsigned: its range cannot start below 0", where=where)
    return (lo, hi)


def value_ranges(graph: GraphProto, declared: Mapping[str, Ranges]) -> dict[str, Ranges]:
    """Per-element ranges (or one shared range) of the declared inputs, of small constants, and of what the
    ops below compute from them."""
    ranges: dict[str, Ranges] = dict(declared)
    for init in graph.initializer:
        if (r := _constant_ranges(constant_array(init))) is not None:
            ranges[init.name] = r
    if not declared:
        return ranges
    vis = (*graph.input, *graph.value_info, *graph.output)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in vis}
    counts = {vi.name: math.prod(d.dim_value for d in vi.type.tensor_type.shape.dim) for vi in vis
              if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)}
    for node in graph.node:
        out = _node_ranges(node, ranges, elem, counts)
        if out is not None and node.output and node.output[0]:
            ranges[node.output[0]] = out
    return ranges


def _constant_ranges(array: np.ndarray | None) -> Ranges | None:
    if array is None or array.size == 0 or array.size > MAX_FOLD_ELEMENTS or array.dtype.kind not in "iuf":
        return None
    flat = [float(v) for v in array.reshape(-1)]
    return tuple((v, v) for v in flat) if all(math.isfinite(v) for v in flat) else None


def _node_ranges(node: NodeProto, ranges: Mapping[str, Ranges], elem: Mapping[str, int],
                 counts: Mapping[str, int]) -> Ranges | None:
    op = node.op_type
    if op == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return _constant_ranges(constant_array(value)) if value is not None else None
    ins = [ranges.get(x) if x else None for x in node.input]
    if not ins or ins[0] is None:
        return None
    first = ins[0]
    if op in ("Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten"):
        return first  # the same values in the same order
    if op in ("Gather", "Slice", "Expand", "Tile"):
        return (span(first),)  # some of the values, repeated or not: each within their span
    if op in ("Cast", "CastLike"):
        to = (next((a.i for a in node.attribute if a.name == "to"), 0) if op == "Cast"
              else elem.get(node.input[1], 0) if len(node.input) > 1 else 0)
        cast = [_cast(lo, hi, to) for lo, hi in first]
        return None if any(c is None for c in cast) else tuple(c for c in cast if c is not None)
    if op == "Neg":
        return tuple((-hi, -lo) for lo, hi in first)
    if op == "Abs":
        return tuple((0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi))) for lo, hi in first)
    if any(r is None for r in ins):
        return None
    given = [r for r in ins if r is not None]
    if op == "Concat":
        whole = (span(tuple(p for r in given for p in r)),)
        # Along axis 0 the flattened elements are the inputs' in turn, whatever the rank, so vectors of known
        # length keep their positions (a shared range repeated per element); long ones are not sizes and
        # keep one range, so the per-element work stays small.
        axis0 = next((a.i for a in node.attribute if a.name == "axis"), None) == 0
        if not axis0 or any(x not in counts for x in node.input) or sum(counts[x] for x in node.input) > MAX_FOLD_ELEMENTS:
            return whole
        if any(len(r) not in (1, counts[x]) for r, x in zip(given, node.input, strict=True)):
            return whole
        return tuple(p for r, x in zip(given, node.input, strict=True) for p in (r if len(r) == counts[x] else r * counts[x]))
    if op in ("Max", "Min", "Add", "Sub", "Mul"):
        return _elementwise(op, given)
    return None


def _elementwise(op: str, given: list[Ranges]) -> Ranges | None:
    """Interval arithmetic, element by element where the lengths agree (a length-1 side broadcasts)."""
    length = max(len(r) for r in given)
    if any(len(r) not in (1, length) for r in given):
        given = [(span(r),) for r in given]
        length = 1
    out = []
    for i in range(length):
        pairs = [r[i] if len(r) > 1 else r[0] for r in given]
        if op == "Max":
            out.append((max(p[0] for p in pairs), max(p[1] for p in pairs)))
        elif op == "Min":
            out.append((min(p[0] for p in pairs), min(p[1] for p in pairs)))
        elif len(pairs) != 2:
            return None
        else:
            (a, b), (c, d) = pairs
            if op == "Add":
                pair = (a + c, b + d)
            elif op == "Sub":
                pair = (a - d, b - c)
            else:
                products = (a * c, a * d, b * c, b * d)
                pair = (min(products), max(products))
            if max(abs(pair[0]), abs(pair[1])) > _EXACT:
                return None
            out.append(pair)
    return tuple(out)


def _cast(lo: float, hi: float, to: int) -> Range | None:
    if to == TensorProto.BOOL:
        return (0.0, 1.0)
    if to in _FLOAT:
        return (lo, hi)
    if to in _INTEGER:
        info = np.iinfo(np.dtype(TensorProto.DataType.Name(to).lower()))
        # Floats truncate toward zero; a value outside the target type wraps, and then nothing is known.
        lo, hi = math.floor(lo), math.ceil(hi)
        return (lo, hi) if info.min <= lo and hi <= info.max else None
    return None
