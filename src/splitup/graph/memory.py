"""How many bytes a task needs: initializers plus the peak of live activations in execution order."""

from __future__ import annotations

from dataclasses import dataclass

from onnx import GraphProto

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
        scratch = sum(_peak(body, sizer)[0] for _, body in subgraphs(node))
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
