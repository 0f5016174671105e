"""The bounds a graph must stay within before a node will allocate anything for it."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30


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
    # Opset 13 is the oldest with the modern Split/Squeeze/Reduce signatures; 23 adds RMSNormalization.
    min_opset: int = 13
    max_opset: int = 23
    max_nodes: int = 200_000
    max_dim: int = 2**31 - 1
    # Loop trip counts must be static constants no larger than this.
    max_loop_trips: int = 65_536
    # Nested If/Loop/Scan bodies deeper than this are refused (recursion must stay bounded).
    max_subgraph_depth: int = 8
