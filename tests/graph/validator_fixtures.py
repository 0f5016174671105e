"""Small hand-made ONNX models for the validator tests, built with ``onnx.helper`` only."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[str | onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] = (),  # type: ignore[assignment]
    *,
    dim_max: dict[str, int] | None = None,
    opset: int = OPSET,
    value_info: list[onnx.ValueInfoProto] = (),  # type: ignore[assignment]
) -> onnx.ModelProto:
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) if isinstance(o, str) else o for o in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, list(initializers), value_info=list(value_info))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if dim_max is not None:
        helper.set_model_props(m, {"splitup.dim_max": json.dumps(dim_max)})
    return m


def fin(name: str, shape: list[int | str] | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def weight(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def external(name: str, shape: tuple[int, ...], location: str, dtype: int = TensorProto.FLOAT) -> onnx.TensorProto:
    """An initializer whose bytes live in ``location``; the file need not exist (it is never read)."""
    t = TensorProto(name=name, data_type=dtype, dims=list(shape))
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    return t


def mlp(hidden: int = 8, batch: int | str = 2, dim_max: dict[str, int] | None = None) -> onnx.ModelProto:
    """x -> MatMul(w1) -> Add(b1) -> Relu -> MatMul(w2): a valid baseline the tests then break."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    inits = [weight("w1", (4, hidden)), weight("b1", (hidden,), 1), weight("w2", (hidden, 3), 2)]
    return model(nodes, [fin("x", [batch, 4])], ["y"], inits, dim_max=dim_max)


def tiny_decoder(seq_max: int = 16, past: int | str = 0, past_max: int | None = None) -> onnx.ModelProto:
    """One attention head with a KV cache: embed, q/k/v, concat past, causal-free softmax attention,
    a GELU MLP, LayerNorm. Past length is a concrete 0 (empty cache) or a bounded symbol."""
    d = 8
    nodes = [
        helper.make_node("Gather", ["wte", "input_ids"], ["emb"], name="embed"),
        helper.make_node("LayerNormalization", ["emb", "ln_g", "ln_b"], ["xn"], axis=-1, name="ln1"),
        helper.make_node("MatMul", ["xn", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["xn", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["xn", "wv"], ["v"], name="v_proj"),
        helper.make_node("Concat", ["past_k", "k"], ["present_k"], axis=1, name="cat_k"),
        helper.make_node("Concat", ["past_v", "v"], ["present_v"], axis=1, name="cat_v"),
        helper.make_node("Transpose", ["present_k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Div", ["scores", "scale"], ["scaled"], name="scale_div"),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["probs", "present_v"], ["attn"], name="pv"),
        helper.make_node("Add", ["emb", "attn"], ["res"], name="residual"),
        helper.make_node("MatMul", ["res", "w_up"], ["up"], name="up_proj"),
        helper.make_node("Erf", ["up"], ["act"], name="erf"),
        helper.make_node("MatMul", ["act", "w_down"], ["down"], name="down_proj"),
        helper.make_node("Add", ["res", "down"], ["hidden"], name="residual2"),
        helper.make_node("Shape", ["hidden"], ["hshape"], name="shape"),
        helper.make_node("Reshape", ["hidden", "hshape"], ["logits"], name="reshape"),
    ]
    inits = [
        weight("wte", (32, d)),
        numpy_helper.from_array(np.ones(d, np.float32), "ln_g"),
        numpy_helper.from_array(np.zeros(d, np.float32), "ln_b"),
        weight("wq", (d, d), 1),
        weight("wk", (d, d), 2),
        weight("wv", (d, d), 3),
        numpy_helper.from_array(np.array(np.sqrt(d), np.float32), "scale"),
        weight("w_up", (d, 4 * d), 4),
        weight("w_down", (4 * d, d), 5),
    ]
    inputs = [
        fin("input_ids", [1, "seq"], TensorProto.INT64),
        fin("past_k", [1, past, d]),
        fin("past_v", [1, past, d]),
    ]
    dim_max = {"seq": seq_max}
    if past_max is not None:
        dim_max["past"] = past_max
    return model(nodes, inputs, ["logits", "present_k", "present_v"], inits, dim_max=dim_max)
