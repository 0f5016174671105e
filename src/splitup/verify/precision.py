"""Engines at a stated precision, emulated on the CPU: the honest arithmetic a GPU node may run.

A task states the precision it must run at (``TaskDefinition.precision``); an honest node may run it
there or higher. Without a GPU the coarser arithmetic is emulated on the task graph itself:

* ``fp16`` / ``bf16``: weights rounded to the format, and every float activation a node produces
  rounded to it too (storage in half precision, accumulation inside each op in float32, as GPU kernels
  do);
* ``tf32``: float32 everywhere, but both operands of every MatMul rounded to TF32's 10-bit mantissa
  (the default for float32 matmuls on NVIDIA GPUs since Ampere);
* ``int8`` / ``int4``: weight matrices rounded to a symmetric per-output-column integer grid (what a
  quantised task stores; a cheat runs them below the stated precision).

Rounding to ``p`` significant bits is Veltkamp's split in float32, ``t = c x; hi = t - (t - x)`` with
``c = 2^(24-p) + 1``: round-to-nearest of the mantissa with float32's exponent range (so no overflow
where a real half-precision kernel would accumulate in float32 anyway). Attention-mask fills and
constants are left alone, as GPU kernels keep the softmax input in float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Significant bits (implicit one included) of each float format.
MANTISSA_BITS = {"fp16": 11, "bf16": 8, "tf32": 11}
INT_LEVELS = {"int8": 127, "int4": 7}
# Ops whose float outputs are masks, shapes or copies: rounding them would emulate nothing real.
_KEEP = {"Constant", "Where", "Shape", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather",
         "Concat", "Expand", "Identity", "Trilu", "CumSum"}


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` (float32) rounded to ``bits`` significant bits, float32 range kept; non-finite values unchanged."""
    x = np.asarray(x, dtype=np.float32)
    c = np.float32(2 ** (24 - bits) + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        t = c * x
        hi = t - (t - x)
    return np.where(np.isfinite(hi), hi, x).astype(np.float32)


def quantize_columns(w: np.ndarray, levels: int) -> np.ndarray:
    """Symmetric per-output-column rounding of a matrix to ``2 levels + 1`` integer steps, dequantised."""
    scale = np.abs(w).max(axis=0, keepdims=True) / levels
    scale[scale == 0] = 1.0
    return (np.clip(np.round(w / scale), -levels, levels) * scale).astype(np.float32)


def round_weights(w: np.ndarray, precision: str) -> np.ndarray:
    """One float32 initializer as a node at ``precision`` holds it (vectors stay float32 under int grids)."""
    if precision in MANTISSA_BITS:
        return round_mantissa(w, MANTISSA_BITS[precision])
    if precision in INT_LEVELS:
        return quantize_columns(w, INT_LEVELS[precision]) if w.ndim == 2 else w
    if precision == "fp32":
        return w
    raise ValueError(f"unknown precision {precision!r}")


def emulate(model: onnx.ModelProto, *, weights: str = "fp32", activations: str = "fp32",
            tf32: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` computing as an engine with those weight/activation formats would."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if weights != "fp32":
        # Integer grids apply to weight matrices (matmul operands, embedding tables), not to tables
        # such as rotary sines that a quantised model keeps in float.
        matrices = {i for n in g.node if n.op_type in ("MatMul", "Gemm", "Gather") for i in n.input[:2]}
        for init in g.initializer:
            if init.data_type == TensorProto.FLOAT and (weights not in INT_LEVELS or init.name in matrices):
                w = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(round_weights(w, weights), init.name))
    floats = _float_tensors(out)
    nodes: list[onnx.NodeProto] = []
    consts: dict[int, str] = {}

    def rounded(name: str, bits: int, tag: str) -> tuple[str, list[onnx.NodeProto]]:
        if bits not in consts:
            consts[bits] = f"__round_c{bits}"
            g.initializer.append(numpy_helper.from_array(np.array(2 ** (24 - bits) + 1, np.float32), consts[bits]))
        t, d, r = f"{name}__{tag}t", f"{name}__{tag}d", f"{name}__{tag}r"
        return r, [helper.make_node("Mul", [name, consts[bits]], [t]), helper.make_node("Sub", [t, name], [d]),
                   helper.make_node("Sub", [t, d], [r])]

    renames: dict[str, str] = {}
    outputs = {o.name for o in g.output}
    for node in g.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        if tf32 and node.op_type in ("MatMul", "Gemm"):
            for k in range(min(2, len(node.input))):
                r, extra = rounded(node.input[k], MANTISSA_BITS["tf32"], f"tf32{k}_{len(nodes)}")
                nodes += extra
                node.input[k] = r
        nodes.append(node)
        if activations == "fp32" or node.op_type in _KEEP:
            continue
        for o in node.output:
            if o in floats and o not in outputs:
                r, extra = rounded(o, MANTISSA_BITS[activations], "act")
                nodes += extra
                renames[o] = r
            elif o in floats:
                # A graph output keeps its name: the raw value is renamed and rounded into it.
                raw = f"{o}__raw"
                node.output[list(node.output).index(o)] = raw
                r, extra = rounded(raw, MANTISSA_BITS[activations], "act")
                nodes += extra[:-1] + [helper.make_node("Sub", list(extra[-1].input), [o])]
    del g.node[:]
    g.node.extend(nodes)
    return out


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    return {v.name for v in [*g.value_info, *g.output, *g.input]
            if v.type.tensor_type.elem_type == TensorProto.FLOAT}


_FP16 = {"weights": "fp16", "activations": "fp16", "tf32": True}

#: How an honest node at each stated precision may compute, as ``emulate`` keyword sets, by name. Every
#: class includes plain float32 (higher precision is always honest) and TF32 matmuls from fp16 down. The
#: int8 / int4 classes are integer weights on float32 arithmetic ("int8/fp32"); integer weights on float16
#: arithmetic state fp16 activations and are the fp16 class (compare.precision_class).
HONEST: Mapping[str, Mapping[str, dict]] = {
    "fp32": {"fp32": {}},
    "fp16": {"fp32": {}, "tf32": {"tf32": True}, "fp16": _FP16},
    "bf16": {"fp32": {}, "fp16": _FP16, "bf16": {"weights": "bf16", "activations": "bf16", "tf32": True}},
    "int8": {"fp32": {}},
    "int4": {"fp32": {}},
}

#: A run below the stated precision, per class: weights (and activations for float formats) one step down.
BELOW: Mapping[str, Mapping[str, dict]] = {
    "fp32": {"fp16 weights": {"weights": "fp16"}, "bf16 weights": {"weights": "bf16"},
             "int8 weights": {"weights": "int8"}, "TF32 matmuls": {"tf32": True}},
    "fp16": {"bf16 arithmetic": {"weights": "bf16", "activations": "bf16"}, "int8 weights": {"weights": "int8"}},
    "bf16": {"int4 weights": {"weights": "int4"}},
    "int8": {"int4 weights": {"weights": "int4"}, "fp16 arithmetic": _FP16},
    "int4": {"fp16 arithmetic": _FP16},
}


def stated_weights(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """The task's own weights at an integer precision (a quantised task stores them so); float
    precisions keep the float32 weights, which every honest engine rounds its own way."""
    return emulate(model, weights=precision) if precision in INT_LEVELS else model
