"""Why a graph was refused. Each rejection names the offending node or tensor and carries a stable code."""

from __future__ import annotations

from splitup.errors import SplitUpError


class GraphRejected(SplitUpError):
    """A graph failed validation; nothing was allocated for it.

    ``code`` is stable and machine-readable, ``where`` names the node or tensor at fault (may be empty
    for whole-model problems such as the proto size).
    """

    code = "graph_rejected"

    def __init__(self, message: str, *, where: str = "") -> None:
        self.where = where
        super().__init__(f"{message}" + (f" [{where}]" if where else ""))


class DisallowedOp(GraphRejected):
    code = "disallowed_op"


class DisallowedDomain(GraphRejected):
    code = "disallowed_domain"


class BadOpset(GraphRejected):
    code = "bad_opset"


class ExternalDataEscape(GraphRejected):
    code = "external_data_escape"


class TensorTooLarge(GraphRejected):
    code = "tensor_too_large"


class UnboundedDimension(GraphRejected):
    code = "unbounded_dimension"


class MalformedGraph(GraphRejected):
    """Structure errors: cycles, dangling inputs, duplicate names, empty graphs, unparsable protos."""

    code = "malformed_graph"


class ProtoTooLarge(GraphRejected):
    code = "proto_too_large"


class StringTensor(GraphRejected):
    code = "string_tensor"


class ControlFlowRejected(GraphRejected):
    code = "control_flow"


class BuilderError(SplitUpError):
    """Misuse of the builder API (shape mismatch, unknown dtype, ...), raised while the graph is built."""


class UnreadableModel(GraphRejected):
    """The model could not be read at all: missing file, a directory, no permission."""

    code = "unreadable_model"


class TooManyNodes(GraphRejected):
    code = "too_many_nodes"


class TaskTooLarge(TensorTooLarge):
    """Initializers plus peak live activations exceed the task's declared byte limit."""

    code = "task_too_large"


class UnsupportedDtype(GraphRejected):
    """An element type that has no safetensors / engine form (strings excluded: see StringTensor)."""

    code = "unsupported_dtype"
