"""How many bytes a task needs: initializers plus the peak of live activations in execution order."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from onnx import GraphProto, NodeProto

from splitup.graph.errors import TensorTooLarge
from splitup.graph.limits import Limits
from splitup.graph.shapes import TensorType
from splitup.graph.sizes import element_count, tensor_bytes
from splitup.graph.structure import node_label, subgraphs


@dataclass(frozen=True)
class MemoryEstimate:
    parameter_count: int
    parameter_bytes: int
    peak_activation_bytes: int
    peak_node: str
    largest_tensor: str
    largest_tensor_bytes: int


class _Sizer:
    def __init__(self, types: dict[str, TensorType], limits: Limits) -> None:
        self.types = types
        self.limits = limits
        self.cache: dict[str, int] = {}
        self.largest = ("", 0)

    def bytes(self, name: str) -> int:
        cached = self.cache.get(name)
        if cached is not None:
            return cached
        t = self.types[name]
        n = tensor_bytes(t.elem_type, t.shape, where=f"tensor {name}")
        if n > self.limits.max_tensor_bytes:
            raise TensorTooLarge(
                f"{n} bytes exceed the per-tensor limit of {self.limits.max_tensor_bytes}", where=f"tensor {name}"
            )
        if n > self.largest[1]:
            self.largest = (name, n)
        self.cache[name] = n
        return n


def _attr_int(node: NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def hidden_workspace(node: NodeProto, types: Mapping[str, TensorType]) -> int:
    """Bytes a kernel allocates beyond its inputs and outputs, where that is more than a constant factor of
    them and shape inference cannot see it: the attention ops' score matrices and unpacked heads.

    An upper estimate, in float32 (the kernels' softmax precision): for ``Attention`` three score-sized
    buffers (QK^T, mask, softmax) of batch x query heads x query length x (past + new) keys, the query and
    key/value heads expanded to that many heads, and 4D copies of packed 3D inputs; for ``LinearAttention``
    unpacked copies of its inputs, the recurrent state per query head twice and one chunk's score block;
    for ``CausalConvWithState`` its input concatenated with the carried state.
    """
    def shape(i: int) -> tuple[int, ...] | None:
        t = types.get(node.input[i]) if i < len(node.input) and node.input[i] else None
        return t.shape if t is not None else None

    op = node.op_type
    q, k, v = shape(0), shape(1), shape(2)
    if op == "Attention" and q and k and v:
        heads = q[1] if len(q) == 4 else _attr_int(node, "q_num_heads", 1)
        batch, q_len = q[0], q[-2] if len(q) == 4 else q[1]
        past = shape(4)
        keys = (k[-2] if len(k) == 4 else k[1]) + (past[-2] if past and len(past) == 4 else 0)
        head_dim = max(q[-1] // (1 if len(q) == 4 else max(heads, 1)), v[-1] if len(v) == 4 else v[-1])
        elements = 3 * batch * heads * q_len * keys + 2 * batch * heads * keys * head_dim
        elements += sum(math.prod(x) for x in (q, k, v))
        return 4 * elements
    if op == "LinearAttention" and q and k and v:
        heads, kv_heads = _attr_int(node, "q_num_heads", 1), max(_attr_int(node, "kv_num_heads", 1), 1)
        batch, length = q[0], q[1]
        state = heads * (k[-1] // kv_heads) * (v[-1] // kv_heads)
        chunk = min(_attr_int(node, "chunk_size", 64), length)
        elements = sum(math.prod(x) for x in (q, k, v)) + batch * (2 * state + heads * chunk * chunk)
        return 4 * elements
    if op == "CausalConvWithState" and q and k:
        return 4 * (math.prod(q) + q[0] * q[1] * max(k[-1] - 1, 0))
    return 0


def _free_names(graph: GraphProto) -> set[str]:
    """Names a body reads from enclosing scopes: for liveness they are inputs of the control-flow node."""
    defined = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(x for x in node.input if x)
        for _, body in subgraphs(node):
            used |= _free_names(body)
        defined.update(node.output)
    used.update(vi.name for vi in graph.output)
    return used - defined


def _peak(graph: GraphProto, sizer: _Sizer) -> tuple[int, str]:
    """Peak live activation bytes of one graph; a tensor is freed after its last consumer."""
    initializers = {t.name for t in graph.initializer}
    keep = {vi.name for vi in graph.output}
    consumers: list[set[str]] = []
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        used = {x for x in node.input if x}
        for _, body in subgraphs(node):
            used |= _free_names(body)
        consumers.append(used)
        for name in used:
            last_use[name] = i
    live_names = {vi.name for vi in graph.input}
    live = sum(sizer.bytes(n) for n in live_names)
    peak, peak_node = live, "graph inputs"
    for i, node in enumerate(graph.node):
        outs = [o for o in node.output if o]
        produced = sum(sizer.bytes(o) for o in outs)
        # A body's own activations exist only while its control-flow node runs.
        scratch = sum(_peak(body, sizer)[0] for _, body in subgraphs(node)) + hidden_workspace(node, sizer.types)
        if live + produced + scratch > peak:
            peak, peak_node = live + produced + scratch, node_label(node, i)
        live += produced
        live_names.update(outs)
        dead = {n for n in consumers[i] if last_use[n] == i} | {o for o in outs if o not in last_use}
        for name in dead - keep - initializers:
            if name in live_names:
                live_names.discard(name)
                live -= sizer.bytes(name)
    return peak, peak_node


def _initializers(graph: GraphProto) -> list[tuple[str, int]]:
    found = [(t.name, element_count(t.dims)) for t in graph.initializer]
    for node in graph.node:
        for _, body in subgraphs(node):
            found.extend(_initializers(body))
    return found


def estimate_memory(graph: GraphProto, types: dict[str, TensorType], limits: Limits) -> MemoryEstimate:
    """Size every tensor (each under ``max_tensor_bytes``) and the peak a runtime needs for this graph."""
    sizer = _Sizer(types, limits)
    inits = _initializers(graph)
    parameter_bytes = sum(sizer.bytes(name) for name, _ in inits)
    parameter_count = sum(count for _, count in inits)
    for name in types:
        sizer.bytes(name)
    peak, peak_node = _peak(graph, sizer)
    return MemoryEstimate(
        parameter_count=parameter_count,
        parameter_bytes=parameter_bytes,
        peak_activation_bytes=peak,
        peak_node=peak_node,
        largest_tensor=sizer.largest[0],
        largest_tensor_bytes=sizer.largest[1],
    )
