"""A guard on the convention's one assumption: tensors do not shrink as input dims grow.

Sizing at the declared maxima bounds the real sizes only when every shape grows with the input dims.
Shape arithmetic can break that (``ConstantOfShape(max_seq - seq)`` is empty at the maximum and huge
at seq = 1), so the graph is inferred again at probe points below the maxima and any tensor that is
bigger there than at the maxima is rejected. Probes are samples, not a proof: they catch the plain
cases (subtraction, division by a dim), and a probe point where the graph cannot be inferred at all
is skipped, because graphs may legitimately require relations between dims.
"""

from __future__ import annotations

from onnx import GraphProto, ModelProto

from splitup.graph.errors import GraphRejected, UnboundedDimension
from splitup.graph.sizes import tensor_bytes
from splitup.graph.structure import node_label


def probe_points(dim_max: dict[str, int]) -> list[dict[str, int]]:
    """All symbols at 1 (0 when that is the maximum), and all at half their maximum."""
    low = {k: min(1, v) for k, v in dim_max.items()}
    mid = {k: max(low[k], v // 2) for k, v in dim_max.items()}
    return [p for p in (low, mid) if p != dim_max]


def output_bytes(graph: GraphProto) -> dict[str, tuple[int, str]]:
    """Bytes of every concretely typed node output of the main graph, with the producing node's label."""
    known = {vi.name: vi for vi in (*graph.value_info, *graph.output)}
    sizes: dict[str, tuple[int, str]] = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            vi = known.get(out)
            if not out or vi is None or vi.type.WhichOneof("value") != "tensor_type":
                continue
            tt = vi.type.tensor_type
            if not tt.elem_type or not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
                continue
            try:
                n = tensor_bytes(tt.elem_type, [d.dim_value for d in tt.shape.dim], where=out)
            except GraphRejected:
                continue
            sizes[out] = (n, node_label(node, index))
    return sizes


def check_monotone(at_max: ModelProto, probes: list[ModelProto | None]) -> None:
    reference = output_bytes(at_max.graph)
    for probe in probes:
        if probe is None:
            continue
        for name, (n, label) in output_bytes(probe.graph).items():
            bound = reference.get(name, (None, ""))[0]
            if bound is not None and n > bound:
                raise UnboundedDimension(
                    f"is {n} bytes at smaller inputs but {bound} at the declared maxima; "
                    "tensor sizes must not shrink as input dims grow",
                    where=f"tensor {name} from {label}",
                )
