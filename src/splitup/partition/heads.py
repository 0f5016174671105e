"""Attention split by groups of KV heads.

A decoder block's attention is a region from its q/k/v projections (``MatMul`` by a weight, then a
``Reshape`` that splits the last axis into heads) to its output projection (a ``MatMul`` by a weight
of the merged heads). Every head is computed independently of the others until the output
projection, so a group of KV heads with its query heads, its columns of q/k/v, its slice of the KV
cache and the matching rows of the output projection is a self-contained part whose output is a
partial sum of the block's attention output; the next part adds its own.

Nothing here knows the model family. Finding a region follows one *head axis* through the graph: it
starts at the projections' outputs (their last axis, heads outer) and is carried through each op by a
rule for that op (elementwise broadcasting, ``Reshape``, ``Transpose``, ``(Un)Squeeze``, ``Expand``,
batched ``MatMul``, ``Softmax``, ``ScatterElements``, ``Concat``, ``Slice``); an op the rules do not
cover, or a tensor of the region read outside it, and there is no site. A part slices every tracked
axis by the same fraction (its KV heads over all of them), so GQA's query heads follow their KV head
through ``repeat_kv``'s ``Expand`` + ``Reshape``.

State inputs read only inside the region become per-part state: a cache whose head axis is tracked is
sliced (``past.0.key`` -> ``past.0#0.key``, ``past.0#1.key``, ... with their ``present`` outputs), and a small one
that is not (the cache's filled length) is copied, so that every task holding a slice of a cache
also holds its length, as the runtimes' KV-cache layout expects. Nodes that only feed the region
(positions, the rotary tables' lookups, masks) are recomputed in every part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from splitup.graph.shapes import TensorType
from splitup.graph.sizes import tensor_bytes
from splitup.partition.cost import GraphAnalysis

# A state input that is not sliced is copied into every part; only small ones (lengths) are.
MAX_COPIED_STATE = 4096

_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Not", "And", "Or", "Xor", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "Cast", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Erf",
    "Tanh", "Sigmoid", "Relu", "Identity", "Softplus", "Gelu", "IsNaN", "IsInf", "Sign", "Floor", "Ceil",
})


class _NoSite(Exception):
    """The region does not follow the rules; the block is left to the other splits."""


@dataclass(frozen=True)
class HeadRegion:
    """What one part of an attention split recomputes, and how each tensor is sliced.

    ``axis`` maps every tensor the region makes (and each state input it owns) to its head axis, or to
    None for one every part computes whole. ``nodes`` (positions, in order) include the projections
    (``seeds``) but not the output projection (``sink``).
    """

    groups: int
    nodes: tuple[int, ...]
    seeds: tuple[int, ...]
    sink: int
    axis: dict[str, int | None]
    states: tuple[str, ...]
    sliced: dict[str, int]  # initializer -> axis sliced with the heads (q/k/v columns, biases)
    # Per node, worked out once (a plan clones ~80 nodes per part, several times): (position, node, op, name,
    # how each input becomes the part's: 0 as is, 1 the part's tensor, 2 a weight slice, 3 the part's
    # Reshape shape; output names; (output, head axis, type) of each; whether its work scales with heads)
    template: tuple = ()
    # What a part reads from outside it: (kind, name) as in ``template`` (shared tensors, state, weights)
    externals: tuple[tuple[int, str], ...] = ()
    # Blocks of one model share their shapes: part_summary's results by (heads, signature), where the
    # signature is the op sequence, reading pattern and output types (the same block of a repeated stack)
    summaries: dict = field(default_factory=dict, compare=False)
    signature: tuple = ()


def _const(a: GraphAnalysis, name: str) -> np.ndarray | None:
    node = a.constants.get(name)
    if node is not None:
        return numpy_helper.to_array(node.attribute[0].t)
    t = a.initializers.get(name)
    if t is not None and t.data_location != onnx.TensorProto.EXTERNAL and math.prod(t.dims) <= 64:
        return numpy_helper.to_array(t)
    return None


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for at in node.attribute:
        if at.name == name:
            return onnx.helper.get_attribute_value(at)
    return default


def _shape(a: GraphAnalysis, name: str) -> tuple[int, ...]:
    return tuple(a.types[name].shape)


def _heads_of_seed(a: GraphAnalysis, i: int, consumers: dict[str, list[int]]) -> int | None:
    """Heads of a projection: its only reader reshapes the last axis into (heads, head_dim)."""
    out = a.io[i][1][0]
    readers = consumers.get(out, [])
    if len(readers) != 1 or a.nodes[readers[0]].op_type != "Reshape" or out not in a.types:
        return None
    r = a.io[readers[0]][1][0]
    if r not in a.types:
        return None
    src, dst = _shape(a, out), _shape(a, r)
    if len(dst) != len(src) + 1 or dst[:-2] != src[:-1] or dst[-2] * dst[-1] != src[-1] or dst[-2] < 2:
        return None
    return dst[-2]


def find_head_sites(a: GraphAnalysis, readers: dict[str, int], consumers: dict[str, list[int]],
                    taken: set[int], weight) -> list[HeadRegion]:  # noqa: ANN001 - refine._weight
    """Every attention region that can be split by groups of KV heads (none overlapping ``taken``)."""
    regions: list[HeadRegion] = []
    summaries: dict = {}  # shared by the regions of one graph: its blocks repeat
    pending: dict[int, int] = {}
    outputs = set(a.graph_outputs)
    states_from: dict[int, list[str]] = {}  # first reader -> the state inputs it reads first
    for s in a.state:
        if s in a.first_use:
            states_from.setdefault(a.first_use[s], []).append(s)
    ops = [n.op_type for n in a.nodes]
    seen: dict[tuple, HeadRegion] = {}  # blocks of a stack repeat: a region found once is translated
    for i, op in enumerate(ops):
        inputs = a.io[i][0]
        if op != "MatMul" or len(inputs) != 2 or not weight(a, inputs[1], readers) or inputs[0] in a.initializers \
                or i in taken:
            continue
        heads = _heads_of_seed(a, i, consumers)
        if heads is not None:
            pending[i] = heads
            continue
        if pending:
            groups = math.gcd(*pending.values())
            if groups >= 2:
                start = min(pending)
                own = {s for p in range(start, i) for s in states_from.get(p, ()) if a.last_use[s] < i}
                key = (i - start, tuple(p - start for p in pending), groups)
                region = None
                base = seen.get(key)
                if base is not None:
                    first = min(base.seeds)
                    if ops[first : base.sink + 1] == ops[start : i + 1]:
                        region = _translate(a, base, start - first, consumers, outputs, own, readers)
                if region is None:
                    try:
                        region = _region(a, tuple(pending), i, groups, consumers, outputs, own, summaries)
                        seen[key] = region
                    except _NoSite:
                        pass
                if region is not None:
                    regions.append(region)
            pending = {}
    return regions


def _value_key(a: GraphAnalysis, name: str) -> tuple:
    """A constant's or small initializer's value, comparable without decoding it (a large or external
    weight compares by its shape, which ``types`` already did)."""
    node = a.constants.get(name)
    t = node.attribute[0].t if node is not None else a.initializers[name]
    if t.data_location == onnx.TensorProto.EXTERNAL or math.prod(t.dims) > 64:
        return ()
    return (t.data_type, tuple(t.dims), t.raw_data, tuple(t.int64_data), tuple(t.int32_data), tuple(t.float_data),
            tuple(t.double_data))


def _translate(a: GraphAnalysis, r: HeadRegion, delta: int, consumers: dict[str, list[int]], outputs: set[str],
               own_states: set[str], readers: dict[str, int]) -> HeadRegion | None:
    """``r`` moved ``delta`` nodes on, if the block there is wired, typed and parameterised the same
    (a copy of the same layer); None when anything differs (then the region is traced afresh)."""
    names: dict[str, str] = {}
    back: dict[str, str] = {}
    first = min(r.seeds)
    for p in range(first, r.sink + 1):
        (i0, o0), (i1, o1) = a.io[p], a.io[p + delta]
        if len(i0) != len(i1) or len(o0) != len(o1):
            return None
        for x0, x in zip((*i0, *o0), (*i1, *o1), strict=True):
            if names.setdefault(x0, x) != x or back.setdefault(x, x0) != x0:
                return None
    inside = {p + delta for p in r.nodes}
    for x0, x in names.items():
        if a.types.get(x0) != a.types.get(x) or (x0 in a.constants) != (x in a.constants) \
                or (x0 in a.initializers) != (x in a.initializers):
            return None
        if x0 != x and (x0 in a.constants or x0 in a.initializers and x0 not in r.sliced) \
                and _value_key(a, x0) != _value_key(a, x):
            return None  # a shape, axes or scalar that the rules read (or the model computes with)
    for p in r.nodes:
        if a.nodes[p].attribute != a.nodes[p + delta].attribute:
            return None
    states = {names[s] for s in r.states}
    if states != own_states or any(names[w] not in a.initializers or readers.get(names[w]) != 1 for w in r.sliced):
        return None
    presents = {a.state[s] for s in states}
    for p in inside:
        for o in a.io[p][1]:
            if o and (o in outputs and o not in presents
                      or any(c not in inside and c != r.sink + delta for c in consumers.get(o, []))):
                return None
    if any(a.state.get(names[s]) != names[a.state[s]] for s in r.states):
        return None

    def moved(how: tuple[tuple[int, str], ...]) -> tuple[tuple[int, str], ...]:
        return tuple((kind, names.get(x, x)) for kind, x in how)

    template = tuple(
        (p + delta, a.nodes[p + delta], op, a.nodes[p + delta].name, moved(how), tuple(names.get(o, o) for o in out_names),
         tuple((names[o], t, tt) for o, t, tt in outs), scaled)
        for p, _, op, _, how, out_names, outs, scaled in r.template)
    return HeadRegion(r.groups, tuple(sorted(inside)), tuple(p + delta for p in r.seeds), r.sink + delta,
                      {names[x]: t for x, t in r.axis.items()}, tuple(sorted(states)),
                      {names[w]: t for w, t in r.sliced.items()}, template, moved(r.externals), r.summaries,
                      r.signature)


def _region(a: GraphAnalysis, seeds: tuple[int, ...], sink: int, groups: int, consumers: dict[str, list[int]],
            outputs: set[str], own_states: set[str], summaries: dict) -> HeadRegion:
    start = min(seeds)
    axis: dict[str, int | None] = {}
    member: list[int] = []
    sliced: dict[str, int] = {}
    for p in range(start, sink):
        inputs, outs = a.io[p]
        if p in seeds:
            axis[outs[0]] = len(_shape(a, outs[0])) - 1
            sliced[inputs[1]] = 1
            member.append(p)
            continue
        if not any(x in axis or x in own_states for x in inputs if x):
            continue
        _track(a, p, axis, own_states, sliced)
        member.append(p)
    sink_in = a.io[sink][0][0]
    if axis.get(sink_in) != len(_shape(a, sink_in)) - 1:
        raise _NoSite
    inside = set(member)
    # Nodes of the block that only feed the region are recomputed by every part.
    for p in range(sink - 1, start - 1, -1):
        if p in inside:
            continue
        outs = [o for o in a.io[p][1] if o]
        if outs and all(o not in outputs and consumers.get(o) and all(c in inside for c in consumers[o])
                        for o in outs):
            inside.add(p)
            for o in outs:
                axis[o] = None
    presents = {a.state[s] for s in own_states}
    for p in inside:
        for o in a.io[p][1]:
            if not o:
                continue
            if o in outputs and o not in presents:
                raise _NoSite
            if any(c not in inside and c != sink for c in consumers.get(o, [])):
                raise _NoSite
    for s in own_states:
        if s not in axis:
            raise _NoSite  # read only by nodes the region does not hold
        if any(c not in inside for c in consumers.get(s, [])) or a.state[s] not in axis:
            raise _NoSite
        if axis[a.state[s]] != axis[s]:
            raise _NoSite
        if axis[s] is None and a.nbytes(s) > MAX_COPIED_STATE:
            raise _NoSite
    for name, t in axis.items():
        if t is not None and _shape(a, name)[t] % groups:
            raise _NoSite
    for name, t in sliced.items():
        if a.initializers[name].dims[t] % groups:
            raise _NoSite
    nodes = tuple(sorted(inside))
    template = []
    for p in nodes:
        inputs, names = a.io[p]
        reshaped = a.nodes[p].op_type == "Reshape" and axis.get(inputs[0]) is not None
        how = tuple((2 if x in sliced else 3 if j == 1 and reshaped else 1 if x in axis else 0, x)
                    for j, x in enumerate(inputs))
        outs = tuple((o, axis[o], a.types[o]) for o in names if o)
        node = a.nodes[p]
        template.append((p, node, node.op_type, node.name, how, names, outs, bool(outs) and outs[-1][1] is not None))
    externals: dict[tuple[int, str], None] = {}
    for _, _, _, _, how, _, _, _ in template:
        for kind, x in how:
            if kind == 0 and x and x not in a.constants or kind == 1 and x in own_states or kind == 2:
                externals[(kind, x)] = None
    signature = (groups, tuple((op, tuple(kind for kind, _ in how), outs and outs[-1][1:])
                               for _, _, op, _, how, _, outs, _ in template))
    return HeadRegion(groups, nodes, seeds, sink, axis, tuple(sorted(own_states)), sliced, tuple(template),
                      tuple(externals), summaries, signature)


def _aligned(t: int, rank_in: int, rank_out: int) -> int:
    return t + rank_out - rank_in


def _track(a: GraphAnalysis, p: int, axis: dict[str, int | None], own_states: set[str],
           sliced: dict[str, int]) -> None:
    """Set the head axis of node ``p``'s output from its inputs', or raise ``_NoSite``."""
    node = a.nodes[p]
    op = node.op_type
    ins, outs = a.io[p]
    out = outs[0] if outs else ""
    if len([o for o in outs if o]) != 1 or out not in a.types:
        raise _NoSite
    rank = len(_shape(a, out))
    tracked = {x: axis[x] for x in ins if x in axis and axis[x] is not None}
    if not tracked:
        # Nothing sliced reaches it (a length, positions, a mask): every part computes it whole, and a
        # state input it reads is copied into every part.
        for x in ins:
            if x in own_states and x not in axis:
                axis[x] = None
        axis[out] = None
        return
    # A state input read beside a tracked operand of the same rank takes that operand's head axis.
    if op in ("ScatterElements", "Concat"):
        t0 = next(iter(tracked.values()))
        for x in ins:
            if x in own_states and x not in axis and len(_shape(a, x)) == rank:
                axis[x] = tracked[x] = t0
    for x in ins:
        if x in own_states and x not in axis:
            axis[x] = None
    if op in _ELEMENTWISE:
        ts = set()
        for x in ins:
            if not x:
                continue
            shape = _shape(a, x)
            if x in tracked:
                ts.add(_aligned(tracked[x], len(shape), rank))
        if len(ts) != 1:
            raise _NoSite
        t = ts.pop()
        for x in ins:
            if not x or x in tracked:
                continue
            shape = _shape(a, x)
            k = t - (rank - len(shape))
            if k < 0 or shape[k] == 1:
                continue
            if x in a.initializers and x not in sliced and shape[k] == _shape(a, out)[t]:
                sliced[x] = k  # a bias of the heads: sliced with them
                continue
            raise _NoSite
        axis[out] = t
    elif op == "Transpose":
        perm = list(_attr(node, "perm", range(rank - 1, -1, -1)))
        axis[out] = perm.index(tracked[ins[0]])
    elif op in ("Unsqueeze", "Squeeze"):
        t = tracked.get(ins[0])
        if t is None:
            raise _NoSite
        given = _const(a, ins[1]) if len(ins) > 1 and ins[1] else _attr(node, "axes")
        if given is None:
            raise _NoSite
        if op == "Unsqueeze":
            added = sorted(int(x) % rank for x in np.ravel(given))
            kept = [k for k in range(rank) if k not in added]
            axis[out] = kept[t]
        else:
            in_rank = len(_shape(a, ins[0]))
            removed = {int(x) % in_rank for x in np.ravel(given)}
            if t in removed:
                raise _NoSite
            axis[out] = t - sum(1 for r in removed if r < t)
    elif op == "Reshape":
        t = tracked.get(ins[0])
        if t is None or ins[1] in tracked:
            raise _NoSite
        axis[out] = _reshaped_axis(a, node, t)
    elif op == "Expand":
        t = tracked.get(ins[0])
        shape = _const(a, ins[1]) if t is not None and ins[1] not in tracked else None
        if shape is None:
            raise _NoSite
        t2 = _aligned(t, len(_shape(a, ins[0])), rank)
        k = t2 - (rank - len(shape))
        if k >= 0 and int(shape[k]) not in (1, -1):
            raise _NoSite
        axis[out] = t2
    elif op == "MatMul":
        if len(ins) != 2:
            raise _NoSite
        ts = set()
        for x in ins:
            shape = _shape(a, x)
            if len(shape) < 2:
                raise _NoSite
            if x in tracked:
                ts.add(_aligned(tracked[x], len(shape), rank))
            elif x in a.initializers:
                raise _NoSite
        t = ts.pop() if len(ts) == 1 else -1
        if t < 0 or t >= rank - 2:
            raise _NoSite
        for x in ins:
            if x not in tracked:
                shape = _shape(a, x)
                k = t - (rank - len(shape))
                if k >= 0 and shape[k] != 1:
                    raise _NoSite
        axis[out] = t
    elif op in ("Softmax", "LogSoftmax"):
        t = tracked[ins[0]]
        if int(_attr(node, "axis", -1)) % rank == t:
            raise _NoSite
        axis[out] = t
    elif op in ("ScatterElements", "Concat"):
        ts = set(tracked.values())
        if len(ts) != 1 or any(x and x not in tracked for x in ins):
            raise _NoSite
        t = ts.pop()
        if int(_attr(node, "axis", 0)) % rank == t:
            raise _NoSite
        axis[out] = t
    elif op == "Slice":
        t = tracked.get(ins[0])
        if t is None or any(x in tracked for x in ins[1:]):
            raise _NoSite
        starts = _const(a, ins[1])
        axes = _const(a, ins[3]) if len(ins) > 3 and ins[3] else np.arange(len(starts) if starts is not None else 0)
        if starts is None or axes is None:
            raise _NoSite
        axes = [int(x) % rank for x in np.ravel(axes)]
        if t in axes:  # one head picked for its shape alone (a cache's slots): every part has one
            if _shape(a, out)[t] != 1 or int(np.ravel(starts)[axes.index(t)]) != 0:
                raise _NoSite
            axis[out] = None
        else:
            axis[out] = t
    else:
        raise _NoSite


def _reshaped_axis(a: GraphAnalysis, node: onnx.NodeProto, t: int) -> int:
    """Where a head axis goes through a ``Reshape``: the output axis whose outer dimensions multiply to
    those outside the input's head axis, so a fraction of the one is the same fraction of the other."""
    src, dst = _shape(a, node.input[0]), _shape(a, node.output[0])
    spec = _const(a, node.input[1])
    if spec is None or len(spec) != len(dst):
        raise _NoSite
    outer = math.prod(src[:t])
    for k in range(len(dst)):
        if math.prod(dst[:k]) == outer and dst[k] > 1:
            for j, v in enumerate(np.ravel(spec)):
                if v == 0 and (j == t) != (j == k):
                    raise _NoSite  # a copied dimension would not be the one sliced
            return k
    raise _NoSite


def reshape_spec(a: GraphAnalysis, node: onnx.NodeProto, k: int, lo: int, hi: int, groups: int) -> np.ndarray:
    """The shape constant of a part's ``Reshape`` (head axis ``k`` holds the part's heads)."""
    spec = np.array(_const(a, node.input[1]), copy=True)
    if spec[k] > 0:
        spec[k] = spec[k] * (hi - lo) // groups
    return spec


def part_name(name: str, tag: str) -> str:
    """A state input's or output's name in a part: the tag before its last field (``past.3.key`` ->
    ``past.3#1.key``), so that what runtimes read off the suffix (``.length``) still holds."""
    head, dot, last = name.rpartition(".")
    return f"{head}{tag}.{last}" if dot else name + tag


def part_type(tt: TensorType, t: int | None, lo: int, hi: int, groups: int) -> TensorType:
    if t is None:
        return tt
    shape = list(tt.shape)
    shape[t] = shape[t] * (hi - lo) // groups
    return TensorType(tt.elem_type, tuple(shape))


def part_summary(a: GraphAnalysis, r: HeadRegion, heads: int) -> tuple[int, int]:
    """(peak bytes live inside, FLOPs) of a part holding ``heads`` of the region's ``groups`` KV heads.

    A sketch stands one node for each part with this peak (what the part's own nodes hold at once,
    its outputs included), instead of the ~80 nodes the part is written with: the planner sees the
    same weights, state, FLOPs and crossings, and a peak that counts the part's inputs for its whole
    run (they are live across the part at least until their last read)."""
    key = (heads, r.signature)
    if key in r.summaries:
        return r.summaries[key]
    of = r.groups
    last: dict[str, int] = {}
    for k, (_, _, _, _, how, _, _, _) in enumerate(r.template):
        for kind, x in how:
            if kind == 1:
                last[x] = k
    sink_in = a.io[r.sink][0][0]
    kept = {sink_in} | {a.state[s] for s in r.states}
    size: dict[str, int] = {}
    live = peak = flops = 0
    for k, (p, _, _, _, how, _, outs, scaled) in enumerate(r.template):
        for o, t, tt in outs:
            pt = tt if t is None else part_type(tt, t, 0, heads, of)
            size[o] = tensor_bytes(pt.elem_type, pt.shape, where=f"tensor {o}")
            live += size[o]
        peak = max(peak, live)
        flops += a.flops[p] * heads // of if scaled else a.flops[p]
        for kind, x in how:
            if kind == 1 and last.get(x) == k and x in size and x not in kept:
                live -= size.pop(x)
        for o, _, _ in outs:
            if o not in last and o not in kept and o in size:
                live -= size.pop(o)
    r.summaries[key] = (peak, flops)
    return peak, flops
