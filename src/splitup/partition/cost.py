"""The cost model: what each node of a graph costs, and where the graph can be cut.

All sizes are taken at the declared maxima of the symbolic dimensions (``splitup.dim_max``), so they
bound what a task will ever need. ``Constant`` nodes cost nothing and are copied into every task that
reads them, so they never cross a cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from splitup.graph.limits import Limits
from splitup.graph.meta import read_state
from splitup.graph.shapes import TensorType, infer_at, read_dim_max, typed_tensors
from splitup.graph.sizes import element_count, tensor_bytes
from splitup.graph.validate import validate_model

# FLOPs per output element for ops that do more than one operation per element.
_ELEMENTWISE_COST = {
    "Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "Erf": 4, "Tanh": 4, "Sigmoid": 4, "Exp": 2,
    "Pow": 2, "Sqrt": 2, "Gelu": 8,
}
_FREE_OPS = frozenset({
    "Shape", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Constant", "Flatten", "Size", "Cast",
    "ConstantOfShape", "Gather", "Slice", "Concat", "Transpose", "Expand",
})


@dataclass(frozen=True)
class NodeCost:
    index: int
    name: str
    op_type: str
    flops: int


#: Initializers up to this many elements (axes, shape constants, scalars) stay inside a task's graph, where
#: shape inference can read them; larger ones are weights, held in the task's shard.
INLINE_ELEMENTS = 64


@dataclass
class GraphAnalysis:
    """A model's nodes in execution order with their costs, tensor sizes and consumers."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]  # non-Constant nodes, topological order
    constants: dict[str, onnx.NodeProto]  # output name -> Constant node
    types: dict[str, TensorType]
    flops: list[int]
    initializers: dict[str, onnx.TensorProto]
    graph_inputs: list[str]
    graph_outputs: list[str]
    state: dict[str, str]  # past input -> present output
    dim_max: dict[str, int]
    # Where the model's external-data weights are (a model saved with them beside it), or None: then
    # external initializers are shape-only and tasks are written without shards.
    weights_dir: Path | None = None
    first_use: dict[str, int] = field(default_factory=dict)
    last_use: dict[str, int] = field(default_factory=dict)
    producer: dict[str, int] = field(default_factory=dict)

    _sizes: dict[str, int] = field(default_factory=dict)
    # Each node's (inputs, outputs) as Python strings, read once: a protobuf field makes a new string
    # (whose hash is computed again) on every read, which dominated the partitioner's passes.
    io: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.io) != len(self.nodes):
            self.io = [(tuple(n.input), tuple(n.output)) for n in self.nodes]
        for name in fused_dequantized(self.nodes, self.initializers):
            self._sizes[name] = 0

    def nbytes(self, name: str) -> int:
        size = self._sizes.get(name)
        if size is None:
            t = self.types[name]
            size = self._sizes[name] = tensor_bytes(t.elem_type, t.shape, where=f"tensor {name}")
        return size

    def has_data(self, t: onnx.TensorProto) -> bool:
        return t.data_location != onnx.TensorProto.EXTERNAL or self.weights_dir is not None

    def array(self, t: onnx.TensorProto) -> np.ndarray:
        """An initializer's values, read from the external-data file for a model saved that way."""
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(t, base_dir=str(self.weights_dir))
        return numpy_helper.to_array(t)

    @property
    def total_flops(self) -> int:
        return sum(self.flops)

    def matrices(self) -> set[str]:
        """The weights: initializers of more than ``INLINE_ELEMENTS`` elements (the rest are axes, shapes, scalars)."""
        return {k for k, t in self.initializers.items() if math.prod(t.dims) > INLINE_ELEMENTS}

    @property
    def weight_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self.initializers)


def fused_dequantized(nodes: list[onnx.NodeProto], initializers: Mapping[str, onnx.TensorProto]) -> set[str]:
    """Dequantised weights that are never materialised: ``DequantizeLinear`` of a stored matrix read only
    as the right operand of ``MatMul``, which onnxruntime fuses into its quantised ``MatMulNBits``
    kernel at load time. An engine that does not fuse dequantises one matrix at a time, inside the
    task's workspace allowance."""
    candidates = {n.output[0]: True for n in nodes
                  if n.op_type == "DequantizeLinear" and n.input and n.input[0] in initializers and n.output}
    if not candidates:
        return set()
    for n in nodes:
        for i, name in enumerate(n.input):
            if name in candidates and not (n.op_type == "MatMul" and i == 1):
                candidates[name] = False
    return {name for name, ok in candidates.items() if ok}


def node_flops(node: onnx.NodeProto, types: dict[str, TensorType]) -> int:
    out = types.get(node.output[0]) if node.output else None
    if out is None:
        return 0
    n_out = element_count(out.shape)
    if node.op_type in ("MatMul", "Gemm"):
        a = types[node.input[0]].shape
        k = a[-1] if node.op_type == "MatMul" or not _attr(node, "transA") else a[0]
        return 2 * n_out * k
    if node.op_type in ("Conv", "ConvTranspose"):
        w = types[node.input[1]].shape
        return 2 * n_out * math.prod(w[1:])
    if node.op_type in ("MaxPool", "AveragePool"):
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [1])
        return n_out * math.prod(kernel)
    if node.op_type in ("GlobalAveragePool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
        return element_count(types[node.input[0]].shape)
    if node.op_type in _FREE_OPS:
        return 0
    return n_out * _ELEMENTWISE_COST.get(node.op_type, 1)


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def analyze(model: onnx.ModelProto, limits: Limits | None = None, *, trusted: bool = False,
            weights_dir: Path | None = None) -> GraphAnalysis:
    """Size every tensor and node at the declared maxima.

    Models from elsewhere are validated in full first. ``trusted`` is for graphs this process built
    itself with the builder (zoo models): it skips the hostile-input checks and only infers shapes,
    which keeps planning a 70B model well under a second. Every task cut from it is validated anyway.
    ``weights_dir`` is the directory of a model saved with external data: its weights are read from there
    (locations must stay inside it) when tasks are written.
    """
    limits = limits or Limits()
    dim_max = read_dim_max(model, limits)
    if trusted:
        types = typed_tensors(infer_at(model, dim_max, limits).graph, limits)
    else:
        # sized at the maxima while validating
        types = validate_model(model, limits=limits, bundle_dir=weights_dir).tensor_types
    return analysis_of(model, types, dim_max, weights_dir)


def analysis_of(model: onnx.ModelProto, types: dict[str, TensorType], dim_max: dict[str, int],
                weights_dir: Path | None = None) -> GraphAnalysis:
    """The analysis of ``model`` from tensor types already sized at the maxima (``analyze``, or the
    operator-splitting pass, which derives the types of the tensors it adds from the ones it splits)."""
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    if not nodes:  # a graph of constants alone: they are its work, one task makes them
        nodes, constants = list(model.graph.node), {}
    initializers = {t.name: t for t in model.graph.initializer}
    analysis = GraphAnalysis(
        model=model,
        nodes=nodes,
        constants=constants,
        types=types,
        flops=[node_flops(n, types) for n in nodes],
        initializers=initializers,
        # An initializer listed as an input (IR < 4 requires it) is a weight, not something callers feed.
        graph_inputs=[i.name for i in model.graph.input if i.name not in initializers],
        graph_outputs=[o.name for o in model.graph.output],
        state=read_state(model),
        dim_max=dim_max,
        weights_dir=weights_dir,
    )
    index_uses(analysis)
    return analysis


def index_uses(analysis: GraphAnalysis) -> None:
    """Fill in where each tensor is made, first read and last read."""
    first, last, producer = analysis.first_use, analysis.last_use, analysis.producer
    for i, (inputs, outputs) in enumerate(analysis.io):
        for name in inputs:
            if name:
                first.setdefault(name, i)
                last[name] = i
        for name in outputs:
            producer[name] = i
