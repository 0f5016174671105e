"""Old opsets upgraded by onnx's version converter: a Scan 8 over a batch of one keeps its interface (the
converter's Scan 9 has no batch axis), any other change to what callers feed is refused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from splitup.graph.errors import BadOpset
from splitup.graph.upgrade import upgrade_opset
from splitup.graph.validate import validate_model


def scan8(batch: int):  # noqa: ANN201 - onnx.ModelProto
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "next"], ["sum_out"]), helper.make_node("Identity", ["sum_out"], ["out"])],
        "body", [helper.make_tensor_value_info("sum_in", f, [2]), helper.make_tensor_value_info("next", f, [2])],
        [helper.make_tensor_value_info("sum_out", f, [2]), helper.make_tensor_value_info("out", f, [2])])
    scan = helper.make_node("Scan", ["", "initial", "x"], ["y", "z"], num_scan_inputs=1, body=body)
    graph = helper.make_graph(
        [scan], "scan8", [helper.make_tensor_value_info("initial", f, [batch, 2]),
                          helper.make_tensor_value_info("x", f, [batch, 3, 2])],
        [helper.make_tensor_value_info("y", f, [batch, 2]), helper.make_tensor_value_info("z", f, [batch, 3, 2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 3
    return m


def test_a_scan8_over_one_sequence_keeps_its_inputs_and_outputs():
    old = scan8(1)
    new = upgrade_opset(old)
    assert [vi.type for vi in new.graph.input] == [vi.type for vi in old.graph.input]
    assert [vi.type for vi in new.graph.output] == [vi.type for vi in old.graph.output]
    validate_model(new)
    feeds = {"initial": np.zeros((1, 2), np.float32), "x": np.arange(6, dtype=np.float32).reshape(1, 3, 2)}
    y, z = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert np.array_equal(y, [[6, 9]]) and np.array_equal(z, np.cumsum(feeds["x"], axis=1))


def test_a_scan8_over_a_batch_is_refused():
    with pytest.raises(BadOpset, match="changes the model's inputs"):
        upgrade_opset(scan8(2))
