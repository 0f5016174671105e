"""The memory-safety validator: may a node run this graph from a stranger without risk?

``validate_model`` runs, in order: proto size, IR/opset pins, no model-local functions, structure
(ops, domains, attributes, names, DAG, initializers, external-data paths, Loop trip counts), bounded
graph inputs, strict shape inference at the declared maxima, and byte accounting. The first failure
raises a ``GraphRejected`` subclass naming the node or tensor; success returns a ``ValidationReport``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import ModelProto

from splitup.graph.allowlist import DEFAULT_DOMAINS
from splitup.graph.errors import (
    BadOpset,
    DisallowedDomain,
    GraphRejected,
    MalformedGraph,
    ProtoTooLarge,
    TaskTooLarge,
)
from splitup.graph.limits import Limits
from splitup.graph.load import load_model
from splitup.graph.memory import estimate_memory
from splitup.graph.shapes import (
    DIM_MAX_KEY,
    TensorType,
    check_graph_inputs,
    infer_bounded,
    read_dim_max,
    typed_tensors,
)
from splitup.graph.structure import check_structure
from splitup.graph.values import read_value_max

__all__ = ["DIM_MAX_KEY", "GraphRejected", "Limits", "ValidationReport", "load_model", "validate_model", "validate_file"]


@dataclass(frozen=True)
class ValidationReport:
    """What a validated graph needs. Shapes and bytes are at the declared maxima of symbolic dims."""

    opset: int
    node_count: int
    op_counts: dict[str, int]
    parameter_count: int
    parameter_bytes: int
    peak_activation_bytes: int
    peak_node: str
    largest_tensor: str
    largest_tensor_bytes: int
    dim_max: dict[str, int]
    input_shapes: dict[str, tuple[int, ...]]
    output_shapes: dict[str, tuple[int, ...]]
    output_dtypes: dict[str, str]
    # Declared ranges of the inputs whose values size outputs: one (lo, hi) shared by every element, or one per
    # element (``splitup.graph.values``).
    value_max: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # Every tensor's type and shape at the declared maxima, for callers that size the graph next.
    tensor_types: dict[str, TensorType] = field(default_factory=dict, repr=False, compare=False)

    @property
    def total_bytes(self) -> int:
        """Initializers plus peak live activations: what ``Limits.max_total_bytes`` is compared with."""
        return self.parameter_bytes + self.peak_activation_bytes


def _check_proto_size(model: ModelProto, limits: Limits) -> None:
    size = model.ByteSize()
    if size > limits.max_proto_bytes:
        raise ProtoTooLarge(f"proto is {size} bytes, more than the limit of {limits.max_proto_bytes}")


def _default_opset(model: ModelProto, limits: Limits) -> int:
    # IR 3 is the first with opset imports; older files have no versioned operator semantics.
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise BadOpset(f"IR version {model.ir_version} is outside 3..{onnx.IR_VERSION}", where="ir_version")
    versions: dict[str, int] = {}
    for op in model.opset_import:
        domain = "" if op.domain in DEFAULT_DOMAINS else op.domain
        if domain in versions:
            raise BadOpset(f"opset for domain {op.domain!r} imported twice", where=f"opset {op.domain!r}")
        versions[domain] = op.version
    # Imports of other domains are refused even when unused: a task names exactly what it runs.
    for domain in versions:
        if domain:
            raise DisallowedDomain(f"opset import of domain {domain!r} is not allowed", where=f"opset {domain!r}")
    if "" not in versions:
        raise BadOpset("no opset imported for the default domain", where="opset_import")
    version = versions[""]
    if not limits.min_opset <= version <= limits.max_opset:
        raise BadOpset(
            f"default-domain opset {version} is outside {limits.min_opset}..{limits.max_opset}"
            + (" (splitup plan / splitup validate upgrade older models with onnx's version converter: "
               "splitup.graph.upgrade.upgrade_opset)" if version < limits.min_opset else ""),
            where="opset_import",
        )
    return version


def _op_counts(graphs: list[onnx.GraphProto]) -> dict[str, int]:
    counts = Counter(node.op_type for g in graphs for node in g.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def validate_model(
    model: ModelProto, *, limits: Limits | None = None, bundle_dir: Path | None = None
) -> ValidationReport:
    """Accept the model with a report, or raise the ``GraphRejected`` subclass naming what is wrong.

    ``bundle_dir`` is the directory the task's files live in; external-data locations must resolve
    inside it. Without it, only absolute paths and ``..`` are refused (symlinks cannot be checked).
    External data is never read: initializers are sized from their dims and dtype.
    """
    limits = limits or Limits()
    _check_proto_size(model, limits)
    if not model.HasField("graph"):
        raise MalformedGraph("not an ONNX model: it has no graph")
    opset = _default_opset(model, limits)
    if model.functions:
        raise DisallowedDomain("model-local functions are not allowed", where=f"function {model.functions[0].name}")
    graphs = check_structure(model.graph, limits, bundle_dir)
    dim_max = read_dim_max(model, limits)
    check_graph_inputs(model.graph, dim_max, limits)
    value_max = read_value_max(model, limits)
    inferred = infer_bounded(model, dim_max, limits)
    types = typed_tensors(inferred.graph, limits)
    memory = estimate_memory(inferred.graph, types, limits)
    total = memory.parameter_bytes + memory.peak_activation_bytes
    if limits.max_total_bytes is not None and total > limits.max_total_bytes:
        raise TaskTooLarge(
            f"task needs {total} bytes (initializers {memory.parameter_bytes} + peak activations "
            f"{memory.peak_activation_bytes}), more than the limit of {limits.max_total_bytes}",
            where=memory.peak_node,
        )
    outputs = [vi.name for vi in model.graph.output]
    return ValidationReport(
        opset=opset,
        node_count=sum(len(g.node) for g in graphs),
        op_counts=_op_counts(graphs),
        parameter_count=memory.parameter_count,
        parameter_bytes=memory.parameter_bytes,
        peak_activation_bytes=memory.peak_activation_bytes,
        peak_node=memory.peak_node,
        largest_tensor=memory.largest_tensor,
        largest_tensor_bytes=memory.largest_tensor_bytes,
        dim_max=dim_max,
        value_max=value_max,
        input_shapes={vi.name: types[vi.name].shape for vi in model.graph.input},
        output_shapes={name: types[name].shape for name in outputs},
        output_dtypes={name: onnx.TensorProto.DataType.Name(types[name].elem_type).lower() for name in outputs},
        tensor_types=types,
    )


def validate_file(path: str | Path, *, limits: Limits | None = None) -> tuple[ModelProto, ValidationReport]:
    """Load and validate a model file; its directory is the bundle its external data must stay in."""
    limits = limits or Limits()
    model = load_model(path, limits)
    return model, validate_model(model, limits=limits, bundle_dir=Path(path).parent)

