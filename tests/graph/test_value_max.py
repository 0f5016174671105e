"""Declared value ranges (``splitup.value_max``): outputs sized by a graph input's values are bounded once the
input's range is declared, refused with the remedy while it is not, and a feed outside the range is refused
by the node (422) before any engine runs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from splitup.graph.errors import MalformedGraph, TensorTooLarge, UnboundedDimension
from splitup.graph.meta import VALUE_MAX_KEY
from splitup.graph.shapes import sizing_inputs
from splitup.graph.validate import validate_model
from splitup.models.onnx_import import declare_values
from splitup.partition.plan import make_plan
from splitup.partition.task import task_dir
from splitup.runtime.interface import InterfaceError, check_feeds
from splitup.runtime.local import LocalPipeline

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def model(nodes, inputs, outputs, *, opset: int = 19, inits=()) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    outs = [helper.make_tensor_value_info(n, t, None) for n, t in outputs]
    g = helper.make_graph(nodes, "m", ins, outs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def ort_run(m: onnx.ModelProto, feeds) -> list[np.ndarray]:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


# (name, model, declared ranges, feeds at the top of the ranges, expected bound of the single output)
CASES = [
    ("expand", model([helper.make_node("Expand", ["x", "shape"], ["y"])], [("x", F, [3, 1]), ("shape", I64, [3])],
                     [("y", F)]),
     {"shape": 6}, {"x": np.ones((3, 1), np.float32), "shape": np.array([6, 3, 6])}, [6, 3, 6]),
    ("tile", model([helper.make_node("Tile", ["x", "reps"], ["y"])], [("x", F, [2, 3]), ("reps", I64, [2])],
                   [("y", F)]),
     {"reps": 4}, {"x": np.ones((2, 3), np.float32), "reps": np.array([4, 4])}, [8, 12]),
    ("constant_of_shape", model([helper.make_node("ConstantOfShape", ["shape"], ["y"])], [("shape", I64, [2])],
                                [("y", F)]),
     {"shape": 5}, {"shape": np.array([5, 5])}, [5, 5]),
    ("range", model([helper.make_node("Range", ["a", "b", "d"], ["y"])],
                    [("a", I64, []), ("b", I64, []), ("d", I64, [])], [("y", I64)]),
     {"a": [-4, 4], "b": [-4, 4], "d": [-3, -1]}, {"a": np.array(4), "b": np.array(-4), "d": np.array(-1)}, [8]),
    ("pad", model([helper.make_node("Pad", ["x", "pads"], ["y"])], [("x", F, [2, 3]), ("pads", I64, [4])],
                  [("y", F)]),
     {"pads": [-1, 2]}, {"x": np.ones((2, 3), np.float32), "pads": np.array([2, 2, 2, 2])}, [6, 7]),
    ("resize_scales", model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
                            [("x", F, [1, 1, 4, 4]), ("scales", F, [4])], [("y", F)]),
     {"scales": [1, 2.5]}, {"x": np.ones((1, 1, 4, 4), np.float32), "scales": np.array([1, 1, 2.5, 2.5], np.float32)},
     [3, 3, 10, 10]),
    ("resize_sizes", model([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", axes=[2, 3])],
                           [("x", F, [1, 1, 4, 4]), ("sizes", I64, [2])], [("y", F)]),
     {"sizes": 9}, {"x": np.ones((1, 1, 4, 4), np.float32), "sizes": np.array([9, 9])}, [1, 1, 9, 9]),
    ("one_hot", model([helper.make_node("OneHot", ["i", "depth", "v"], ["y"])],
                      [("i", I64, [3]), ("depth", I64, [1]), ("v", F, [2])], [("y", F)]),
     {"depth": 7}, {"i": np.array([0, 2, 6]), "depth": np.array([7]), "v": np.array([0, 1], np.float32)}, [3, 7]),
    ("cast_then_expand", model([helper.make_node("Cast", ["shape"], ["s64"], to=I64),
                                helper.make_node("Expand", ["x", "s64"], ["y"])],
                               [("x", F, [1]), ("shape", TensorProto.INT32, [1])], [("y", F)]),
     {"shape": 10}, {"x": np.ones(1, np.float32), "shape": np.array([10], np.int32)}, [10]),
]


@pytest.mark.parametrize(("m", "declared", "feeds", "bound"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_declared_ranges_bound_value_sized_outputs(m, declared, feeds, bound):
    assert sizing_inputs(m) == sorted(declared) or set(declared) <= set(sizing_inputs(m))
    with pytest.raises(UnboundedDimension) as exc:
        validate_model(m)
    # The refusal names the remedy: the helper, the CLI option and the metadata key.
    assert "declare_values" in str(exc.value) and "--value-max" in str(exc.value) and VALUE_MAX_KEY in str(exc.value)
    report = validate_model(declare_values(m, declared))
    (shape,) = report.output_shapes.values()
    assert list(shape) == bound
    (actual,) = ort_run(m, feeds)  # the feeds are at the top of the declared ranges: never above the bound
    assert all(a <= b for a, b in zip(actual.shape, shape, strict=True)), (actual.shape, shape)


def test_a_declared_range_keeps_the_byte_caps():
    m = CASES[2][1]
    with pytest.raises(TensorTooLarge):
        validate_model(declare_values(m, {"shape": 2**30}))  # 2^60 elements: far over the 4 GiB tensor cap


@pytest.mark.parametrize("value", [
    {"shape": -1}, {"shape": [3, 1]}, {"shape": True}, {"shape": 2.5}, {"shape": [0, 2**40]}, {"shape": "8"},
    {"nope": 4}, {"shape": [1, 2, 3]}, {"shape": float("nan")}, {"shape": 10**400}, {"shape": {"max": [1]}},
    {"shape": {"max": [1, 2], "extra": 1}},
], ids=["negative-max", "empty", "bool", "float-for-int", "huge", "string", "not-an-input", "triple", "nan",
        "beyond-float", "wrong-length", "unknown-key"])
def test_malformed_declarations_are_refused(value):
    m = CASES[2][1]
    onnx.helper.set_model_props(m, {VALUE_MAX_KEY: json.dumps(value)})
    with pytest.raises(MalformedGraph):
        validate_model(m)


def test_a_delta_range_holding_zero_bounds_no_range():
    m = CASES[3][1]
    with pytest.raises(UnboundedDimension):
        validate_model(declare_values(m, {"a": [-4, 4], "b": [-4, 4], "d": [-1, 1]}))


def split_model() -> onnx.ModelProto:
    """x -> MatMul -> Expand(to the declared [rows, 512]) -> MatMul -> Relu: the value-sized tensor crosses a cut."""
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((8, 512)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((512, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Expand", ["h", "shape"], ["e"]),
             helper.make_node("MatMul", ["e", "w2"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    return model(nodes, [("x", F, [1, 8]), ("shape", I64, [2])], [("y", F)], inits=[w1, w2])


@pytest.fixture(scope="module")
def split_plan(tmp_path_factory):
    # One range per element: rows up to 64, the width exactly 512 (a shared 0..512 would bound 512 x 512).
    m = declare_values(split_model(), {"shape": {"min": [1, 512], "max": [64, 512]}})
    whole = validate_model(m)
    assert whole.tensor_types["e"].shape == (64, 512)
    out = tmp_path_factory.mktemp("value_plan")
    result = make_plan(m, "expand", whole.total_bytes - 8 * 1024, workspace_bytes=0, out_dir=out)
    return m, out, result.plan


def test_a_split_model_runs_at_every_size_in_range_and_refuses_beyond(split_plan):
    m, out, plan = split_plan
    assert len(plan.tasks) >= 2
    holders = [t for t in plan.tasks if "shape" in t.value_max]
    assert holders and all(t.value_max["shape"] == [[1, 64], [512, 512]] for t in holders)
    pipeline = LocalPipeline(out)
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    for rows in (1, 5, 64):
        feeds = {"x": x, "shape": np.array([rows, 512])}
        (want,) = ort_run(m, feeds)
        assert np.allclose(pipeline.run(feeds)["y"], want, atol=1e-5)
    with pytest.raises(InterfaceError, match=r"'shape': element 0 is 65, outside its declared range 1\.\.64"):
        pipeline.run({"x": x, "shape": np.array([65, 512])})
    feeds = {s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], s.dtype) for s in holders[0].inputs}
    for bad in ([4, 8], [0, 512], [4, 512, 1]):
        with pytest.raises(InterfaceError, match="'shape'"):
            check_feeds(holders[0], {**feeds, "shape": np.array(bad)})


def test_the_node_answers_an_over_range_feed_with_422(split_plan):
    from fastapi.testclient import TestClient

    from splitup.node.app import create_app
    from splitup.node.node import Node, NodeConfig
    from splitup.node.wire import Envelope, Hop, encode

    _, out, plan = split_plan
    task = next(t for t in plan.tasks if "shape" in t.value_max)
    node = Node(NodeConfig(threads=1, frame_port=None))
    node.load_bundle(task_dir(out, task))
    feeds = {s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], s.dtype) for s in task.inputs}
    with TestClient(create_app(node)) as client:
        for shape, status in (([4, 512], 200), ([10**6, 512], 422)):
            body = encode({**feeds, "shape": np.array(shape)},
                          Envelope("j", 0, [Hop(["http://x"], task.task_id, [task.outputs[0].name])]))
            r = client.post("/execute", content=body)
            assert r.status_code == status, r.text
    assert "'shape'" in r.json()["error"] and "1..64" in r.json()["error"], r.text


def test_a_later_task_reads_the_declared_input_and_unnamed_nodes_split_in_parts(tmp_path):
    """The Expand sits in the last task, so the graph input ``shape`` travels to it (with its range); the
    unnamed MatMuls before it are split by rows, whose parts once all came out named ``#0``, ``#1``..."""
    rng = np.random.default_rng(2)
    weights = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
               for n, s in (("w0", (8, 2048)), ("w1", (2048, 512)), ("w2", (512, 8)))]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w1"], ["h"]), helper.make_node("Expand", ["h", "shape"], ["e"]),
             helper.make_node("MatMul", ["e", "w2"], ["y"])]
    m = model(nodes, [("x", F, [1, 8]), ("shape", I64, [2])], [("y", F)], inits=weights)
    m = declare_values(m, {"shape": {"min": [1, 512], "max": [16, 512]}})
    plan = make_plan(m, "later", 2**20 + 200_000, workspace_bytes=0, out_dir=tmp_path).plan
    assert len(plan.tasks) >= 3 and "shape" not in plan.tasks[0].value_max
    assert plan.tasks[-1].value_max == {"shape": [[1, 16], [512, 512]]}
    x = rng.standard_normal((1, 8)).astype(np.float32)
    for rows in (1, 16):
        feeds = {"x": x, "shape": np.array([rows, 512])}
        (want,) = ort_run(m, feeds)
        assert np.allclose(LocalPipeline(tmp_path).run(feeds)["y"], want, rtol=1e-4, atol=1e-2)
