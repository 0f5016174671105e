"""A graph's numeric precision: how its weights are stored and what type its activations have.

Written as ``"<weights>/<activations>"``, e.g. ``"int4/fp16"``: weights are ``fp32``, ``fp16``, ``int8``
or ``int4`` (the narrowest weight matrix, read from the initializers), activations ``fp32`` or
``fp16`` (the float tensors crossing the graph's interface, except an input the graph only casts to
float32 on entry: the task that chooses tokens takes the half-precision hidden state so and computes
in float32, ``splitup.graph.upcast``). Proof of Sampling keys its tolerance on
it: an honest re-execution of an fp16 or quantised task differs from the original by more than an
fp32 one does.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

WEIGHT_PRECISIONS = ("fp32", "fp16", "int8", "int4")
ACTIVATION_PRECISIONS = ("fp32", "fp16")
DEFAULT_PRECISION = "fp32/fp32"
#: The output a task chooses tokens from (the comparison rule checks the canonical token on it): the task
#: emitting it computes in float32 whatever the plan's activations (``splitup.graph.upcast``).
TOKEN_OUTPUT = "logits"
HALF_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})

_WEIGHT_RANK = {TensorProto.INT4: "int4", TensorProto.UINT4: "int4", TensorProto.INT8: "int8",
                TensorProto.UINT8: "int8", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "fp16",
                TensorProto.FLOAT: "fp32", TensorProto.DOUBLE: "fp32"}
_FLOAT_ACTIVATIONS = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "fp16", TensorProto.FLOAT: "fp32",
                      TensorProto.DOUBLE: "fp32"}


def split_precision(precision: str) -> tuple[str, str]:
    """``"int4/fp16"`` -> ``("int4", "fp16")``; raises ValueError for anything else."""
    weights, sep, acts = precision.partition("/")
    if not sep or weights not in WEIGHT_PRECISIONS or acts not in ACTIVATION_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not <{'|'.join(WEIGHT_PRECISIONS)}>/"
                         f"<{'|'.join(ACTIVATION_PRECISIONS)}>")
    return weights, acts


def precision_of(model: onnx.ModelProto) -> str:
    """The precision of a (task) graph, from its initializers' and interface tensors' element types.

    Weights: the narrowest type among the integer inputs of ``DequantizeLinear`` nodes and the
    multi-dimensional float initializers (small vectors such as norms do not count); activations: fp16
    when any float interface tensor is fp16, an input that every reader casts to float32 excepted.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    quantised = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input}
    kinds = set()
    for name, t in inits.items():
        if name in quantised or (t.data_type in _FLOAT_ACTIVATIONS and len(t.dims) >= 2):
            kinds.add(_WEIGHT_RANK.get(t.data_type, "fp32"))
    weights = next((w for w in reversed(WEIGHT_PRECISIONS) if w in kinds), "fp32")
    widened = _cast_to_float32_only(g)
    io = [vi.type.tensor_type.elem_type for vi in (*g.input, *g.output)
          if vi.name not in inits and vi.name not in widened]
    acts = "fp16" if any(_FLOAT_ACTIVATIONS.get(e) == "fp16" for e in io) else "fp32"
    if not any(e in _FLOAT_ACTIVATIONS for e in io) and weights == "fp16":
        acts = "fp16"  # an integer-only interface (token ids in, argmax out): weights decide
    return f"{weights}/{acts}"


def _cast_to_float32_only(g: onnx.GraphProto) -> set[str]:
    """Graph inputs whose every reader is a Cast to float32 (or wider)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for x in node.input:
            readers.setdefault(x, []).append(node)
    wide = {TensorProto.FLOAT, TensorProto.DOUBLE}
    return {vi.name for vi in g.input if readers.get(vi.name) and all(
        n.op_type == "Cast" and any(a.name == "to" and a.i in wide for a in n.attribute) for n in readers[vi.name])}
