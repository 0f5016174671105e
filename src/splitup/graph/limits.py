"""The bounds a graph must stay within before a node will allocate anything for it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

GiB = 2**30
# The newest opset this code was written against; the window may open further (see ``runtime_max_opset``).
KNOWN_OPSET = 23


@functools.cache
def runtime_max_opset() -> int:
    """The newest default-domain opset that both the installed ``onnx`` (whose shape inference the validator
    runs) and the installed onnxruntime (the default engine) accept: the validator's window follows them."""
    import onnx
    from onnx import TensorProto, helper

    newest = onnx.defs.onnx_opset_version()
    try:
        import onnxruntime as ort
    except ImportError:
        return min(newest, KNOWN_OPSET)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for version in range(newest, KNOWN_OPSET, -1):
        opsets = [helper.make_opsetid("", version)]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any refusal means this opset is beyond the runtime
            continue
        return version
    return min(newest, KNOWN_OPSET)


@dataclass(frozen=True)
class Limits:
    """Hard caps applied by :func:`splitup.graph.validate.validate_model`.

    ``max_total_bytes`` is the task's declared limit on initializers plus peak live activations;
    ``None`` means the task declared none (every single tensor is still capped by ``max_tensor_bytes``).
    """

    # Protobuf cannot serialise more than 2 GiB - 1; bigger weights must live in external data.
    max_proto_bytes: int = 2 * GiB - 1
    max_tensor_bytes: int = 4 * GiB
    max_total_bytes: int | None = None
    # Opset 13 is the oldest with the modern Split/Squeeze/Reduce signatures; the newest is what the
    # installed onnx and onnxruntime both support (23, which adds RMSNormalization, or later).
    min_opset: int = 13
    max_opset: int = field(default_factory=runtime_max_opset)
    max_nodes: int = 200_000
    max_dim: int = 2**31 - 1
    # Loop trip counts must be static constants no larger than this.
    max_loop_trips: int = 65_536
    # Nested If/Loop/Scan bodies deeper than this are refused (recursion must stay bounded).
    max_subgraph_depth: int = 8
