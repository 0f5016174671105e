"""The memory-safety validator: every rejection has its class and names the node or tensor at fault."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from validator_fixtures import external, fin, mlp, model, tiny_decoder, weight

from splitup.graph.errors import (
    BadOpset,
    ControlFlowRejected,
    DisallowedDomain,
    DisallowedOp,
    ExternalDataEscape,
    GraphRejected,
    MalformedGraph,
    ProtoTooLarge,
    StringTensor,
    TaskTooLarge,
    TensorTooLarge,
    TooManyNodes,
    UnboundedDimension,
    UnreadableModel,
)
from splitup.graph.limits import KNOWN_OPSET, Limits, runtime_max_opset
from splitup.graph.validate import load_model, validate_model


def rejects(m: onnx.ModelProto, error: type[GraphRejected], *names: str, **kwargs: object) -> GraphRejected:
    with pytest.raises(error) as info:
        validate_model(m, **kwargs)  # type: ignore[arg-type]
    for name in names:
        assert name in str(info.value), f"{name!r} not named in: {info.value}"
    return info.value


# --- accepted graphs -------------------------------------------------------------------------------


def test_mlp_report_counts_params_bytes_and_peak() -> None:
    report = validate_model(mlp(hidden=8, batch=2))
    assert report.op_counts == {"MatMul": 2, "Add": 1, "Relu": 1}
    assert report.parameter_count == 4 * 8 + 8 + 8 * 3
    assert report.parameter_bytes == 4 * report.parameter_count
    # x (32 B) is freed after fc1, so the peak is h + hb (64 B each) while bias1 runs.
    assert report.peak_activation_bytes == 2 * (2 * 8 * 4)
    assert report.peak_node == "node bias1 (Add)"
    assert report.output_shapes == {"y": (2, 3)} and report.output_dtypes == {"y": "float"}
    assert report.largest_tensor_bytes == 4 * 8 * 4


def test_transformer_with_symbolic_seq_and_empty_past_kv_is_accepted_and_runs() -> None:
    m = tiny_decoder(seq_max=16, past=0)
    report = validate_model(m)
    assert report.input_shapes["input_ids"] == (1, 16)
    assert report.input_shapes["past_k"] == (1, 0, 8)
    assert report.output_shapes["present_k"] == (1, 16, 8)
    assert report.output_shapes["logits"] == (1, 16, 8)
    # The accepted graph is a real one: onnxruntime runs it with an empty cache and a shorter sequence.
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    empty = np.zeros((1, 0, 8), np.float32)
    logits, present_k, _ = sess.run(None, {"input_ids": np.array([[1, 2, 3]]), "past_k": empty, "past_v": empty})
    assert logits.shape == (1, 3, 8) and present_k.shape == (1, 3, 8)


def test_symbolic_past_is_sized_at_its_declared_maximum() -> None:
    report = validate_model(tiny_decoder(seq_max=16, past="past", past_max=48))
    assert report.output_shapes["present_v"] == (1, 64, 8)
    # The attention scores at the maxima (1 x 16 x 64 floats) bound the real ones.
    assert report.largest_tensor_bytes >= 16 * 64 * 4


def test_if_with_valid_branches_is_accepted() -> None:
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="then_relu")], "then", [], [fin("t", None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="else_neg")], "else", [], [fin("e", None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    m = model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)],
              [fin("x", [2, 3])], ["y"], [cond])
    report = validate_model(m)
    assert report.output_shapes == {"y": (2, 3)}
    assert report.op_counts == {"If": 1, "Neg": 1, "Relu": 1}


def test_external_data_inside_the_bundle_is_accepted_without_being_read(tmp_path: Path) -> None:
    m = mlp()
    m.graph.initializer[0].CopyFrom(external("w1", (4, 8), "weights/w1.bin"))
    # The file does not exist: sizes come from dims, so nothing is opened.
    report = validate_model(m, bundle_dir=tmp_path)
    assert report.parameter_bytes == (4 * 8 + 8 + 8 * 3) * 4


def test_value_info_lies_are_ignored() -> None:
    m = mlp(hidden=64, batch=2)
    m.graph.value_info.append(fin("h", [1, 1]))  # claims 4 bytes; really 2 x 64 floats
    rejects(m, TensorTooLarge, "h", limits=Limits(max_tensor_bytes=256))


# --- domains, ops, opsets --------------------------------------------------------------------------


def test_op_outside_the_allow_list() -> None:
    m = mlp()
    m.graph.node[2].op_type = "RandomNormalLike"
    err = rejects(m, DisallowedOp, "act", "RandomNormalLike")
    assert err.code == "disallowed_op" and "act" in err.where


@pytest.mark.parametrize("domain", ["com.microsoft", "ai.onnx.ml", "ai.onnx.training", "evil"])
def test_other_domains(domain: str) -> None:
    m = mlp()
    m.graph.node[2].domain = domain
    rejects(m, DisallowedDomain, "act", domain)


def test_unused_foreign_opset_import() -> None:
    m = mlp()
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    rejects(m, DisallowedDomain, "ai.onnx.ml")


def test_model_local_function() -> None:
    m = mlp()
    fn = helper.make_function("local", "MyRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    m.functions.append(fn)
    rejects(m, DisallowedDomain, "MyRelu")


@pytest.mark.parametrize("above", [False, True])
def test_opset_outside_the_pinned_range(above: bool) -> None:
    m = mlp()
    version = runtime_max_opset() + 1 if above else 12
    m.opset_import[0].version = version
    rejects(m, BadOpset, str(version))


def test_opset_window_follows_the_installed_runtime() -> None:
    """The newest opset accepted is one onnxruntime loads, never below the one the code was written for."""
    import onnxruntime as ort

    newest = runtime_max_opset()
    assert KNOWN_OPSET <= newest <= onnx.defs.onnx_opset_version()
    m = mlp()
    m.opset_import[0].version = newest
    m.ir_version = onnx.helper.find_min_ir_version_for(list(m.opset_import))
    validate_model(m)
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_missing_default_opset() -> None:
    m = mlp()
    del m.opset_import[:]
    rejects(m, BadOpset, "default domain")


def test_training_mode_dropout() -> None:
    m = mlp()
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "train"))
    m.graph.node[2].CopyFrom(helper.make_node("Dropout", ["hb", "", "train"], ["a"], name="drop"))
    rejects(m, DisallowedOp, "drop")


# --- external data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location", ["/etc/passwd", "../w.bin", "weights/../../w.bin", "..\\w.bin", "C:\\w.bin", "\\\\host\\share\\w", ""]
)
def test_external_data_locations_that_escape(location: str, tmp_path: Path) -> None:
    m = mlp()
    m.graph.initializer[0].CopyFrom(external("w1", (4, 8), location))
    rejects(m, ExternalDataEscape, "w1", bundle_dir=tmp_path)


def test_external_data_symlink_escape(tmp_path: Path) -> None:
    bundle, outside = tmp_path / "bundle", tmp_path / "outside"
    bundle.mkdir()
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"\0" * 128)
    os.symlink(outside, bundle / "weights")
    m = mlp()
    m.graph.initializer[0].CopyFrom(external("w1", (4, 8), "weights/secret.bin"))
    rejects(m, ExternalDataEscape, "w1", "outside the bundle", bundle_dir=bundle)


def test_external_data_length_must_match_the_shape(tmp_path: Path) -> None:
    m = mlp()
    t = external("w1", (4, 8), "w1.bin")
    entry = t.external_data.add()
    entry.key, entry.value = "length", "999999"
    m.graph.initializer[0].CopyFrom(t)
    rejects(m, MalformedGraph, "w1", "length", bundle_dir=tmp_path)


def test_external_data_in_an_attribute() -> None:
    m = mlp()
    const = helper.make_node("Constant", [], ["c"], name="const", value=external("v", (2,), "v.bin"))
    m.graph.node.insert(0, const)
    rejects(m, MalformedGraph, "const", "external")


# --- sizes -----------------------------------------------------------------------------------------


def test_huge_initializer_is_rejected_from_its_dims_alone(tmp_path: Path) -> None:
    m = mlp()
    m.graph.initializer[0].CopyFrom(external("w1", (4, 2**31 - 1), "w1.bin"))
    rejects(m, TensorTooLarge, "w1", bundle_dir=tmp_path)


def test_intermediate_tensor_over_the_cap() -> None:
    m = mlp(hidden=512, batch="batch", dim_max={"batch": 1024})
    err = rejects(m, TensorTooLarge, "tensor h", limits=Limits(max_tensor_bytes=2**20))
    assert err.where == "tensor h from node fc1 (MatMul)"


def test_whole_task_over_the_declared_limit() -> None:
    report = validate_model(mlp())
    limit = report.total_bytes - 1
    err = rejects(mlp(), TaskTooLarge, "bias1", limits=Limits(max_total_bytes=limit))
    assert isinstance(err, TensorTooLarge) and err.code == "task_too_large"
    assert validate_model(mlp(), limits=Limits(max_total_bytes=report.total_bytes)).total_bytes == report.total_bytes


def test_declared_maximum_over_max_dim() -> None:
    rejects(mlp(batch="batch", dim_max={"batch": 2**40}), TensorTooLarge, "batch")


def test_negative_dims() -> None:
    m = mlp()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -5
    rejects(m, MalformedGraph, "graph input x", "negative")
    m = mlp()
    bad = TensorProto(name="w1", data_type=TensorProto.FLOAT, dims=[4, -8])
    m.graph.initializer[0].CopyFrom(bad)
    rejects(m, MalformedGraph, "w1", "negative")


def test_zero_size_tensors_are_legal() -> None:
    report = validate_model(mlp(batch=0))
    assert report.output_shapes == {"y": (0, 3)} and report.peak_activation_bytes == 0


def test_raw_data_that_does_not_match_its_shape() -> None:
    m = mlp()
    m.graph.initializer[1].raw_data = b"\0" * 3
    rejects(m, MalformedGraph, "b1", "raw data")


def test_proto_over_the_size_limit() -> None:
    m = mlp()
    rejects(m, ProtoTooLarge, limits=Limits(max_proto_bytes=64))
    with pytest.raises(ProtoTooLarge):
        load_model(m.SerializeToString(), Limits(max_proto_bytes=64))


def test_too_many_nodes() -> None:
    rejects(mlp(), TooManyNodes, "fc2", limits=Limits(max_nodes=3))


# --- bounded shapes --------------------------------------------------------------------------------


def test_symbol_without_a_declared_maximum() -> None:
    rejects(mlp(batch="batch"), UnboundedDimension, "graph input x", "batch")
    rejects(mlp(batch="batch", dim_max={"other": 4}), UnboundedDimension, "batch")


def test_dim_with_neither_value_nor_symbol() -> None:
    m = mlp()
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    rejects(m, UnboundedDimension, "graph input x")
    m.graph.input[0].type.tensor_type.ClearField("shape")
    rejects(m, UnboundedDimension, "graph input x", "rank")


@pytest.mark.parametrize("meta", ["not json", "[1, 2]", '{"batch": "big"}', '{"batch": true}', '{"batch": -1}'])
def test_malformed_dim_max(meta: str) -> None:
    m = mlp(batch="batch")
    helper.set_model_props(m, {"splitup.dim_max": meta})
    with pytest.raises(GraphRejected) as info:
        validate_model(m)
    assert "splitup.dim_max" in str(info.value)


def test_intermediate_shape_that_depends_on_data() -> None:
    nodes = [helper.make_node("Expand", ["x", "target"], ["r"], name="data_expand"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    m = model(nodes, [fin("x", [1, 6]), fin("target", [2], TensorProto.INT64)], ["y"])
    err = rejects(m, UnboundedDimension, "tensor r", "data_expand")
    assert "follows the values of target" in str(err)


def i64(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, None)


def test_outputs_sized_by_data_are_bounded_by_their_input() -> None:
    """Reshape by data keeps its element count; NonZero/Unique/Compress/TopK never outgrow their input."""
    nodes = [helper.make_node("Reshape", ["x", "target"], ["r"], name="data_reshape"),
             helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
             helper.make_node("Unique", ["x"], ["u", "", "inverse", ""], name="unique"),
             helper.make_node("TopK", ["x", "k"], ["top", "top_i"], name="topk", axis=1)]
    m = model(nodes, [fin("x", [2, 6]), fin("target", [3], TensorProto.INT64), fin("k", [1], TensorProto.INT64)],
              ["r", i64("nz"), "u", i64("inverse"), "top", i64("top_i")])
    report = validate_model(m)
    assert report.output_shapes == {"r": (12, 12, 12), "nz": (2, 12), "u": (12,), "inverse": (12,),
                                    "top": (2, 6), "top_i": (2, 6)}
    assert report.output_dtypes["nz"] == report.output_dtypes["top_i"] == "int64"
    # the bound stays a size: a shape read of it would turn the bound into a value
    read = model([*nodes[:2], helper.make_node("Shape", ["nz"], ["s"], name="read")],
                 [fin("x", [2, 6]), fin("target", [3], TensorProto.INT64)], ["r", i64("s")])
    rejects(read, UnboundedDimension, "nonzero")


def test_attention_scores_count_against_the_peak() -> None:
    """The fused Attention op is run, and its hidden score matrix is part of the memory estimate."""
    q = [fin(n, [1, 4, 64, 8]) for n in ("q", "k", "v")]
    m = model([helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")], q, ["y"], opset=24)
    report = validate_model(m)
    scores = 1 * 4 * 64 * 64
    assert report.peak_activation_bytes >= 4 * (3 * scores + 3 * 1 * 4 * 64 * 8)


def test_shape_derived_from_symbolic_dims_is_bounded() -> None:
    # Shape -> Gather -> Range: data propagation turns the symbol's maximum into a concrete length.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "one"], ["n"], name="seq_len", axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["pos"], name="positions"),
    ]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array(0, np.int64), "zero")]
    m = model(nodes, [fin("x", [1, "seq"])], [fin("pos", None, TensorProto.INT64)], inits, dim_max={"seq": 100})
    assert validate_model(m).output_shapes == {"pos": (100,)}


# --- structure -------------------------------------------------------------------------------------


def test_cycle() -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second")]
    rejects(model(nodes, [fin("x", [2])], ["b"]), MalformedGraph, "cycle", "first", "second")


def test_self_loop() -> None:
    nodes = [helper.make_node("Add", ["x", "a"], ["a"], name="selfish")]
    rejects(model(nodes, [fin("x", [2])], ["a"]), MalformedGraph, "cycle", "selfish")


def test_nodes_out_of_topological_order() -> None:
    m = mlp()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend([nodes[1], nodes[0], nodes[2], nodes[3]])
    rejects(m, MalformedGraph, "bias1", "topologically")


def test_dangling_input() -> None:
    m = mlp()
    m.graph.node[3].input[1] = "ghost"
    rejects(m, MalformedGraph, "fc2", "ghost")


def test_output_defined_twice() -> None:
    m = mlp()
    m.graph.node[2].output[0] = "h"
    rejects(m, MalformedGraph, "'h'", "twice")


def test_duplicate_initializers() -> None:
    m = mlp()
    m.graph.initializer.append(weight("w1", (4, 8)))
    rejects(m, MalformedGraph, "w1", "twice")


def test_initializer_shadowing_an_input() -> None:
    m = mlp()
    m.graph.initializer.append(weight("x", (2, 4)))
    rejects(m, MalformedGraph, "'x'")


def test_empty_graph() -> None:
    rejects(model([], [fin("x", [2])], ["x"]), MalformedGraph, "no nodes")


def test_graph_output_never_produced() -> None:
    m = mlp()
    m.graph.output.append(fin("nowhere", [1]))
    rejects(m, MalformedGraph, "nowhere")


def test_sparse_initializer() -> None:
    m = mlp()
    values = numpy_helper.from_array(np.array([1.0], np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0], np.int64), "sp_idx")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    rejects(m, MalformedGraph, "sparse", "sp")


def test_non_tensor_input_type() -> None:
    m = mlp()
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))
    m.graph.input.append(helper.make_value_info("seq_in", seq_type))
    rejects(m, MalformedGraph, "seq_in", "dense tensor")


# --- strings ---------------------------------------------------------------------------------------


def test_string_input() -> None:
    m = mlp()
    m.graph.input.append(fin("text", [1], TensorProto.STRING))
    rejects(m, StringTensor, "text")


def test_cast_to_string() -> None:
    m = mlp()
    m.graph.node.append(helper.make_node("Cast", ["y"], ["ys"], to=TensorProto.STRING, name="to_text"))
    rejects(m, StringTensor, "ys", "to_text")


def test_string_constant_and_initializer() -> None:
    m = mlp()
    m.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value_string="hi", name="text_const"))
    rejects(m, StringTensor, "text_const")
    m = mlp()
    m.graph.initializer.append(helper.make_tensor("names", TensorProto.STRING, [1], [b"a"]))
    rejects(m, StringTensor, "names")


# --- control flow ----------------------------------------------------------------------------------


def _loop(trip_count: str, inits: list[onnx.TensorProto], inputs: list[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:  # type: ignore[assignment]
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"], name="keep_going"),
         helper.make_node("Add", ["s_in", "s_in"], ["s_out"], name="double")],
        "body",
        [fin("i", [], TensorProto.INT64), fin("c_in", [], TensorProto.BOOL), fin("s_in", [2])],
        [fin("c_out", [], TensorProto.BOOL), fin("s_out", [2])],
    )
    loop = helper.make_node("Loop", [trip_count, "cond", "x"], ["y"], body=body, name="loop")
    cond = numpy_helper.from_array(np.array(True), "cond")
    return model([loop], [fin("x", [2]), *inputs], ["y"], [cond, *inits])


def test_loop_with_static_bounded_trip_count() -> None:
    m = _loop("n", [numpy_helper.from_array(np.array(5, np.int64), "n")])
    report = validate_model(m)
    assert report.op_counts["Loop"] == 1 and report.output_shapes == {"y": (2,)}


def test_loop_without_trip_count() -> None:
    rejects(_loop("", []), ControlFlowRejected, "loop", "forever")


def test_loop_with_dynamic_trip_count() -> None:
    rejects(_loop("n", [], [fin("n", [], TensorProto.INT64)]), ControlFlowRejected, "loop", "static")


def test_loop_with_absurd_trip_count() -> None:
    m = _loop("n", [numpy_helper.from_array(np.array(10**12, np.int64), "n")])
    rejects(m, ControlFlowRejected, "loop", str(10**12))


def test_bad_op_inside_a_branch_is_named() -> None:
    then = helper.make_graph([helper.make_node("Multinomial", ["x"], ["t"], name="inner_random")], "then", [],
                             [fin("t", None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="else_neg")], "else", [], [fin("e", None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    m = model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)],
              [fin("x", [2, 3])], ["y"], [cond])
    rejects(m, DisallowedOp, "inner_random")


def test_graph_attribute_on_a_plain_op() -> None:
    m = mlp()
    hidden = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "payload", [], [fin("t", None)])
    m.graph.node[2].attribute.append(helper.make_attribute("payload", hidden))
    rejects(m, ControlFlowRejected, "act", "payload")


# --- loading ---------------------------------------------------------------------------------------


def test_load_from_path_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(mlp(), path)
    assert validate_model(load_model(path)).op_counts["MatMul"] == 2
    assert validate_model(load_model(path.read_bytes())).op_counts["MatMul"] == 2


def test_load_rejects_bad_sources(tmp_path: Path) -> None:
    data = mlp().SerializeToString()
    with pytest.raises(MalformedGraph):
        load_model(data[: len(data) // 2])
    with pytest.raises(UnreadableModel, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(UnreadableModel, match="directory"):
        load_model(tmp_path)
    big = tmp_path / "big.onnx"
    big.write_bytes(data)
    with pytest.raises(ProtoTooLarge, match="big.onnx"):
        load_model(big, Limits(max_proto_bytes=10))


def test_text_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text(json.dumps({"hello": "world"}) * 10)
    with pytest.raises(GraphRejected):
        validate_model(load_model(path))


def test_loop_scan_output_is_stacked_over_the_trip_count() -> None:
    m = _loop("n", [numpy_helper.from_array(np.array(7, np.int64), "n")])
    body = m.graph.node[0].attribute[0].g
    body.node.append(helper.make_node("Identity", ["s_in"], ["step"], name="record"))
    body.output.append(fin("step", [2]))
    m.graph.node[0].output.append("stacked")
    m.graph.output.append(fin("stacked", None))
    assert validate_model(m).output_shapes == {"y": (2,), "stacked": (7, 2)}


def test_loop_state_that_changes_shape_is_unbounded() -> None:
    m = _loop("n", [numpy_helper.from_array(np.array(3, np.int64), "n")])
    body = m.graph.node[0].attribute[0].g
    body.node[1].CopyFrom(helper.make_node("Concat", ["s_in", "s_in"], ["s_out"], axis=0, name="grow"))
    rejects(m, GraphRejected, "y")


def test_huge_shapes_from_shape_arithmetic() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Mul", ["s", "big"], ["target"], name="inflate"),
        helper.make_node("ConstantOfShape", ["target"], ["y"], name="alloc"),
    ]
    big = numpy_helper.from_array(np.array([10**9], np.int64), "big")
    rejects(model(nodes, [fin("x", ["seq"])], ["y"], [big], dim_max={"seq": 64}), TensorTooLarge, "y")


def test_range_with_absurd_constant_length() -> None:
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("a", 0), ("b", 10**15), ("d", 1))]
    nodes = [helper.make_node("Range", ["a", "b", "d"], ["r"], name="huge_range"),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT, name="cast")]
    rejects(model(nodes, [fin("x", [1])], ["y"], consts), TensorTooLarge, "r")


def test_tensor_that_shrinks_as_inputs_grow() -> None:
    # max_seq - seq: empty at the declared maximum, 63 MB-scale at seq = 1; sizing at the max would lie.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Sub", ["cap", "s"], ["room"], name="room"),
        helper.make_node("Mul", ["room", "scale"], ["target"], name="scale"),
        helper.make_node("ConstantOfShape", ["target"], ["y"], name="sneaky_alloc"),
    ]
    inits = [numpy_helper.from_array(np.array([64], np.int64), "cap"),
             numpy_helper.from_array(np.array([10**6], np.int64), "scale")]
    m = model(nodes, [fin("x", ["seq"])], ["y"], inits, dim_max={"seq": 64})
    rejects(m, UnboundedDimension, "tensor y", "sneaky_alloc", "shrink")


def test_scan_over_a_sequence_axis() -> None:
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"], name="accumulate"),
         helper.make_node("Identity", ["acc_out"], ["partial"], name="emit")],
        "body", [fin("acc_in", [4]), fin("row", [4])], [fin("acc_out", [4]), fin("partial", [4])],
    )
    scan = helper.make_node("Scan", ["init", "xs"], ["total", "partials"], body=body, num_scan_inputs=1, name="scan")
    m = model([scan], [fin("init", [4]), fin("xs", ["seq", 4])], ["total", "partials"], dim_max={"seq": 10})
    report = validate_model(m)
    assert report.output_shapes == {"total": (4,), "partials": (10, 4)}


def test_without_a_bundle_only_lexical_escapes_are_caught() -> None:
    m = mlp()
    m.graph.initializer[0].CopyFrom(external("w1", (4, 8), "weights/w1.bin"))
    assert validate_model(m).parameter_count == 4 * 8 + 8 + 8 * 3
    m.graph.initializer[0].CopyFrom(external("w1", (4, 8), "../w1.bin"))
    rejects(m, ExternalDataEscape, "w1")
