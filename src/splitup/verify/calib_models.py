"""Tiny ONNX models, and cheating variants of them, for calibrating the comparison rule.

Built directly with ``onnx.helper`` so that calibration depends on nothing but ONNX: an MLP whose
output is logits, and a pre-norm transformer block (multi-head attention + feed-forward). Weights are
drawn from a seeded generator and scaled by 1/sqrt(fan_in), so activations stay O(1) as in a trained
network.

The cheats are the shortcuts a node could take instead of the work: skip a layer, or run weights
rounded to int8 (``quantize_int8``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _weight(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    return (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _model(nodes: list, inits: dict[str, np.ndarray], inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp(seed: int, *, batch: int = 8, d_in: int = 64, hidden: int = 128, layers: int = 3,
        classes: int = 32, skip_layer: int | None = None) -> onnx.ModelProto:
    """x[batch, d_in] -> ``layers`` x (MatMul, Add, Relu) -> logits[batch, classes].

    ``skip_layer`` drops one hidden layer (its input passes straight through), the cheat of a node that
    saves a layer's compute. Hidden layers all have width ``hidden`` so any one can be skipped.
    """
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {"w_in": _weight(rng, d_in, hidden), "b_in": _bias(rng, hidden)}
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h0_mm"]),
             helper.make_node("Add", ["h0_mm", "b_in"], ["h0_pre"]),
             helper.make_node("Relu", ["h0_pre"], ["h0"])]
    prev = "h0"
    for i in range(1, layers):
        w, b = _weight(rng, hidden, hidden), _bias(rng, hidden)
        if skip_layer == i:
            continue
        inits[f"w{i}"], inits[f"b{i}"] = w, b
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}_mm"]),
                  helper.make_node("Add", [f"h{i}_mm", f"b{i}"], [f"h{i}_pre"]),
                  helper.make_node("Relu", [f"h{i}_pre"], [f"h{i}"])]
        prev = f"h{i}"
    inits["w_out"], inits["b_out"] = _weight(rng, hidden, classes), _bias(rng, classes)
    nodes += [helper.make_node("MatMul", [prev, "w_out"], ["logits_mm"]),
              helper.make_node("Add", ["logits_mm", "b_out"], ["logits"])]
    return _model(
        nodes, inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        "mlp",
    )


def attention_block(seed: int, *, batch: int = 2, seq: int = 16, d_model: int = 64, heads: int = 4,
                    d_ff: int = 128, skip: str | None = None) -> onnx.ModelProto:
    """A pre-norm transformer block: h = x + MHA(LN(x)); y = h + FFN(LN(h)).

    ``skip`` is "attention" or "ffn": that sub-layer is left out, its residual passes through.
    """
    if d_model % heads:
        raise ValueError("d_model must be divisible by heads")
    rng = np.random.default_rng(seed)
    dh = d_model // heads
    inits: dict[str, np.ndarray] = {
        "ln1_g": (1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32), "ln1_b": _bias(rng, d_model),
        "ln2_g": (1 + 0.1 * rng.standard_normal(d_model)).astype(np.float32), "ln2_b": _bias(rng, d_model),
        "shape_split": np.array([batch, seq, heads, dh], dtype=np.int64),
        "shape_merge": np.array([batch, seq, d_model], dtype=np.int64),
        "inv_sqrt_dh": np.array(1.0 / np.sqrt(dh), dtype=np.float32),
    }
    for n in ("q", "k", "v", "o"):
        inits[f"w{n}"], inits[f"b{n}"] = _weight(rng, d_model, d_model), _bias(rng, d_model)
    inits["w_up"], inits["b_up"] = _weight(rng, d_model, d_ff), _bias(rng, d_ff)
    inits["w_down"], inits["b_down"] = _weight(rng, d_ff, d_model), _bias(rng, d_model)

    def linear(x: str, w: str, b: str, out: str) -> list:
        return [helper.make_node("MatMul", [x, w], [out + "_mm"]), helper.make_node("Add", [out + "_mm", b], [out])]

    nodes: list = []
    if skip == "attention":
        nodes.append(helper.make_node("Identity", ["x"], ["h"]))
    else:
        nodes.append(helper.make_node("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["n1"], axis=-1, epsilon=1e-5))
        for n in ("q", "k", "v"):
            nodes += linear("n1", f"w{n}", f"b{n}", n)
            nodes.append(helper.make_node("Reshape", [n, "shape_split"], [n + "_s"]))
        nodes += [
            helper.make_node("Transpose", ["q_s"], ["q_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["k_s"], ["k_t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["v_s"], ["v_t"], perm=[0, 2, 1, 3]),
            helper.make_node("MatMul", ["q_t", "k_t"], ["scores_raw"]),
            helper.make_node("Mul", ["scores_raw", "inv_sqrt_dh"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
            helper.make_node("MatMul", ["probs", "v_t"], ["ctx_t"]),
            helper.make_node("Transpose", ["ctx_t"], ["ctx_s"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["ctx_s", "shape_merge"], ["ctx"]),
        ]
        nodes += linear("ctx", "wo", "bo", "attn")
        nodes.append(helper.make_node("Add", ["x", "attn"], ["h"]))
    if skip == "ffn":
        nodes.append(helper.make_node("Identity", ["h"], ["y"]))
    else:
        nodes.append(helper.make_node("LayerNormalization", ["h", "ln2_g", "ln2_b"], ["n2"], axis=-1, epsilon=1e-5))
        nodes += linear("n2", "w_up", "b_up", "up")
        nodes.append(helper.make_node("Relu", ["up"], ["up_act"]))
        nodes += linear("up_act", "w_down", "b_down", "down")
        nodes.append(helper.make_node("Add", ["h", "down"], ["y"]))
    used = {i for node in nodes for i in node.input}
    inits = {k: v for k, v in inits.items() if k in used}
    return _model(
        nodes, inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, d_model])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, d_model])],
        "attention_block",
    )


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float matrix rounded to int8 (symmetric, per output column).

    This is what a node running an int8 kernel in place of the float32 one would produce; vectors
    (biases, norm gains) stay float32 as they do in real int8 inference.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim != 2:
            continue
        scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(w / scale), -127, 127)
        init.CopyFrom(numpy_helper.from_array((q * scale).astype(np.float32), init.name))
    return out


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computed in float64: float initializers, inputs and outputs become double."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return out
