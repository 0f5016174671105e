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

Only the *head* of that task needs it (``token_head``): the nodes after the last point where one tensor,
the final hidden state, carries everything on to the logits. The head computes in float32 from that
tensor, which the task also outputs (and so commits); the layers before it keep the plan's half precision,
KV cache included. A validator then judges in two stages: the hidden state under the half-precision rule,
the logits under float32's against the head run on the executor's own committed hidden state
(``splitup.verify.replay``). That keeps the token task the size of any other (LLaMA-70B int4 at 12 GiB in
3 tasks, not 4); a graph without such a point has its whole token task upcast.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence, Set

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitup.graph.errors import MalformedGraph
from splitup.graph.limits import Limits
from splitup.graph.meta import DIM_MAX_KEY, TOKEN_FP32_KEY
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
    taken = {x for n in g.node for x in (*n.input, *n.output)} | {t.name for t in g.initializer} | \
        {v.name for v in (*g.input, *g.output)}

    def fp32_name(name: str) -> str:
        # unique: a graph converted twice (a plan's head, then an engine at load) already has such names
        fresh, k = f"{name}__fp32", 1
        while fresh in taken:
            fresh, k = f"{name}__fp32_{k}", k + 1
        taken.add(fresh)
        return fresh

    entry: dict[str, str] = {}
    for vi in g.input:
        tt = vi.type.tensor_type
        if tt.elem_type in HALF_TYPES:
            if vi.name in state and not keep_interface:
                tt.elem_type = TensorProto.FLOAT
            else:
                entry[vi.name] = fp32_name(vi.name)
    exits: list[onnx.NodeProto] = []
    renamed_out: dict[str, str] = {}
    for vi in g.output:
        tt = vi.type.tensor_type
        if tt.elem_type in HALF_TYPES:
            if keep_interface:
                renamed_out[vi.name] = fp32_name(vi.name)
                exits.append(helper.make_node("Cast", [renamed_out[vi.name]], [vi.name], name=f"{renamed_out[vi.name]}.cast",
                                              to=tt.elem_type))
            else:
                tt.elem_type = TensorProto.FLOAT
    for init in g.initializer:
        if init.data_type in HALF_TYPES:
            if init.data_location == TensorProto.EXTERNAL and keep_interface:
                entry[init.name] = fp32_name(init.name)
            else:
                _upcast_initializer(init)
    _upcast_nodes(g)
    for node in g.node:
        # readers of an output inside the graph (a KV cache is attended to as well as handed on) read the
        # float32 value, not its half-precision copy
        node.input[:] = [entry.get(i, renamed_out.get(i, i)) for i in node.input]
        node.output[:] = [renamed_out.get(o, o) for o in node.output]
    casts = [helper.make_node("Cast", [name], [fp32], name=f"{fp32}.cast", to=TensorProto.FLOAT)
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


#: ``task``: the whole token task computes in float32 (KV cache included), judged from the previous task's
#: committed hidden state; ``head``: only its head, judged from the hidden state it commits itself.
TOKEN_FP32_FORMS = ("task", "head")


def token_fp32_form(model: onnx.ModelProto) -> str:
    """How much of a half-precision plan's token task computes in float32 (``splitup.token_fp32`` in the
    graph, set by the planner; ``head`` where absent)."""
    values = [p.value for p in model.metadata_props if p.key == TOKEN_FP32_KEY]
    if len(values) > 1 or (values and values[0] not in TOKEN_FP32_FORMS):
        raise MalformedGraph(f"{TOKEN_FP32_KEY} must be given once, one of {', '.join(TOKEN_FP32_FORMS)}; "
                             f"got {values}")
    return values[0] if values else "head"


def with_token_fp32_form(model: onnx.ModelProto, form: str) -> None:
    """Set ``splitup.token_fp32`` on ``model`` (in place)."""
    if form not in TOKEN_FP32_FORMS:
        raise ValueError(f"token task float32 form must be one of {', '.join(TOKEN_FP32_FORMS)}, got {form!r}")
    kept = [p for p in model.metadata_props if p.key != TOKEN_FP32_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=TOKEN_FP32_KEY, value=form)


def token_head(io: Sequence[tuple[Sequence[str], Sequence[str]]], weights: Set[str], local: Set[str],
               graph_inputs: Set[str]) -> tuple[int, str] | None:
    """Where the head of a token-choosing graph starts: ``(i, h)`` for the latest node position ``i`` such
    that nodes ``i..`` read, besides ``local`` names (initializers, constants) and what they make
    themselves, exactly one tensor ``h`` (made by a node before ``i``, not a graph input) and include the
    last node reading one of ``weights`` (the LM head's matrix, or its dequantisation). ``io``: each node's
    (inputs, outputs) in execution order. None if there is no such point."""
    last_weight = max((i for i, (ins, _) in enumerate(io) if not weights.isdisjoint(ins)), default=-1)
    if last_weight < 0:
        return None
    made: set[str] = set()
    external: set[str] = set()
    for i in range(len(io) - 1, -1, -1):
        ins, outs = io[i]
        made.update(o for o in outs if o)
        external.difference_update(outs)
        external.update(x for x in ins if x and x not in local and x not in made)
        if i <= last_weight and len(external) == 1:
            (h,) = external
            if h not in graph_inputs:
                return i, h
    return None


def float32_head(model: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None, start: int, boundary: str,
                 ) -> tuple[onnx.ModelProto, dict[str, np.ndarray] | None]:
    """A copy of ``model`` whose nodes from ``start`` on (the head: they read ``boundary`` and constants
    only, ``token_head``) compute in float32, and its shard arrays alike; the nodes before keep their types.
    A half-precision initializer the body reads too gets a float32 copy of its own for the head."""
    g = model.graph
    body, head = list(g.node[:start]), list(g.node[start:])
    inits = {t.name: t for t in g.initializer}
    body_reads = {x for n in body for x in n.input if x}
    head_reads = {x for n in head for x in n.input if x}
    made_in_head = {o for n in head for o in n.output if o}
    shared = {x for x in head_reads & body_reads if x in inits and inits[x].data_type in HALF_TYPES}
    rename = {x: f"{x}__fp32_head" for x in sorted(shared)}
    sub_nodes = []
    for n in head:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.input[:] = [rename.get(x, x) for x in c.input]
        sub_nodes.append(c)
    sub_inits = dict(inits)
    for x, fresh in rename.items():
        sub_inits[fresh] = TensorProto()
        sub_inits[fresh].CopyFrom(inits[x])
        sub_inits[fresh].name = fresh
    held = {} if weights is None else dict(weights)
    sub_weights = None if weights is None else {rename.get(x, x): held[x] for x in head_reads if x in held}
    entry = next((vi for vi in g.output if vi.name == boundary), None)
    if entry is None:
        raise ValueError(f"the head's input {boundary!r} must be an output of the graph (it is committed)")
    sub = _subgraph(model, sub_nodes, [entry], [vi for vi in g.output if vi.name in made_in_head], "head", sub_inits)
    up, up_weights = float32_arithmetic(sub, sub_weights)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    keep = [t for t in g.initializer if t.name in body_reads or t.name not in head_reads]
    del og.initializer[:]
    og.initializer.extend([*keep, *up.graph.initializer])
    del og.node[:]
    og.node.extend([*body, *up.graph.node])
    head_types = {vi.name: vi.type.tensor_type.elem_type for vi in up.graph.output}
    for vi in og.output:
        if vi.name in head_types:
            vi.type.tensor_type.elem_type = head_types[vi.name]
    del og.value_info[:]
    if weights is None:
        return out, None
    merged = {k: v for k, v in held.items() if k in body_reads or k not in head_reads}
    merged.update(up_weights or {})
    return out, merged


def _subgraph(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto], suffix: str, inits: Mapping[str, TensorProto],
              props: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """``nodes`` of ``model`` as a model of their own, with the initializers (from ``inits``) they read."""
    reads = {x for n in nodes for x in n.input}
    m = helper.make_model(helper.make_graph(nodes, f"{model.graph.name}.{suffix}", inputs, outputs,
                                            initializer=[inits[x] for x in sorted(reads & set(inits))]),
                          opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    if props:
        helper.set_model_props(m, props)
    return m


def _ancestors(g: onnx.GraphProto, outputs: Collection[str], sources: Collection[str]) -> list[onnx.NodeProto]:
    """The nodes of ``g`` that ``outputs`` are computed by from ``sources`` and initializers, in graph order."""
    producer = {o: n for n in g.node for o in n.output if o}
    inits = {t.name for t in g.initializer}
    needed: set[int] = set()
    seen: set[str] = set()
    todo = list(outputs)
    while todo:
        x = todo.pop()
        if x in seen or x in sources or x in inits:
            continue
        seen.add(x)
        n = producer.get(x)
        if n is None:
            raise ValueError(f"{x!r} is not computed from {', '.join(map(repr, sources))} and constants alone")
        needed.add(id(n))
        todo.extend(i for i in n.input if i)
    return [n for n in g.node if id(n) in needed]


def head_graph(model: onnx.ModelProto, boundary: str, head_outputs: Collection[str]) -> onnx.ModelProto:
    """The head of a task graph (``boundary`` in, ``head_outputs`` out, the nodes between and the initializers
    they read; external stubs stay stubs): what a validator runs on an executor's committed hidden state."""
    g = model.graph
    vis = {vi.name: vi for vi in (*g.input, *g.output, *g.value_info)}
    if boundary not in vis:
        raise ValueError(f"the head's input {boundary!r} is not a tensor of the graph")
    # the head has no KV cache and reads no value-sized input: the dims' maxima only
    return _subgraph(model, _ancestors(g, head_outputs, {boundary}), [vis[boundary]], [vis[o] for o in head_outputs],
                     "head", {t.name: t for t in g.initializer},
                     {p.key: p.value for p in model.metadata_props if p.key == DIM_MAX_KEY})


def split_head(model: onnx.ModelProto, boundary: str, head_outputs: Collection[str],
               ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A task graph with a float32 head as two graphs: the body (what the task's other outputs, ``boundary``
    among them, are computed by from its inputs) and the head (``head_graph``); a constant both read is in
    both. An engine runs them one after the other, so the head reads exactly the ``boundary`` the task
    hands out and commits, as a validator's run of the head alone does (``splitup.runtime.engine``)."""
    g = model.graph
    outputs = [vi for vi in g.output if vi.name not in head_outputs]
    body = _subgraph(model, _ancestors(g, [vi.name for vi in outputs], {vi.name for vi in g.input}), list(g.input),
                     outputs, "body", {t.name: t for t in g.initializer},
                     {p.key: p.value for p in model.metadata_props})
    return body, head_graph(model, boundary, head_outputs)
