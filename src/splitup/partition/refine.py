"""Splitting operators along a tensor dimension, so that a task can end inside one.

Whole transformer blocks (or their attention and MLP halves) are coarse units: a 405B layer is ~6 GiB,
so at 24 GiB a third of every GPU can stay empty, and an lm_head larger than the budget cannot be
placed at all. This pass rewrites the graph into finer *ordinary* default-domain ops, so tasks stay
plain data that validate and run on every engine:

- **MLP regions** (``MatMul`` up/gate projections, an elementwise chain, a ``MatMul`` down projection):
  groups of intermediate columns; each group's down projection gives a partial sum of the output and
  the next group adds its own (``Add``). Only the inputs and the running sum cross a cut inside.
- **Column splits** of any other large ``MatMul``/``Gemm`` (attention projections, the lm_head's
  vocabulary): parts computed one after the other and joined by a ``Concat``.
- **Vocabulary ranges** of an embedding ``Gather``: each range gathers its rows where the id falls in
  it and zeros elsewhere (``Where``), and the parts are added; exactly one part is non-zero per token.
- **Groups of KV heads** of an attention block (``splitup.partition.heads``): each part computes its
  query and KV heads, owns its slice of the KV cache as state, and adds its rows of the output
  projection to the running sum.

Every new cut's crossing tensors are sized like any other, so :func:`plan_partition` only keeps a
split where the partitioner's objective (fewest tasks, then the slowest stage) improves, and then only
at the group boundaries its cuts use.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitup.graph.meta import STATE_KEY
from splitup.graph.shapes import TensorType
from splitup.graph.sizes import tensor_bytes
from splitup.partition.cost import GraphAnalysis, index_uses, node_flops
from splitup.partition.heads import (
    HeadRegion,
    find_head_sites,
    part_name,
    part_summary,
    part_type,
    reshape_spec,
)
from splitup.partition.partitioner import DEFAULT_WORKSPACE, Partition, PartitionError, partition

# Units of roughly this fraction of the smallest budget: fine enough to fill a node to within a few
# percent, coarse enough to keep the graph and the DP small.
GRAIN_FRACTION = 32
MAX_PARTS = 64

_UNARY = frozenset({
    "Abs", "Celu", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu",
    "Mish", "Neg", "Relu", "Selu", "Sigmoid", "Softplus", "Softsign", "Sqrt", "Tanh",
})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})


@dataclass(frozen=True)
class Site:
    """One operator (or MLP region) that can be split along a dimension of length ``extent``.

    ``nodes`` are indices into ``GraphAnalysis.nodes`` that the rewrite replaces; it is emitted at the
    position of the last one (``anchor``), where every input of the region exists.
    """

    kind: str  # "mlp", "columns", "vocab" or "heads"
    anchor: int
    nodes: tuple[int, ...]
    extent: int
    weight_bytes: int
    leaves: tuple[tuple[int, int | None], ...] = ()  # mlp: (MatMul, bias Add or None) per input projection
    region: HeadRegion | None = None  # heads: what each part recomputes (extent: the KV heads' gcd)


@dataclass(frozen=True)
class Refined:
    """A rewritten graph, its analysis, and where the parts of each split site meet."""

    analysis: GraphAnalysis
    cuts: dict[int, tuple[int, int]]  # node position (cut before it) -> (site, column where a part starts)
    spans: dict[int, tuple[int, int]]  # site -> node positions [first, last] of its rewrite
    all_nodes: list[onnx.NodeProto]  # Constants included, in order
    # Graph inputs and outputs split into parts (a KV cache by heads): name -> (part name, axis, lo, hi, of)
    io_parts: dict[str, list[tuple[str, int | None, int, int, int]]] = dataclasses.field(default_factory=dict)
    sketch: bool = False

    def finish(self) -> GraphAnalysis:
        """The analysis with its rewritten model (built only for the plan that is kept)."""
        if self.sketch:
            raise ValueError("a sketch is only sized: refine again without sketch to write it")
        a = self.analysis
        model = onnx.ModelProto()
        model.ir_version = a.model.ir_version
        model.producer_name = a.model.producer_name
        model.opset_import.extend(a.model.opset_import)
        for p in a.model.metadata_props:
            if p.key == STATE_KEY and self.io_parts:
                model.metadata_props.add(key=STATE_KEY, value=json.dumps(a.state, sort_keys=True))
            else:
                model.metadata_props.append(p)
        g = model.graph
        g.name = a.model.graph.name
        g.input.extend(p for i in a.model.graph.input if i.name in a.graph_inputs or i.name in self.io_parts
                       for p in self._parts(i))
        g.output.extend(p for o in a.model.graph.output for p in self._parts(o))
        g.node.extend(self.all_nodes)
        g.initializer.extend(a.initializers.values())
        return dataclasses.replace(a, model=model)

    def _parts(self, vi: onnx.ValueInfoProto) -> Iterator[onnx.ValueInfoProto]:
        for new, axis, lo, hi, of in self.io_parts.get(vi.name, [(vi.name, None, 0, 1, 1)]):
            part = onnx.ValueInfoProto()
            part.CopyFrom(vi)
            part.name = new
            if axis is not None:
                dim = part.type.tensor_type.shape.dim[axis]
                dim.dim_value = dim.dim_value * (hi - lo) // of
            yield part

    @property
    def split_cuts(self) -> frozenset[int]:
        return frozenset(self.cuts)

    def boundaries_used(self, part: Partition) -> dict[int, list[int]]:
        """Per site, the part boundaries that the partition's cuts fall on (or inside the part of)."""
        used: dict[int, set[int]] = {}
        starts = sorted(self.cuts)
        for seg in part.segments[1:]:
            p = seg.start
            if p in self.cuts:
                site, col = self.cuts[p]
                used.setdefault(site, set()).add(col)
                continue
            for site, (first, last) in self.spans.items():
                if first < p <= last:  # a cut inside a part: keep the boundaries around it
                    around = [q for q in starts if self.cuts[q][0] == site]
                    before = [q for q in around if q <= p]
                    after = [q for q in around if q > p]
                    for q in (before[-1:] + after[:1]):
                        used.setdefault(site, set()).add(self.cuts[q][1])
        return {site: sorted(cols) for site, cols in used.items()}


def _weight(a: GraphAnalysis, name: str, readers: dict[str, int], rank: int = 2) -> bool:
    t = a.initializers.get(name)
    return t is not None and len(t.dims) == rank and readers.get(name, 0) == 1 and all(d > 0 for d in t.dims)


def _scalar(a: GraphAnalysis, name: str) -> bool:
    if name in a.constants or name in a.initializers:
        t = a.types.get(name)
        if t is not None:
            return math.prod(t.shape) == 1
        if name in a.initializers:
            return math.prod(a.initializers[name].dims) == 1
    return False


def find_sites(a: GraphAnalysis) -> list[Site]:
    """Every MLP region, large MatMul/Gemm and embedding Gather that the pass knows how to split."""
    readers: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, (inputs, _) in enumerate(a.io):
        for x in dict.fromkeys(inputs):
            if x:
                readers[x] = readers.get(x, 0) + 1
                consumers.setdefault(x, []).append(i)
    outputs = set(a.graph_outputs)
    opset = next((o.version for o in a.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    sites: list[Site] = []
    taken: set[int] = set()
    for d, node in enumerate(a.nodes):
        if node.op_type == "MatMul" and len(node.input) == 2 and _weight(a, node.input[1], readers):
            region = _mlp_region(a, d, readers, consumers, outputs)
            if region is not None and taken.isdisjoint(region.nodes):  # chained MLPs: every other pair
                sites.append(region)
                taken.update(region.nodes)
    for region in find_head_sites(a, readers, consumers, taken, _weight):
        nbytes = sum(a.nbytes(w) for w in region.sliced) + a.nbytes(a.nodes[region.sink].input[1])
        sites.append(Site("heads", region.sink, (*region.nodes, region.sink), region.groups, nbytes, region=region))
        taken.update(region.nodes)
        taken.add(region.sink)
    for i, node in enumerate(a.nodes):
        if i in taken or not node.output or node.output[0] in outputs and node.op_type == "Gather":
            continue
        if node.op_type == "MatMul" and len(node.input) == 2 and _weight(a, node.input[1], readers) \
                and node.input[0] not in a.initializers:
            w = a.initializers[node.input[1]]
            sites.append(Site("columns", i, (i,), int(w.dims[1]), a.nbytes(w.name)))
        elif node.op_type == "Gemm" and _gemm_splittable(a, node, readers):
            w = a.initializers[node.input[1]]
            n = int(w.dims[0] if _attr(node, "transB") else w.dims[1])
            sites.append(Site("columns", i, (i,), n, a.nbytes(w.name)))
        elif (node.op_type == "Gather" and opset >= 13 and _attr(node, "axis") == 0
              and _weight(a, node.input[0], readers) and node.input[1] not in a.initializers
              and node.input[1] not in a.constants
              and a.types[node.input[1]].elem_type in (TensorProto.INT64, TensorProto.INT32)):
            w = a.initializers[node.input[0]]
            sites.append(Site("vocab", i, (i,), int(w.dims[0]), a.nbytes(w.name)))
    return sites


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((at.i for at in node.attribute if at.name == name), 0)


def _gemm_splittable(a: GraphAnalysis, node: onnx.NodeProto, readers: dict[str, int]) -> bool:
    if len(node.input) < 2 or not _weight(a, node.input[1], readers) or node.input[0] in a.initializers:
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    c = node.input[2]
    w = a.initializers[node.input[1]]
    n = w.dims[0] if _attr(node, "transB") else w.dims[1]
    if c in a.initializers and readers.get(c) == 1:
        dims = list(a.initializers[c].dims)
        return math.prod(dims) == 1 or (dims[-1] == n and math.prod(dims[:-1]) == 1)
    return False


def _mlp_region(a: GraphAnalysis, d: int, readers: dict[str, int], consumers: dict[str, list[int]],
                outputs: set[str]) -> Site | None:
    """The elementwise region feeding down projection ``d`` from column-splittable projections."""
    down = a.nodes[d]
    m = down.input[0]
    if m not in a.types or m in outputs or consumers.get(m) != [d]:
        return None
    shape = a.types[m].shape
    k = int(a.initializers[down.input[1]].dims[0])
    if not shape or shape[-1] != k:
        return None
    members: set[int] = set()
    leaves: list[tuple[int, int | None]] = []
    stack, seen = [m], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        p = a.producer.get(t)
        if p is None or t in outputs or a.types.get(t) is None or a.types[t].shape != shape:
            return None
        node = a.nodes[p]
        if _is_leaf_matmul(a, node, k, readers):
            leaves.append((p, None))
        elif node.op_type == "Add" and len(node.input) == 2 and (leaf := _biased_leaf(a, node, k, readers,
                                                                                      consumers)) is not None:
            leaves.append((leaf, p))
        elif node.op_type in _UNARY or node.op_type in _BINARY:
            if len(node.output) != 1:
                return None
            members.add(p)
            for x in node.input:
                if not _scalar(a, x):
                    stack.append(x)
        else:
            return None
    if not leaves:
        return None
    region = members | {mm for mm, _ in leaves} | {add for _, add in leaves if add is not None}
    inside = region | {d}
    for p in region:
        for o in a.nodes[p].output:
            if o in outputs or any(c not in inside for c in consumers.get(o, [])):
                return None
    nbytes = a.nbytes(down.input[1]) + sum(a.nbytes(a.nodes[mm].input[1]) for mm, _ in leaves)
    return Site("mlp", d, tuple(sorted(inside)), k, nbytes, tuple(sorted(leaves)))


def _is_leaf_matmul(a: GraphAnalysis, node: onnx.NodeProto, k: int, readers: dict[str, int]) -> bool:
    return (node.op_type == "MatMul" and len(node.input) == 2 and _weight(a, node.input[1], readers)
            and int(a.initializers[node.input[1]].dims[1]) == k and node.input[0] not in a.initializers)


def _biased_leaf(a: GraphAnalysis, add: onnx.NodeProto, k: int, readers: dict[str, int],
                 consumers: dict[str, list[int]]) -> int | None:
    for x, b in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        p = a.producer.get(x)
        if (p is not None and _is_leaf_matmul(a, a.nodes[p], k, readers) and _weight(a, b, readers, rank=1)
                and int(a.initializers[b].dims[0]) == k and len(consumers.get(x, [])) == 1):
            return p
    return None


def even_boundaries(site: Site, grain: int) -> list[int]:
    """Inner boundaries that cut ``site`` into parts of about ``grain`` weight bytes each, aligned to
    64 columns where the dimension allows it."""
    parts = min(MAX_PARTS, site.extent, max(1, math.ceil(site.weight_bytes / max(grain, 1))))
    if parts < 2:
        return []
    align = 64 if site.extent >= 64 * parts else 1
    cols = {round(site.extent * g / parts / align) * align for g in range(1, parts)}
    return sorted(c for c in cols if 0 < c < site.extent)


@dataclass(slots=True)
class Sketch:
    """A node of a graph that is only sized, never written: what the partitioner reads of a node.
    The first, fine solve splits every site; building ONNX protos and weight slices for all of its
    parts cost more than the solve itself, and only the parts that the kept plan cuts are written."""

    op_type: str
    name: str
    input: list[str]
    output: list[str]
    attribute: Sequence[onnx.AttributeProto] = ()
    domain: str = ""



def _named(name: str, output: str) -> str:
    """Parts of an unnamed node would all be called ``#0``, ``#1``...: onnxruntime refuses a graph with two
    nodes of one name, so those take their (unique) output's name in front."""
    return f"{output}{name}" if name.startswith("#") else name

class _Rewriter:
    def __init__(self, a: GraphAnalysis, sketch: bool = False) -> None:
        self.a = a
        self.sketch = sketch
        self.types: dict[str, TensorType] = dict(a.types)
        self.inits: dict[str, TensorProto] = {}
        self.dropped: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self._arrays: dict[str, np.ndarray] = {}
        self._consts = 0
        self.io_parts: dict[str, list[tuple[str, int | None, int, int, int]]] = {}
        self.flops: dict[int, int] = {}  # id(node) -> FLOPs of a node whose count the emitter knows

    def emit(self, op: str, inputs: list[str], output: str, name: str, tt: TensorType, **attrs: object) -> str:
        name = _named(name, output)
        if self.sketch:
            attribute = [helper.make_attribute(k, v) for k, v in attrs.items()] if op == "Gemm" else ()
            self.nodes.append(Sketch(op, name, inputs, [output], attribute))  # type: ignore[arg-type]
        else:
            self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        self.types[output] = tt
        return output

    def clone(self, node: onnx.NodeProto, op: str, name: str, inputs: list[str], outputs: list[str]) -> onnx.NodeProto:
        """``node`` (of type ``op``) with new inputs and outputs (its domain and attributes kept)."""
        name = _named(name, outputs[0] if outputs else "")
        if self.sketch:  # the partitioner reads no attributes of these ops (only Gemm's, never cloned)
            clone = Sketch(op, name, inputs, outputs)
        else:
            clone = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=name, input=inputs,
                                   output=outputs, attribute=node.attribute)
        self.nodes.append(clone)  # type: ignore[arg-type]
        return clone  # type: ignore[return-value]

    def const(self, value: np.ndarray, prefix: str) -> str:
        self._consts += 1
        name = f"{prefix}#c{self._consts}"
        if self.sketch:
            self.nodes.append(Sketch("Constant", name, [], [name]))  # type: ignore[arg-type]
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                               value=numpy_helper.from_array(value, name)))
        self.types[name] = TensorType(int(helper.np_dtype_to_tensor_dtype(value.dtype)), tuple(value.shape))
        return name

    def slice_weight(self, name: str, axis: int, lo: int, hi: int) -> str:
        """A new initializer holding ``name``'s ``[lo, hi)`` along ``axis`` (a stub if shape-only)."""
        t = self.a.initializers[name]
        self.dropped.add(name)
        new = f"{name}#{lo}-{hi}"
        dims = list(t.dims)
        dims[axis] = hi - lo
        if self.sketch:
            part = TensorProto(name=new, data_type=t.data_type, dims=dims)
        elif not self.a.has_data(t):
            part = TensorProto(name=new, data_type=t.data_type, dims=dims)
            part.data_location = TensorProto.EXTERNAL
            part.external_data.extend(t.external_data)
        else:
            if name not in self._arrays:
                self._arrays[name] = self.a.array(t)
            arr = self._arrays[name]
            index = [slice(None)] * arr.ndim
            index[axis] = slice(lo, hi)
            part = numpy_helper.from_array(np.ascontiguousarray(arr[tuple(index)]), new)
        self.inits[new] = part
        self.types[new] = TensorType(t.data_type, tuple(int(x) for x in dims))
        return new


def _with_last(tt: TensorType, n: int) -> TensorType:
    return TensorType(tt.elem_type, (*tt.shape[:-1], n))


def refine(a: GraphAnalysis, sites: Sequence[Site], boundaries: dict[int, list[int]], *, sketch: bool = False) -> Refined:
    """Rewrite ``a``'s graph with each site in ``boundaries`` split at the given inner boundaries.
    A ``sketch`` is only sized: its nodes are ``Sketch``es and its weight slices hold no data, so it
    can be solved but not finished."""
    plan = {s: [0, *cols, sites[s].extent] for s, cols in boundaries.items() if cols}
    # A rewrite goes where the last node it replaces was; an embedding's goes as early as its ids
    # exist, so that no KV-cache input read in between (GPT-2 reads the cache's length for its
    # positions first) ties its vocabulary ranges into one unit.
    emit_at: dict[int, list[int]] = {}
    for s in plan:
        site = sites[s]
        at = a.producer.get(a.nodes[site.anchor].input[1], -1) + 1 if site.kind == "vocab" else site.anchor
        emit_at.setdefault(at, []).append(s)
    replaced = {i for s in plan for i in sites[s].nodes}
    rw = _Rewriter(a, sketch)
    group_starts: dict[str, tuple[int, int]] = {}  # first node name of a part -> (site, column)
    site_nodes: dict[int, tuple[str, str]] = {}
    index = 0
    for node in a.model.graph.node:
        if node.op_type == "Constant":
            rw.nodes.append(node)
            continue
        i, index = index, index + 1
        for s in emit_at.get(i, ()):
            site, cols = sites[s], plan[s]
            first = len(rw.nodes)
            emit = {"mlp": _emit_mlp, "columns": _emit_columns, "vocab": _emit_vocab, "heads": _emit_heads}[site.kind]
            starts = emit(rw, site, cols)
            for col, pos in starts.items():
                while rw.nodes[pos].op_type == "Constant":
                    pos += 1
                group_starts[rw.nodes[pos].name] = (s, col)
            real = [n for n in rw.nodes[first:] if n.op_type != "Constant"]
            site_nodes[s] = (real[0].name, real[-1].name)
        if i not in replaced:
            rw.nodes.append(node)
    nodes = [n for n in rw.nodes if n.op_type != "Constant"]
    old_flops = {id(n): f for n, f in zip(a.nodes, a.flops, strict=True)} | rw.flops
    old_io = {id(n): io for n, io in zip(a.nodes, a.io, strict=True)}
    initializers = {name: t for name, t in a.initializers.items() if name not in rw.dropped} | rw.inits
    parts = rw.io_parts

    def expand(names: list[str]) -> list[str]:
        return [p[0] for x in names for p in parts.get(x, [(x,)])]

    state = {k: v for k, v in a.state.items() if k not in parts}
    for k, v in a.state.items():
        if k in parts:
            state.update((p[0], q[0]) for p, q in zip(parts[k], parts[v], strict=True))
    analysis = GraphAnalysis(
        model=a.model,  # replaced by the rewritten model once this analysis is chosen (Refined.finish)
        nodes=nodes,
        constants={n.output[0]: n for n in rw.nodes if n.op_type == "Constant"},
        types=rw.types,
        flops=[old_flops[id(n)] if id(n) in old_flops else node_flops(n, rw.types) for n in nodes],
        initializers=initializers,
        graph_inputs=expand([x for x in a.graph_inputs if x not in rw.dropped]),  # old exporters list weights as inputs
        graph_outputs=expand(a.graph_outputs),
        state=state,
        dim_max=a.dim_max,
        weights_dir=a.weights_dir,
        _sizes=dict(a._sizes),
        io=[old_io.get(id(n)) or (tuple(n.input), tuple(n.output)) for n in nodes],
    )
    index_uses(analysis)
    position = {n.name: p for p, n in enumerate(nodes)}
    cuts = {position[name]: sc for name, sc in group_starts.items()}
    spans = {s: (position[f], position[last]) for s, (f, last) in site_nodes.items()}
    return Refined(analysis, cuts, spans, rw.nodes, parts, sketch)


def _groups(rw: _Rewriter, cols: list[int], starts: dict[int, int]) -> Iterator[tuple[int, int, int]]:
    """(part, first column, end column) for each part, noting where each part after the first starts."""
    for g, (lo, hi) in enumerate(itertools.pairwise(cols)):
        if g:
            starts[lo] = len(rw.nodes)
        yield g, lo, hi


def _running_sum(rw: _Rewriter, acc: str, part: str, g: int, last: int, y: str, name: str, tt: TensorType) -> str:
    """Add part ``g`` to the sum so far; the last addition makes the original output ``y``."""
    if g == 0:
        return part
    return rw.emit("Add", [acc, part], y if g == last else f"{y}#sum{g}", name, tt)


def _emit_columns(rw: _Rewriter, site: Site, cols: list[int]) -> dict[int, int]:
    a = rw.a
    node = a.nodes[site.anchor]
    y = node.output[0]
    gemm = node.op_type == "Gemm"
    trans_b = _attr(node, "transB") if gemm else 0
    starts: dict[int, int] = {}
    parts = []
    for g, lo, hi in _groups(rw, cols, starts):
        inputs = [node.input[0], rw.slice_weight(node.input[1], 0 if trans_b else 1, lo, hi)]
        if gemm and len(node.input) > 2 and node.input[2]:
            c = node.input[2]
            dims = list(a.initializers[c].dims)
            inputs.append(rw.slice_weight(c, len(dims) - 1, lo, hi) if math.prod(dims) > 1 else c)
        attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        parts.append(rw.emit(node.op_type, inputs, f"{y}#{g}", f"{node.name}#{g}",
                             _with_last(a.types[y], hi - lo), **attrs))
    rw.emit("Concat", parts, y, f"{node.name}#concat", a.types[y], axis=-1)
    return starts


def _emit_mlp(rw: _Rewriter, site: Site, cols: list[int]) -> dict[int, int]:
    a = rw.a
    down = a.nodes[site.anchor]
    y = down.output[0]
    members = [i for i in site.nodes if i != site.anchor and all(i != add and i != mm for mm, add in site.leaves)]
    starts: dict[int, int] = {}
    acc = ""
    for g, lo, hi in _groups(rw, cols, starts):
        names: dict[str, str] = {}  # region tensor -> this part's slice of it
        for mm, add in site.leaves:
            node = a.nodes[mm]
            out = node.output[0]
            names[out] = rw.emit("MatMul", [node.input[0], rw.slice_weight(node.input[1], 1, lo, hi)], f"{out}#{g}",
                                 f"{node.name}#{g}", _with_last(a.types[out], hi - lo))
            if add is not None:
                an = a.nodes[add]
                ins = [names[x] if x == out else rw.slice_weight(x, 0, lo, hi) for x in an.input]
                names[an.output[0]] = rw.emit("Add", ins, f"{an.output[0]}#{g}", f"{an.name}#{g}",
                                              _with_last(a.types[an.output[0]], hi - lo))
        for i in members:
            node = a.nodes[i]
            out = node.output[0]
            attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute}
            names[out] = rw.emit(node.op_type, [names.get(x, x) for x in node.input], f"{out}#{g}", f"{node.name}#{g}",
                                 _with_last(a.types[out], hi - lo), **attrs)
        partial = rw.emit("MatMul", [names[down.input[0]], rw.slice_weight(down.input[1], 0, lo, hi)],
                          f"{y}#{g}", f"{down.name}#{g}", a.types[y])
        acc = _running_sum(rw, acc, partial, g, len(cols) - 2, y, f"{down.name}#sum{g}", a.types[y])
    return starts


def _emit_heads(rw: _Rewriter, site: Site, cols: list[int]) -> dict[int, int]:
    a = rw.a
    r = site.region
    assert r is not None
    sink = a.nodes[r.sink]
    y = sink.output[0]
    of = r.groups
    starts: dict[int, int] = {}
    acc = ""
    types, flops = rw.types, rw.flops
    stateful = {*r.states, *(a.state[s] for s in r.states)}
    for g, lo, hi in _groups(rw, cols, starts):
        tag = f"#{g}"
        if rw.sketch:
            _sketch_heads_part(rw, r, tag, lo, hi)
        for p, node, op, name, how, names, outs, scaled in () if rw.sketch else r.template:
            ins = []
            for kind, x in how:
                if kind == 0:
                    ins.append(x)
                elif kind == 1:
                    ins.append(part_name(x, tag) if x in stateful else x + tag)
                elif kind == 2:
                    t = r.sliced[x]
                    n = int(a.initializers[x].dims[t])
                    ins.append(rw.slice_weight(x, t, n * lo // of, n * hi // of))
                else:
                    ins.append(rw.const(reshape_spec(a, node, r.axis[node.output[0]] or 0, lo, hi, of), node.name))
            news = [(part_name(o, tag) if o in stateful else o + tag) if o else o for o in names]
            clone = rw.clone(node, op, name + tag, ins, news)
            for (_, t, tt), new in zip(outs, (x for x in news if x), strict=True):
                types[new] = tt if t is None else part_type(tt, t, lo, hi, of)
            # Sliced work scales with the part's heads; whole work (positions, masks) is repeated.
            flops[id(clone)] = a.flops[p] * (hi - lo) // of if scaled else a.flops[p]
        for s in r.states:
            for x in (s, a.state[s]):
                types[part_name(x, tag)] = part_type(a.types[x], r.axis[x], lo, hi, of)
                rw.io_parts.setdefault(x, []).append((part_name(x, tag), r.axis[x], lo, hi, of))
        k = int(a.initializers[sink.input[1]].dims[0])
        partial = rw.emit("MatMul", [sink.input[0] + tag, rw.slice_weight(sink.input[1], 0, k * lo // of, k * hi // of)],
                          y + tag, sink.name + tag, a.types[y])
        acc = _running_sum(rw, acc, partial, g, len(cols) - 2, y, f"{sink.name}#sum{g}", a.types[y])
    return starts


def _sketch_heads_part(rw: _Rewriter, r: HeadRegion, tag: str, lo: int, hi: int) -> None:
    """One node for a part of an attention split (``heads.part_summary``): its inputs from outside
    the part, its weight slices and state; its outputs the state, the merged heads the output
    projection reads, and a stand-in sized to the rest of the part's peak."""
    a, of = rw.a, r.groups
    peak, flops = part_summary(a, r, hi - lo)
    inputs = []
    for kind, x in r.externals:
        if kind == 0:
            inputs.append(x)
        elif kind == 1:
            inputs.append(part_name(x, tag))
        else:
            t = r.sliced[x]
            n = int(a.initializers[x].dims[t])
            inputs.append(rw.slice_weight(x, t, n * lo // of, n * hi // of))
    sink_in = a.io[r.sink][0][0]
    outputs = [part_name(a.state[s], tag) for s in r.states] + [sink_in + tag]
    rw.types[sink_in + tag] = part_type(a.types[sink_in], r.axis[sink_in], lo, hi, of)
    for s in r.states:
        present = a.state[s]
        rw.types[part_name(present, tag)] = part_type(a.types[present], r.axis[present], lo, hi, of)
    rest = max(0, peak - sum(_nbytes(rw.types[o]) for o in outputs))
    stand_in = f"{sink_in}{tag}.peak"
    rw.types[stand_in] = TensorType(TensorProto.UINT8, (rest,))
    node = Sketch("AttentionPart", f"{sink_in}{tag}.part", inputs, [*outputs, stand_in])
    rw.nodes.append(node)  # type: ignore[arg-type]
    rw.flops[id(node)] = flops


def _nbytes(tt: TensorType) -> int:
    return tensor_bytes(tt.elem_type, tt.shape, where="a part of a split")


def _emit_vocab(rw: _Rewriter, site: Site, cols: list[int]) -> dict[int, int]:
    a = rw.a
    node = a.nodes[site.anchor]
    table, ids = node.input[0], node.input[1]
    y = node.output[0]
    it = a.types[ids]
    id_dtype = helper.tensor_dtype_to_np_dtype(it.elem_type)
    value_dtype = helper.tensor_dtype_to_np_dtype(a.initializers[table].data_type)
    flag = TensorType(TensorProto.BOOL, it.shape)
    prefix = node.name
    zero_id = rw.const(np.array(0, id_dtype), prefix)
    zero = rw.const(np.array(0, value_dtype), prefix)
    axes = rw.const(np.arange(-(len(a.types[y].shape) - len(it.shape)), 0, dtype=np.int64), prefix)
    starts: dict[int, int] = {}
    acc = ""
    for g, lo, hi in _groups(rw, cols, starts):
        tag = f"{prefix}#{g}"
        tests = []
        if lo > 0:
            low = rw.const(np.array(lo, id_dtype), prefix)
            tests.append(rw.emit("GreaterOrEqual", [ids, low], f"{y}#{g}.ge", f"{tag}-ge", flag))
        if hi < site.extent:
            high = rw.const(np.array(hi, id_dtype), prefix)
            tests.append(rw.emit("Less", [ids, high], f"{y}#{g}.lt", f"{tag}-lt", flag))
        inside = tests[0] if len(tests) == 1 else rw.emit("And", tests, f"{y}#{g}.in", f"{tag}-in", flag)
        shifted = ids if lo == 0 else rw.emit("Sub", [ids, low], f"{y}#{g}.sub", f"{tag}-sub", it)
        # The last range keeps ids past the table: its Gather then fails as the whole model's would.
        index = rw.emit("Where", [inside, shifted, zero_id], f"{y}#{g}.idx", f"{tag}-idx", it)
        rows = rw.emit("Gather", [rw.slice_weight(table, 0, lo, hi), index], f"{y}#{g}.rows", f"{tag}-gather",
                       a.types[y], axis=0)
        mask = rw.emit("Unsqueeze", [inside, axes], f"{y}#{g}.mask", f"{tag}-mask",
                       TensorType(TensorProto.BOOL, (*it.shape, *([1] * (len(a.types[y].shape) - len(it.shape))))))
        part = rw.emit("Where", [mask, rows, zero], f"{y}#{g}", f"{tag}-where", a.types[y])
        acc = _running_sum(rw, acc, part, g, len(cols) - 2, y, f"{tag}-sum", a.types[y])
    return starts


def _score(part: Partition) -> tuple[int, int]:
    return len(part.segments), max(s.flops for s in part.segments)


def plan_partition(
    a: GraphAnalysis,
    budgets: Sequence[int] | int,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE,
    cut_factor: float = 2.0,
) -> tuple[GraphAnalysis, Partition]:
    """Partition ``a``, splitting operators where that saves a task or lowers the slowest stage.

    First every MLP, projection, embedding and lm_head is split into parts of ~1/32 of the smallest
    budget (a *sketch*: sized, not built). Attention is split by KV heads as well only where that plan
    is above the bound no plan can beat (weights and KV cache over the budget less the workspace):
    a split attention lowers every task's activation peak, and its cuts are finer. Then the graph is
    rewritten for real with only the part boundaries the chosen plan's cuts use (and every attention
    split, when it was chosen), or failing that every boundary of the sites they cut, and that is
    kept when it is as good, so splits that do not pay never reach a task. Returns the analysis the
    segments index.
    """
    def solve(analysis: GraphAnalysis, split_cuts: frozenset[int] = frozenset()) -> Partition:
        return partition(analysis, budgets, workspace_bytes=workspace_bytes, cut_factor=cut_factor,
                         split_cuts=split_cuts)

    sites = find_sites(a)
    wanted, chosen, best = _best_sketch(a, sites, budgets, workspace_bytes, cut_factor)
    if best is None:
        return a, solve(a)
    heads = {s: cols for s, cols in wanted.items() if sites[s].kind == "heads"}
    fine, fine_part = best
    used = fine.boundaries_used(fine_part)
    split_heads = {s: cols for s, cols in heads.items() if s in chosen}
    if not used and not split_heads:  # no cut falls inside a split operator: the graph as given may do as well
        try:
            part = solve(a)
            if _score(part) <= _score(fine_part):
                return a, part
        except PartitionError:
            pass
        return refine(a, sites, chosen).finish(), fine_part
    # Only the boundaries the cuts use (and the attention splits, which lower every task's peak); else
    # every boundary of the sites that are cut (merged parts have wider intermediates, which can matter
    # when activations are large against the budget).
    for keep in (split_heads | used, split_heads | {s: chosen[s] for s in used}):
        lean = refine(a, sites, keep)
        try:
            part = solve(lean.analysis, lean.split_cuts)
        except PartitionError:
            continue
        if _score(part) <= _score(fine_part):
            return lean.finish(), part
    return refine(a, sites, chosen).finish(), fine_part


def _best_sketch(a: GraphAnalysis, sites: Sequence[Site], budgets: Sequence[int] | int, workspace: int,
                 cut_factor: float) -> tuple[dict[int, list[int]], dict[int, list[int]], tuple[Refined, Partition] | None]:
    """(every site's part boundaries, the boundaries of the better sketch, that sketch and its plan);
    no sketch when nothing is split or no sketch has a plan."""
    smallest = budgets if isinstance(budgets, int) else min(budgets)
    grain = max(1, smallest // GRAIN_FRACTION)
    wanted = {s: cols for s, site in enumerate(sites) if (cols := even_boundaries(site, grain))}
    heads = {s for s in wanted if sites[s].kind == "heads"}
    chosen = {s: cols for s, cols in wanted.items() if s not in heads}
    best: tuple[Refined, Partition] | None = None
    if not wanted:
        return wanted, chosen, best
    for attempt in (chosen, wanted):
        if best is not None and (attempt is wanted and not heads or len(best[1].segments) <= _tight_bound(
                best[1], budgets, workspace)):
            break
        fine = refine(a, sites, attempt, sketch=True)
        try:
            part = partition(fine.analysis, budgets, workspace_bytes=workspace, cut_factor=cut_factor,
                             split_cuts=fine.split_cuts)
        except PartitionError:
            continue
        if best is None or _better(part, best[1]):
            best, chosen = (fine, part), attempt
    return wanted, chosen, best


# An attention split rewrites every block (~80 more nodes each): with as many tasks it has to lower the
# slowest stage by this fraction to be worth it.
ATTENTION_GAIN = 0.01


def _better(split: Partition, plain: Partition) -> bool:
    """Whether the plan with attention split beats the plan without: fewer tasks, or as many and a
    slowest stage at least ``ATTENTION_GAIN`` lower."""
    (n, worst), (n0, worst0) = _score(split), _score(plain)
    return n < n0 or n == n0 and worst < worst0 * (1 - ATTENTION_GAIN)


def _tight_bound(part: Partition, budgets: Sequence[int] | int, workspace: int) -> int:
    """Fewest tasks any plan can have: weights and KV cache over the largest budget less the workspace."""
    room = (budgets if isinstance(budgets, int) else max(budgets)) - workspace
    need = part.total_weight_bytes + part.total_kv_cache_bytes
    return max(part.lower_bound, math.ceil(need / room)) if room > 0 else part.lower_bound


def budget_for_tasks(analysis: GraphAnalysis, count: int, *, workspace_bytes: int = 0) -> int:
    """A uniform budget under which planning (with operator splits) gives exactly ``count`` tasks.

    The fewest tasks only fall as the budget grows, so a bisection over the budget finds one in a few
    planner runs. Raises ``PartitionError`` when no budget gives exactly ``count`` (the count can
    jump past it when the graph has few places to cut).
    """
    if count < 1:
        raise PartitionError("a plan has at least one task")

    sites = find_sites(analysis)

    def tasks(budget: int) -> int:
        # The sketch's count is the plan's (the rewrite keeps it or falls back to the sketch); only a
        # hit is confirmed by planning in full.
        best = _best_sketch(analysis, sites, budget, workspace_bytes, 2.0)[2]
        n = len(best[1].segments) if best else len(partition(analysis, budget, workspace_bytes=workspace_bytes).segments)
        if n == count:
            n = len(plan_partition(analysis, budget, workspace_bytes=workspace_bytes)[1].segments)
        return n

    lo, hi = 0, partition(analysis, 2**62, workspace_bytes=workspace_bytes).segments[0].vram_bytes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            n = tasks(mid)
        except PartitionError:
            n = count + 1  # too small for the largest single piece: more tasks than any budget gives
        if n == count:
            return mid
        lo, hi = (mid, hi) if n > count else (lo, mid)
    if count == 1:
        return hi
    raise PartitionError(f"no budget splits the model into exactly {count} tasks")
