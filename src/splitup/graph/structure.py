"""Structural checks on the proto itself, before any shape inference runs.

One recursive walk over the graph and every control-flow body: allowed ops and domains, attributes,
SSA names (no duplicates, nothing dangling, topological order, no cycles), initializers (types, dims,
external-data paths), and static, bounded Loop trip counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, numpy_helper

from splitup.graph.allowlist import ALLOWED_OPS, CONTROL_FLOW_OPS, DEFAULT_DOMAINS, GRAPH_ATTRIBUTES
from splitup.graph.errors import (
    ControlFlowRejected,
    DisallowedDomain,
    DisallowedOp,
    MalformedGraph,
    StringTensor,
    TensorTooLarge,
    TooManyNodes,
)
from splitup.graph.external import check_external_tensor, is_external
from splitup.graph.limits import Limits
from splitup.graph.sizes import element_count, tensor_bytes


def node_label(node: NodeProto, index: int) -> str:
    """How errors name a node: its name when it has one, else its position, always with the op type."""
    name = node.name or f"#{index}"
    return f"node {name} ({node.op_type})"


def subgraphs(node: NodeProto) -> Iterator[tuple[str, GraphProto]]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield attr.name, g


def check_dims(dims: list[int], limits: Limits, *, where: str) -> None:
    for d in dims:
        if d < 0:
            raise MalformedGraph(f"negative dimension {d}", where=where)
        if d > limits.max_dim:
            raise TensorTooLarge(f"dimension {d} exceeds the limit of {limits.max_dim}", where=where)


@dataclass
class _Walk:
    limits: Limits
    bundle_dir: Path | None
    nodes: int = 0
    # Every graph seen, main graph first: shape and memory passes revisit them.
    graphs: list[GraphProto] = field(default_factory=list)

    def graph(self, graph: GraphProto, outer: frozenset[str], constants: dict[str, TensorProto], depth: int) -> None:
        if depth > self.limits.max_subgraph_depth:
            raise ControlFlowRejected(
                f"subgraphs nested deeper than {self.limits.max_subgraph_depth}", where=f"graph {graph.name}"
            )
        self.graphs.append(graph)
        if graph.sparse_initializer:
            raise MalformedGraph("sparse initializers are not allowed", where=graph.sparse_initializer[0].values.name)
        defined: set[str] = set()

        def define(name: str, what: str) -> None:
            if not name:
                raise MalformedGraph(f"{what} has an empty name", where=f"graph {graph.name}")
            if name in defined or name in outer:
                raise MalformedGraph(f"name {name!r} is defined twice ({what})", where=name)
            defined.add(name)

        for vi in graph.input:
            define(vi.name, "graph input")
        local_constants = dict(constants)
        for init in graph.initializer:
            define(init.name, "initializer")
            self.initializer(init)
            local_constants[init.name] = init

        producers = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
        for index, node in enumerate(graph.node):
            where = node_label(node, index)
            self.nodes += 1
            if self.nodes > self.limits.max_nodes:
                raise TooManyNodes(f"more than {self.limits.max_nodes} nodes", where=where)
            self.op(node, where)
            for name in node.input:
                if name and name not in defined and name not in outer:
                    self.missing_input(graph, name, index, producers, where)
            self.attributes(node, where)
            if node.op_type in CONTROL_FLOW_OPS:
                self.control_flow(node, where, outer | defined, local_constants, depth)
            for out in node.output:
                if out:
                    define(out, f"output of {where}")
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None and node.output:
                    local_constants[node.output[0]] = value

        if not graph.output:
            raise MalformedGraph("graph has no outputs", where=f"graph {graph.name}")
        seen_outputs: set[str] = set()
        for vi in graph.output:
            if vi.name in seen_outputs:
                raise MalformedGraph(f"graph output {vi.name!r} is listed twice", where=vi.name)
            seen_outputs.add(vi.name)
            if vi.name not in defined and vi.name not in outer:
                raise MalformedGraph(f"graph output {vi.name!r} is never produced", where=vi.name)

    def missing_input(
        self, graph: GraphProto, name: str, index: int, producers: dict[str, int], where: str
    ) -> None:
        later = producers.get(name)
        if later is None:
            raise MalformedGraph(
                f"input {name!r} is not a graph input, initializer or output of an earlier node", where=where
            )
        cycle = _find_cycle(graph)
        if cycle:
            raise MalformedGraph("cycle through " + " -> ".join(cycle), where=cycle[0])
        raise MalformedGraph(
            f"input {name!r} is produced by a later node; nodes must be topologically sorted", where=where
        )

    def op(self, node: NodeProto, where: str) -> None:
        if node.domain not in DEFAULT_DOMAINS:
            raise DisallowedDomain(f"operator domain {node.domain!r} is not allowed", where=where)
        if node.op_type not in ALLOWED_OPS:
            raise DisallowedOp(f"operator {node.op_type!r} is not on the allow-list", where=where)
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            # Training-mode dropout is random: re-execution for verification could never agree.
            raise DisallowedOp("Dropout with a training_mode input is not allowed", where=where)

    def attributes(self, node: NodeProto, where: str) -> None:
        allowed_graphs = GRAPH_ATTRIBUTES.get(node.op_type, frozenset())
        for attr in node.attribute:
            at = f"{where} attribute {attr.name}"
            if attr.ref_attr_name:
                raise MalformedGraph("attribute references belong in functions, not graphs", where=at)
            if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) and attr.name not in allowed_graphs:
                raise ControlFlowRejected("attribute holds a graph where none is expected", where=at)
            if attr.type in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
                raise MalformedGraph("sparse tensor attributes are not allowed", where=at)
            if attr.type == AttributeProto.TYPE_PROTO or attr.type == AttributeProto.TYPE_PROTOS:
                raise MalformedGraph("type attributes are not allowed", where=at)
            if attr.type in (AttributeProto.STRINGS,) and node.op_type == "Constant":
                raise StringTensor("string constants are not allowed", where=at)
            if attr.type == AttributeProto.STRING and node.op_type == "Constant":
                raise StringTensor("string constants are not allowed", where=at)
            tensors = [attr.t] if attr.type == AttributeProto.TENSOR else list(attr.tensors)
            for t in tensors:
                if t.data_type == TensorProto.STRING:
                    raise StringTensor("string tensor attribute", where=at)
                if is_external(t):
                    raise MalformedGraph("only initializers may use external data", where=at)
                check_dims(list(t.dims), self.limits, where=at)
                self.inline_size(t, where=at)

    def initializer(self, init: TensorProto) -> None:
        where = f"initializer {init.name}"
        if init.data_type == TensorProto.STRING:
            raise StringTensor("string initializers are not allowed", where=where)
        check_dims(list(init.dims), self.limits, where=where)
        nbytes = tensor_bytes(init.data_type, init.dims, where=where)
        if nbytes > self.limits.max_tensor_bytes:
            raise TensorTooLarge(
                f"{nbytes} bytes exceed the per-tensor limit of {self.limits.max_tensor_bytes}", where=where
            )
        if is_external(init):
            check_external_tensor(init, nbytes, self.bundle_dir, where=where)
        else:
            self.inline_size(init, where=where)

    def inline_size(self, t: TensorProto, *, where: str) -> None:
        nbytes = tensor_bytes(t.data_type, t.dims, where=where)
        if t.raw_data and len(t.raw_data) != nbytes:
            raise MalformedGraph(
                f"raw data holds {len(t.raw_data)} bytes but its shape needs {nbytes}", where=where
            )

    def control_flow(
        self, node: NodeProto, where: str, visible: frozenset[str], constants: dict[str, TensorProto], depth: int
    ) -> None:
        bodies = list(subgraphs(node))
        expected = GRAPH_ATTRIBUTES[node.op_type]
        if sorted(name for name, _ in bodies) != sorted(expected):
            raise ControlFlowRejected(f"{node.op_type} needs exactly the bodies {sorted(expected)}", where=where)
        if node.op_type == "Loop":
            self.trip_count(node, where, constants)
        for _, body in bodies:
            self.graph(body, visible, constants, depth + 1)

    def trip_count(self, node: NodeProto, where: str, constants: dict[str, TensorProto]) -> None:
        name = node.input[0] if node.input else ""
        if not name:
            raise ControlFlowRejected("Loop without a trip count may run forever", where=where)
        tensor = constants.get(name)
        if tensor is None:
            raise ControlFlowRejected(f"Loop trip count {name!r} is not a static constant", where=where)
        if is_external(tensor) or element_count(tensor.dims) != 1 or tensor.data_type != TensorProto.INT64:
            raise ControlFlowRejected(f"Loop trip count {name!r} must be an inline int64 scalar", where=where)
        try:
            trips = int(np.asarray(numpy_helper.to_array(tensor)).reshape(-1)[0])
        except Exception as exc:  # malformed tensor payloads fail inside numpy in many ways
            raise ControlFlowRejected(f"Loop trip count {name!r} is unreadable: {exc}", where=where) from None
        if not 0 <= trips <= self.limits.max_loop_trips:
            raise ControlFlowRejected(
                f"Loop trip count {trips} is outside 0..{self.limits.max_loop_trips}", where=where
            )


def _find_cycle(graph: GraphProto) -> list[str]:
    """Node labels along one cycle, or [] when the nodes are merely out of order."""
    producers = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
    deps = [sorted({producers[x] for x in n.input if x in producers}) for n in graph.node]
    state = [0] * len(deps)  # 0 new, 1 on the stack, 2 done
    for start in range(len(deps)):
        if state[start]:
            continue
        # Iterative DFS: a hostile graph can be deep enough to blow Python's recursion limit.
        stack: list[tuple[int, int]] = [(start, 0)]
        path: list[int] = []
        while stack:
            v, k = stack.pop()
            if k == 0:
                state[v] = 1
                path.append(v)
            if k < len(deps[v]):
                stack.append((v, k + 1))
                w = deps[v][k]
                if state[w] == 1:
                    loop = path[path.index(w) :] + [w]
                    return [node_label(graph.node[i], i) for i in loop]
                if state[w] == 0:
                    stack.append((w, 0))
            else:
                state[v] = 2
                path.pop()
    return []


def check_structure(graph: GraphProto, limits: Limits, bundle_dir: Path | None) -> list[GraphProto]:
    """Run every structural check; returns all graphs (main graph first, then bodies) for later passes."""
    if not graph.node:
        raise MalformedGraph("graph has no nodes", where=f"graph {graph.name}")
    walk = _Walk(limits, bundle_dir)
    walk.graph(graph, frozenset(), {}, 0)
    return walk.graphs
