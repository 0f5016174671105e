"""Shape values never cross a cut, and a planner-made task that fails validation is the planner's fault."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitup.cli import main
from splitup.graph.errors import UnboundedDimension
from splitup.graph.meta import DIM_MAX_KEY
from splitup.graph.validate import validate_model
from splitup.partition import analyze, budget_for_tasks
from splitup.partition import task as task_module
from splitup.partition.plan import make_plan
from splitup.partition.task import PlannerFault
from splitup.runtime.local import LocalPipeline


def exporter_style_model() -> onnx.ModelProto:
    """An MLP whose last Reshape target is computed up front from the input's shape, as exporters do."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["b"], axis=0),
        helper.make_node("Gather", ["shape", "one"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
        helper.make_node("Unsqueeze", ["s", "axes"], ["s1"]),
        helper.make_node("Concat", ["b1", "s1", "tail"], ["target"], axis=0),
    ]
    prev = "x"
    for i in range(4):
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        prev = f"h{i}"
    nodes.append(helper.make_node("Reshape", [prev, "target"], ["y"]))
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}") for i in range(4)]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("zero", 0), ("one", 1), ("axes", [0]), ("tail", [2, 4]))]
    graph = helper.make_graph(nodes, "exported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 2, 4])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {DIM_MAX_KEY: json.dumps({"batch": 4, "seq": 16})})
    return model


@pytest.mark.parametrize("tasks", [2, 3])
def test_shape_values_are_recomputed_in_each_task(tasks, tmp_path):
    model = exporter_style_model()
    result = make_plan(model, "m", budget_for_tasks(analyze(model), tasks), workspace_bytes=0, out_dir=tmp_path)
    assert len(result.plan.tasks) == tasks
    for t in result.plan.tasks[1:]:  # only activations cross: never an int64 shape vector
        assert [s.dtype for s in t.inputs] == ["float32"], t.inputs
    x = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(LocalPipeline(tmp_path).run({"x": x})["y"], ref, atol=1e-6)


def test_a_task_that_fails_validation_is_reported_as_the_planners_fault(monkeypatch):
    model = exporter_style_model()
    budget = budget_for_tasks(analyze(model), 2)
    monkeypatch.setattr(task_module, "rematerialise", lambda a, probes, values, nodes: nodes)
    with pytest.raises(PlannerFault, match=r"task 1 of the plan .* SplitUp fault, not a problem with your model"):
        make_plan(model, "m", budget, workspace_bytes=0)  # printed plans are checked too, not only written ones


def test_missing_dim_maximum_says_how_to_declare_it():
    model = exporter_style_model()
    del model.metadata_props[:]
    with pytest.raises(UnboundedDimension, match=r"declare_dims\(model, \{'batch': N\}\).*dim_max=.*splitup.dim_max"):
        validate_model(model)


def test_infeasible_budget_names_one_that_fits(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(exporter_style_model(), path)
    assert main(["plan", str(path), "--vram", "64B", "--workspace", "0"]) == 2
    err = capsys.readouterr().err
    assert "would fit it (--vram 1MiB; 64 B is too small)" in err and "Traceback" not in err


def test_cli_turns_an_unexpected_exception_into_one_line(monkeypatch, capsys):
    import splitup.cli.validate as validate_cli

    def boom(args):  # noqa: ANN001, ANN202
        raise KeyError("surprise")

    monkeypatch.setattr(validate_cli, "run", boom)
    monkeypatch.delenv("SPLITUP_DEBUG", raising=False)
    assert main(["validate", "whatever.onnx"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: internal error in splitup validate: KeyError") and "SPLITUP_DEBUG" in err
