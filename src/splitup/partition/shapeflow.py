"""Shape values never cross a cut: each task recomputes the ones it reads from its own inputs' shapes.

Exporters compute batch and sequence sizes at run time (``Shape -> Gather -> Unsqueeze -> Concat ->
Reshape``). If such a value crossed from one task into the next it would arrive as a graph input whose
*data* sets a ``Reshape`` target, and the next task could no longer be bounded by the validator. So a
task that reads a shape value it does not make gets the value's recipe copied in: the nodes between the
value and the ``Shape``/``Size`` nodes it comes from. A ``Shape`` of a tensor the task does not hold is
rebuilt from the dims the task can see: a dim that does not depend on a symbolic input dim becomes a
constant, and one that does (``batch``, ``seq``, ``batch*heads``) is read off an input of the task whose
dim agrees with it at every probe point (shapes inferred at the declared maxima and at two smaller
points, so two dims that merely coincide at the maxima are told apart). Failing that, a graph input's
shape is read from the graph input itself (the pipeline forwards graph inputs to every task that needs
one).
"""

from __future__ import annotations

import math
from functools import cached_property

import onnx
from onnx import TensorProto, helper

from splitup.graph.errors import GraphRejected
from splitup.graph.limits import Limits
from splitup.graph.shapes import infer_at
from splitup.partition.cost import GraphAnalysis

# A dim as a function of the symbolic input dims: its value at each probe point, maxima first.
DimKey = tuple[int, ...]

# A shape value is small: a rank's worth of int64s, or a scalar derived from one.
MAX_SHAPE_VALUE_ELEMENTS = 64
_SHAPE_OPS = frozenset({"Shape", "Size"})
# Ops whose output is not a function of their inputs' values.
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                         "Bernoulli"})


def shape_values(a: GraphAnalysis) -> set[str]:
    """Tensors computed from shapes and constants alone (never from tensor data), and small."""
    small_inits = {n for n, t in a.initializers.items() if math.prod(t.dims) <= MAX_SHAPE_VALUE_ELEMENTS}
    known = set(a.constants) | small_inits
    found: set[str] = set()
    for node in a.nodes:
        if not node.output or any(a.types.get(o) is None or math.prod(a.types[o].shape) > MAX_SHAPE_VALUE_ELEMENTS
                                  for o in node.output if o):
            continue
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            continue
        if node.op_type in _SHAPE_OPS:
            found.update(o for o in node.output if o)
        elif node.op_type not in _RANDOM_OPS and node.input and all(
                not x or x in known or x in found for x in node.input):
            found.update(o for o in node.output if o)
    return found


class Probes:
    """Every tensor's dims at the maxima and at two smaller points, inferred only when first asked for."""

    def __init__(self, a: GraphAnalysis) -> None:
        self.a = a

    @cached_property
    def points(self) -> list[dict[str, int]]:
        names = sorted(self.a.dim_max)
        points = []
        for k in (1, 2):
            # Distinct values per symbol, so that batch and seq do not look alike at a probe.
            points.append({n: max(1, self.a.dim_max[n] - k * (i + 1)) if self.a.dim_max[n] > k * (i + 1)
                           else 1 + (k + i) % max(1, self.a.dim_max[n]) for i, n in enumerate(names)})
        return points

    @cached_property
    def shapes(self) -> list[dict[str, tuple[int, ...]]]:
        found = [{n: t.shape for n, t in self.a.types.items()}]
        for point in self.points if self.a.dim_max else []:
            try:
                inferred = infer_at(self.a.model, point, Limits(max_tensor_bytes=2**62))
            except GraphRejected:
                continue  # graphs may require relations between dims that this point breaks
            g = inferred.graph
            found.append({vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
                          for vi in (*g.input, *g.value_info, *g.output)
                          if vi.type.tensor_type.HasField("shape")
                          and all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)})
        return found

    def dims(self, name: str) -> list[DimKey] | None:
        per_point = [s.get(name) for s in self.shapes]
        if any(p is None or len(p) != len(per_point[0]) for p in per_point):
            return None
        return [tuple(p[axis] for p in per_point) for axis in range(len(per_point[0]))]  # type: ignore[index]


class _Remat:
    def __init__(self, a: GraphAnalysis, probes: Probes, values: set[str], nodes: list[onnx.NodeProto]) -> None:
        self.a, self.probes, self.values = a, probes, values
        self.produced = {o for n in nodes for o in n.output if o}
        reads = [x for n in nodes for x in n.input if x]
        # Tensors the task holds anyway: what it makes and the data it receives.
        self.real_inputs = list(dict.fromkeys(
            x for x in reads if x not in self.produced and x not in values and x not in a.constants
            and x not in a.initializers))
        self.added: list[onnx.NodeProto] = []
        self.done: set[str] = set()

    def need(self, name: str) -> bool:
        """Add the recipe of shape value ``name``; False if it cannot be rebuilt here (it then crosses)."""
        if name in self.done or name in self.produced:
            return True
        node = self.a.nodes[self.a.producer[name]]
        if node.op_type in _SHAPE_OPS:
            added = self._shape_of(node)
        else:
            added = all(self.need(x) for x in node.input if x in self.values)
            if added:
                self.added.append(node)
        if added:
            self.done.update(o for o in node.output if o)
        return added

    def _shape_of(self, node: onnx.NodeProto) -> bool:
        data = node.input[0]
        if data in self.produced or data in self.real_inputs:
            self.added.append(node)
            return True
        if not self._rebuild(node):
            if data not in self.a.graph_inputs:
                return False
            self.added.append(node)
        return True

    def _rebuild(self, node: onnx.NodeProto) -> bool:
        dims = self.probes.dims(node.input[0])
        if dims is None:
            return False
        if node.op_type == "Shape":
            rank = len(dims)
            start = next((at.i for at in node.attribute if at.name == "start"), 0)
            end = next((at.i for at in node.attribute if at.name == "end"), rank)
            start, end = (max(0, min(rank, x + rank if x < 0 else x)) for x in (start, end))
            dims = dims[start:end]
        pieces = [self._dim(d, f"{node.name or node.output[0]}.remat{i}") for i, d in enumerate(dims)]
        if any(p is None for p in pieces):
            return False
        tag = f"{node.name or node.output[0]}.remat"
        if not pieces:
            self._const(node.output[0], [], tag)
        elif node.op_type == "Shape":
            self.added.append(helper.make_node("Concat", pieces, [node.output[0]], name=f"{tag}.concat", axis=0))
        else:  # Size: the product of the dims, a scalar
            joined = f"{tag}.dims"
            self.added.append(helper.make_node("Concat", pieces, [joined], name=f"{tag}.concat", axis=0))
            self.added.append(helper.make_node("ReduceProd", [joined], [node.output[0]], name=f"{tag}.prod",
                                               keepdims=0))
        return True

    def _dim(self, d: DimKey, tag: str) -> str | None:
        """A 1-element int64 tensor holding dim ``d`` at run time, made from what this task holds."""
        if len(set(d)) == 1 and (len(self.probes.shapes) > 1 or not self.a.dim_max):
            return self._const(f"{tag}.value", [d[0]], tag)
        if len(self.probes.shapes) == 1:
            return None  # no probe point inferred: a value at the maxima alone could match by coincidence
        for y in self.real_inputs:
            dims = self.probes.dims(y)
            if dims is not None and d in dims:
                axis = dims.index(d)
                shape, index = f"{tag}.shape", self._const(f"{tag}.axis", [axis], tag)
                self.added.append(helper.make_node("Shape", [y], [shape], name=f"{tag}.shape"))
                self.added.append(helper.make_node("Gather", [shape, index], [f"{tag}.value"], name=f"{tag}.gather",
                                                   axis=0))
                return f"{tag}.value"
        return None

    def _const(self, name: str, values: list[int], tag: str) -> str:
        value = helper.make_tensor(name, TensorProto.INT64, [len(values)] if values else [], values)
        self.added.append(helper.make_node("Constant", [], [name], name=f"{tag}.const.{len(self.added)}", value=value))
        return name


def rematerialise(a: GraphAnalysis, probes: Probes, values: set[str],
                  nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` plus the recipes of the shape values they read but do not make, in topological order.

    A value whose recipe cannot be rebuilt from this task's tensors stays an input (the task is then
    validated like any other, and a planner-made task that fails is reported as the planner's fault).
    """
    r = _Remat(a, probes, values, nodes)
    for x in dict.fromkeys(x for n in nodes for x in n.input if x in values and x not in r.produced):
        r.need(x)
    if not r.added:
        return nodes
    return _toposort(r.added + nodes)


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Stable topological order: each node as early as its inputs allow, ties kept in list order."""
    made_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    emitted: set[int] = set()
    out: list[onnx.NodeProto] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, ready = stack.pop()
            if j in emitted:
                continue
            if ready:
                emitted.add(j)
                out.append(nodes[j])
                continue
            stack.append((j, True))
            for x in reversed(nodes[j].input):
                k = made_by.get(x)
                if k is not None and k not in emitted:
                    stack.append((k, False))

    for i in range(len(nodes)):
        visit(i)
    return out
