"""Every tensor type a task can carry is costed, written and run; the rest is a typed refusal."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitup.graph.errors import UnsupportedDtype
from splitup.graph.meta import ONNX_DTYPE_NAMES, dtype_of
from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.partition.task import TensorSpec
from splitup.runtime.local import LocalPipeline


def mixed_model():
    """bfloat16 and float8 weights, int16 and uint32 arithmetic, a uint32 output."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(ml_dtypes.bfloat16), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 4)).astype(ml_dtypes.float8_e4m3fn), "w2"),
             numpy_helper.from_array(rng.integers(-5, 5, (4,)).astype(np.int16), "w3"),
             numpy_helper.from_array(rng.integers(0, 5, (4,)).astype(np.uint32), "w4")]
    nodes = [helper.make_node("Cast", ["w1"], ["f1"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "f1"], ["h1"]),
             helper.make_node("Cast", ["w2"], ["f2"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["h1", "f2"], ["h2"]),
             helper.make_node("Cast", ["h2"], ["i2"], to=TensorProto.INT16), helper.make_node("Mul", ["i2", "w3"], ["i3"]),
             helper.make_node("Cast", ["i3"], ["u3"], to=TensorProto.UINT32), helper.make_node("Add", ["u3", "w4"], ["y"])]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT32, [2, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("tasks", [2, 3])
def test_mixed_types_split_and_match(tasks, tmp_path):
    model = mixed_model()
    result = make_plan(model, "mixed", budget_for_tasks(analyze(model), tasks), workspace_bytes=0, out_dir=tmp_path)
    assert len(result.plan.tasks) == tasks
    x = np.abs(np.random.default_rng(1).standard_normal((2, 4))).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = LocalPipeline(tmp_path).run({"x": x})["y"]
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, ref)


def test_sizes_of_every_carried_type():
    for elem, name in ONNX_DTYPE_NAMES.items():
        bits = 8 if "float8" in name else np.dtype(getattr(ml_dtypes, name, name)).itemsize * 8
        assert TensorSpec("t", name, [3], [3]).max_bytes == 3 * bits // 8, name
        assert dtype_of(elem, where="t") == name


@pytest.mark.parametrize("elem", [TensorProto.STRING, TensorProto.COMPLEX128, TensorProto.INT4, 999])
def test_types_without_a_wire_form_are_refused_by_name(elem):
    with pytest.raises(UnsupportedDtype, match=r"cannot cross a task boundary.*\[tensor t\]"):
        dtype_of(elem, where="tensor t")


def test_bfloat16_and_float8_cross_cuts_and_come_out(tmp_path):
    """Graph input, activations at the cuts and graph output in bfloat16 / float8, which onnxruntime's numpy
    bridge cannot carry: the engine binds them as typed buffers (and the wire carries them, tests/node)."""
    rng = np.random.default_rng(2)
    w1, w2 = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["xf", "w1"], ["h"]),
             helper.make_node("Cast", ["h"], ["hb"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["hb"], ["hf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["hf", "w2"], ["g"]),
             helper.make_node("Cast", ["g"], ["g8"], to=TensorProto.FLOAT8E4M3FN),
             helper.make_node("Cast", ["g8"], ["gf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["gf", "w1"], ["o"]),
             helper.make_node("Cast", ["o"], ["y"], to=TensorProto.BFLOAT16)]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 8])],
                              initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    out = tmp_path
    result = make_plan(model, "bf16", budget_for_tasks(analyze(model), 3), workspace_bytes=0, out_dir=out)
    crossing = {s.dtype for t in result.plan.tasks[1:] for s in t.inputs}
    assert len(result.plan.tasks) == 3 and crossing >= {"bfloat16"}, crossing
    x = rng.standard_normal((2, 8)).astype(ml_dtypes.bfloat16)
    got = LocalPipeline(out).run({"x": x})["y"]
    h = (x.astype(np.float32) @ w1).astype(ml_dtypes.bfloat16).astype(np.float32)
    g = (h @ w2).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    want = (g @ w1).astype(ml_dtypes.bfloat16)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-2)
