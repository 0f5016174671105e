"""Quantised weights as blocked DequantizeLinear: conversion, packing, the builder path and its bytes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from splitup.graph import zoo
from splitup.graph.builder import TensorContext
from splitup.graph.errors import BuilderError
from splitup.graph.precision import precision_of, split_precision
from splitup.graph.quant import QuantFormat, QuantizedArray, pack_int4, quantize, resolve_dtype, unpack_int4
from splitup.graph.validate import validate_model
from splitup.partition.cost import analyze


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("axis", [0, 1])
def test_round_to_nearest_is_within_half_a_step(bits, axis):
    w = np.random.default_rng(0).normal(size=(64, 96)).astype(np.float32)
    qa = quantize(w, bits, 32, axis)
    step = np.repeat(qa.scale, 32, axis=axis)
    assert np.all(np.abs(qa.dequantize() - w) <= step / 2 + 1e-6)
    assert qa.q.dtype == (np.int8 if bits == 8 else np.uint8)
    assert (qa.zero_point is None) == (bits == 8)
    assert qa.nbytes == w.size * bits // 8 + qa.scale.nbytes + (0 if bits == 8 else qa.zero_point.size // 2)


def test_int4_packing_round_trips_odd_counts():
    for signed, values in ((True, np.arange(-8, 8).repeat(3)[:-1]), (False, np.arange(16).repeat(3)[:-1])):
        raw = pack_int4(values)
        assert len(raw) == (values.size + 1) // 2
        np.testing.assert_array_equal(unpack_int4(raw, values.size, signed), values)
    assert pack_int4(np.array([1, 2, 15])) == bytes([0x21, 0x0F])  # low nibble first, as ONNX packs


def test_resolve_dtype_names():
    assert resolve_dtype("fp16") == ("float16", None)
    assert resolve_dtype("int4", "fp16") == ("float16", QuantFormat(4))
    assert resolve_dtype("int8") == ("float32", QuantFormat(8))
    with pytest.raises(BuilderError):
        resolve_dtype("int3")
    with pytest.raises(BuilderError):
        QuantFormat(2)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantised_tiny_llama_is_plain_onnx_close_to_its_float_model(dtype):
    q = zoo.build("tiny-llama", seed=0, dtype=dtype)
    validate_model(q)
    assert {o.domain for o in q.opset_import} == {""} and q.opset_import[0].version >= 21
    assert "DequantizeLinear" in {n.op_type for n in q.graph.node}
    types = {t.data_type for t in q.graph.initializer}
    assert (TensorProto.UINT4 if dtype == "int4" else TensorProto.INT8) in types
    # No float copy of a matrix: 2-D float initializers are rotary tables, scales, and matrices whose input
    # size no block divides (tiny-llama's 172-wide MLP), which stay float.
    floats = [t for t in q.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2]
    assert all(t.name.startswith("rope.") or t.name.endswith("_scale") or t.dims[0] % 32 for t in floats)
    assert sum(t.name.endswith(".weight") for t in floats) == 4
    assert precision_of(q) == f"{dtype}/fp32"
    ids = np.array([[3, 1, 4, 1, 5, 9]], np.int64)
    ref = zoo.build("tiny-llama", seed=0, kv_cache=False)
    out = _run(zoo.build("tiny-llama", seed=0, dtype=dtype, kv_cache=False), {"input_ids": ids})[0]
    want = _run(ref, {"input_ids": ids})[0]
    rel = np.linalg.norm(out - want) / np.linalg.norm(want)
    assert rel < (0.02 if dtype == "int8" else 0.25)


def test_q4_1_minimum_is_exact_and_keeps_matmul_fusable():
    """A llama.cpp Q4_1 weight (w = d*q + m per block) times x equals x @ its dequantised matrix."""
    rng = np.random.default_rng(1)
    k, n, block = 64, 48, 32
    qa = QuantizedArray(rng.integers(0, 16, size=(k, n)).astype(np.uint8),
                        rng.random((k // block, n)).astype(np.float32), 0, block, 4,
                        minimum=rng.normal(size=(k // block, n)).astype(np.float32))
    ctx = TensorContext("q41")
    x = ctx.add_graph_input("x", (2, k))
    y = x.linear(ctx.quantized_parameter("w", (k, n), "float32", QuantFormat(4), qa))
    model = ctx.compile_to_graph({"y": y})
    xv = rng.normal(size=(2, k)).astype(np.float32)
    np.testing.assert_allclose(_run(model, {"x": xv})[0], xv @ qa.dequantize(), rtol=1e-5, atol=1e-5)
    # DequantizeLinear feeds MatMul directly: the pattern onnxruntime fuses.
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert any(n.op_type == "MatMul" and n.input[1] == dq.output[0] for n in model.graph.node)


def test_quantised_lookup_reads_8bit_rows_and_a_product_refuses_a_row_layout():
    rng = np.random.default_rng(2)
    table = rng.normal(size=(64, 32)).astype(np.float32)
    ctx = TensorContext("emb")
    ids = ctx.add_graph_input("ids", (1, 3), "int64")
    e = ctx.quantized_parameter("embed", (64, 32), "float32", QuantFormat(4), table)
    model = ctx.compile_to_graph({"rows": e.gather(ids)})
    assert {t.name: t.data_type for t in model.graph.initializer}["embed"] == TensorProto.INT8
    got = _run(model, {"ids": np.array([[0, 5, 63]])})[0]
    np.testing.assert_allclose(got[0], quantize(table, 8, 32, 1).dequantize()[[0, 5, 63]], rtol=1e-6)
    with pytest.raises(BuilderError, match="product and as a lookup"):
        ctx.add_graph_input("x", (1, 64)).matmul(e)


def test_weight_bytes_are_counted_exactly_and_fused_dequantisation_costs_nothing():
    q = zoo.build("tiny-llama", dtype="int4")  # shape-only
    a = analyze(q, trusted=True)
    expected = 0
    for t in q.graph.initializer:
        bits = {TensorProto.UINT4: 4, TensorProto.INT4: 4, TensorProto.INT8: 8, TensorProto.FLOAT: 32}[t.data_type]
        expected += (int(np.prod(t.dims)) * bits + 7) // 8
    assert a.weight_bytes == expected
    dq = [n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in a.initializers]
    assert dq and all(a.nbytes(name) == 0 for name in dq)


def test_precision_strings():
    assert split_precision("int4/fp16") == ("int4", "fp16")
    for bad in ("int4", "int5/fp32", "fp32/int8"):
        with pytest.raises(ValueError):
            split_precision(bad)
    assert precision_of(zoo.build("tiny-llama", dtype="fp16")) == "fp16/fp16"
    assert precision_of(zoo.build("mlp", dtype="int8", activations="fp16")) == "int8/fp16"
