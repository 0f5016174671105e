"""Shapes of Loop outputs, which ONNX inference leaves unknown ("may change across iterations").

A loop-carried value whose initial value, body input and body output all have one and the same
concrete shape keeps it in every iteration (induction), so the Loop output has that shape. A scan
output stacks one body output per iteration: ``[trip_count, *body_shape]``, with the static trip count
the structure pass already bounded. Anything else stays unknown and is rejected later.
"""

from __future__ import annotations

import numpy as np
from onnx import AttributeProto, ModelProto, ValueInfoProto, helper, numpy_helper

from splitup.graph.external import is_external


def _shape(vi: ValueInfoProto | None) -> tuple[int, int, list[int]] | None:
    """(elem_type, rank, dims) when fully concrete."""
    if vi is None or vi.type.WhichOneof("value") != "tensor_type":
        return None
    tt = vi.type.tensor_type
    if not tt.elem_type or not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    dims = [d.dim_value for d in tt.shape.dim]
    return tt.elem_type, len(dims), dims


def complete_loop_shapes(model: ModelProto) -> bool:
    """Add value_info for the main graph's Loop outputs where it is provable; True if any was added."""
    graph = model.graph
    known = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    for init in graph.initializer:
        known[init.name] = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
    constants = {t.name: t for t in graph.initializer if not is_external(t)}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == AttributeProto.TENSOR:
            constants[node.output[0]] = node.attribute[0].t
    added = False
    for node in graph.node:
        if node.op_type != "Loop" or node.input[0] not in constants:
            continue
        body = next(a.g for a in node.attribute if a.name == "body")
        try:
            trips = int(np.asarray(numpy_helper.to_array(constants[node.input[0]])).reshape(-1)[0])
        except Exception:  # the structure pass already refused unreadable trip counts; stay unknown
            continue
        body_known = {vi.name: vi for vi in (*body.input, *body.value_info, *body.output)}
        carried = len(node.input) - 2
        for k, out in enumerate(node.output):
            if not out or _shape(known.get(out)) is not None:
                continue
            body_out = _shape(body_known.get(body.output[k + 1].name)) if k + 1 < len(body.output) else None
            if body_out is None:
                continue
            if k < carried:
                initial = _shape(known.get(node.input[2 + k]))
                body_in = _shape(body.input[2 + k]) if 2 + k < len(body.input) else None
                if not (initial == body_in == body_out):
                    continue
                elem, _, dims = body_out
            else:
                elem, _, body_dims = body_out
                dims = [trips, *body_dims]
            typed = helper.make_tensor_value_info(out, elem, dims)
            # A graph output's type lives in graph.output; inference ignores value_info for it.
            target = next((vi for vi in graph.output if vi.name == out), None)
            if target is not None:
                target.type.CopyFrom(typed.type)
            else:
                graph.value_info.append(typed)
            added = True
    return added
