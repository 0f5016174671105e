"""Write the hostile-model corpus: ``python tests/data/make_hostile.py [OUT_DIR]``.

Every file is a model a stranger could send a node, and every one must be refused by
``splitup.graph.validate.validate_file`` (and ``splitup validate FILE``) with the error class the
manifest names. The output is deterministic: ``tests/graph/test_hostile_corpus.py`` regenerates it
and compares it byte for byte with the committed ``tests/data/hostile/``.

``manifest.json`` maps each model path (relative to the corpus directory) to
``{"error": class name, "covers": what it attacks, "names": [strings the message must contain],
"limits": {Limits field: value}, "cli_args": [...]}``; ``limits`` is present only where the rejection
needs a tighter limit than the defaults, and ``cli_args`` where ``splitup validate`` can express it
(``max_total_bytes`` is ``--max-bytes``; the proto-size case needs ``Limits(max_proto_bytes=...)``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "graph"))

from validator_fixtures import external, fin, mlp, model  # noqa: E402

CORPUS = HERE / "hostile"
# Limits fields that `splitup validate` takes as options (others, such as the proto size, it does not).
CLI_OPTIONS = {"max_total_bytes": "--max-bytes", "max_tensor_bytes": "--max-tensor-bytes"}


@dataclass
class Case:
    path: str
    error: str
    covers: str
    build: Callable[[], onnx.ModelProto | bytes]
    names: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)
    # Extra files next to the model: relative path -> bytes, or ("symlink", target).
    extras: dict[str, bytes | tuple[str, str]] = field(default_factory=dict)


def _int64(name: str, value: int | list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(value, np.int64), name)


# --- ops and domains -------------------------------------------------------------------------------


def _with_op(op_type: str, domain: str = "") -> onnx.ModelProto:
    m = mlp()
    m.graph.node[2].op_type = op_type
    m.graph.node[2].domain = domain
    return m


def op_not_allowed() -> onnx.ModelProto:
    return _with_op("RandomNormalLike")


def domain_custom() -> onnx.ModelProto:
    return _with_op("FastGelu", "com.microsoft")


def domain_ml() -> onnx.ModelProto:
    return _with_op("Normalizer", "ai.onnx.ml")


def domain_training() -> onnx.ModelProto:
    return _with_op("Gradient", "ai.onnx.preview.training")


def opset_import_foreign() -> onnx.ModelProto:
    m = mlp()
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    return m


def function_local() -> onnx.ModelProto:
    m = _with_op("MyRelu", "local")
    fn = helper.make_function("local", "MyRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    m.functions.append(fn)
    return m


def dropout_training_mode() -> onnx.ModelProto:
    m = mlp()
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "train"))
    m.graph.node[2].CopyFrom(helper.make_node("Dropout", ["hb", "", "train"], ["a"], name="drop"))
    return m


def _opset(version: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        m = mlp()
        m.opset_import[0].version = version
        return m

    return build


# --- external data ---------------------------------------------------------------------------------


def _external_w1(location: str) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        m = mlp()
        m.graph.initializer[0].CopyFrom(external("w1", (4, 8), location))
        return m

    return build


# --- sizes -----------------------------------------------------------------------------------------


def tensor_over_cap() -> onnx.ModelProto:
    """An outer product of two small inputs: 65536 x 32768 floats (8 GiB) after shape inference."""
    nodes = [helper.make_node("MatMul", ["col", "row"], ["outer"], name="outer_product"),
             helper.make_node("ReduceSum", ["outer"], ["y"], name="total", keepdims=0)]
    inputs = [fin("col", ["n", 1]), fin("row", [1, "m"])]
    return model(nodes, inputs, ["y"], dim_max={"n": 65536, "m": 32768})


def alloc_over_cap() -> onnx.ModelProto:
    """ConstantOfShape of a shape computed from the input's shape: seq * 10^9 floats."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Mul", ["s", "big"], ["target"], name="inflate"),
             helper.make_node("ConstantOfShape", ["target"], ["y"], name="alloc")]
    return model(nodes, [fin("x", ["seq"])], ["y"], [_int64("big", [10**9])], dim_max={"seq": 64})


def initializer_over_cap() -> onnx.ModelProto:
    """An external weight inside the bundle whose dims alone (4 x 2^31-1 floats) exceed the cap."""
    m = mlp()
    m.graph.initializer[0].CopyFrom(external("w1", (4, 2**31 - 1), "w1.bin"))
    return m


def range_over_cap() -> onnx.ModelProto:
    nodes = [helper.make_node("Range", ["a", "b", "d"], ["r"], name="huge_range"),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT, name="cast")]
    return model(nodes, [fin("x", [1])], ["y"], [_int64("a", 0), _int64("b", 10**15), _int64("d", 1)])


def task_over_limit() -> onnx.ModelProto:
    return mlp(hidden=64, batch="batch", dim_max={"batch": 256})


def dim_max_over_max_dim() -> onnx.ModelProto:
    return mlp(batch="batch", dim_max={"batch": 2**40})


# --- bounded shapes --------------------------------------------------------------------------------


def dim_no_declared_max() -> onnx.ModelProto:
    return mlp(batch="batch")


def dim_unknown() -> onnx.ModelProto:
    m = mlp()
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    return m


def rank_unknown() -> onnx.ModelProto:
    m = mlp()
    m.graph.input[0].type.tensor_type.ClearField("shape")
    return m


def dim_data_dependent() -> onnx.ModelProto:
    # (a Reshape by data is bounded: never more elements than its input; an Expand has no such bound)
    nodes = [helper.make_node("Expand", ["x", "target"], ["r"], name="data_expand"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    return model(nodes, [fin("x", [1, 6]), fin("target", [2], TensorProto.INT64)], ["y"])


def dim_shrinks() -> onnx.ModelProto:
    """``max_seq - seq`` sizes an allocation: empty at the declared maximum, huge at seq = 1."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Sub", ["cap", "s"], ["room"], name="room"),
             helper.make_node("Mul", ["room", "scale"], ["target"], name="scale"),
             helper.make_node("ConstantOfShape", ["target"], ["y"], name="sneaky_alloc")]
    return model(nodes, [fin("x", ["seq"])], ["y"], [_int64("cap", [64]), _int64("scale", [10**6])],
                 dim_max={"seq": 64})


def _declared(m: onnx.ModelProto, value_max: dict) -> onnx.ModelProto:
    helper.set_model_props(m, {"splitup.value_max": json.dumps(value_max)})
    return m


def value_max_over_cap() -> onnx.ModelProto:
    """An Expand of a single float to a target declared up to 2^20 per axis: 2^60 floats at the bound."""
    nodes = [helper.make_node("Expand", ["x", "target"], ["r"], name="data_expand"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    m = model(nodes, [fin("x", [1, 1, 1]), fin("target", [3], TensorProto.INT64)], ["y"])
    return _declared(m, {"target": 2**20})


def value_max_malformed() -> onnx.ModelProto:
    return _declared(dim_data_dependent(), {"target": [5, -5]})


def value_shrinks() -> onnx.ModelProto:
    """``cap - v`` sizes an allocation: empty at v's declared maximum, 10^12 floats at v = 0."""
    nodes = [helper.make_node("Sub", ["cap", "v"], ["room"], name="room"),
             helper.make_node("ConstantOfShape", ["room"], ["y"], name="sneaky_alloc")]
    return _declared(model(nodes, [fin("v", [1], TensorProto.INT64)], ["y"], [_int64("cap", [10**12])]),
                     {"v": 10**9})


def dim_max_malformed() -> onnx.ModelProto:
    m = mlp(batch="batch")
    helper.set_model_props(m, {"splitup.dim_max": '{"batch": -1}'})
    return m


# --- structure -------------------------------------------------------------------------------------


def cycle() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second")]
    return model(nodes, [fin("x", [2])], ["b"])


def self_loop() -> onnx.ModelProto:
    return model([helper.make_node("Add", ["x", "a"], ["a"], name="selfish")], [fin("x", [2])], ["a"])


def dangling_input() -> onnx.ModelProto:
    m = mlp()
    m.graph.node[3].input[1] = "ghost"
    return m


def dangling_output() -> onnx.ModelProto:
    m = mlp()
    m.graph.output.append(fin("nowhere", [1]))
    return m


def duplicate_output() -> onnx.ModelProto:
    m = mlp()
    m.graph.node[2].output[0] = "h"
    return m


def duplicate_initializer() -> onnx.ModelProto:
    m = mlp()
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((4, 8), np.float32), "w1"))
    return m


def initializer_shadows_input() -> onnx.ModelProto:
    m = mlp()
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((2, 4), np.float32), "x"))
    return m


def unsorted() -> onnx.ModelProto:
    m = mlp()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend([nodes[1], nodes[0], nodes[2], nodes[3]])
    return m


def empty_graph() -> onnx.ModelProto:
    return model([], [fin("x", [2])], ["x"])


def no_graph() -> bytes:
    return onnx.ModelProto(ir_version=8).SerializeToString()


def not_protobuf() -> bytes:
    return b"\xff\xfe this is not an ONNX model \x00\x01"


def truncated() -> bytes:
    data = mlp().SerializeToString()
    return data[: len(data) - 7]


def sparse_initializer() -> onnx.ModelProto:
    m = mlp()
    values = numpy_helper.from_array(np.array([1.0], np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0], np.int64), "sp_idx")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    return m


def proto_too_large() -> onnx.ModelProto:
    return mlp(hidden=64)


# --- strings ---------------------------------------------------------------------------------------


def string_input() -> onnx.ModelProto:
    m = mlp()
    m.graph.input.append(fin("text", [1], TensorProto.STRING))
    return m


def string_cast() -> onnx.ModelProto:
    m = mlp()
    m.graph.node.append(helper.make_node("Cast", ["y"], ["ys"], to=TensorProto.STRING, name="to_text"))
    m.graph.output[0].CopyFrom(fin("ys", None, TensorProto.STRING))
    return m


def string_initializer() -> onnx.ModelProto:
    m = mlp()
    m.graph.initializer.append(helper.make_tensor("names", TensorProto.STRING, [1], [b"a"]))
    return m


def string_constant() -> onnx.ModelProto:
    m = mlp()
    m.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value_string="hi", name="text_const"))
    return m


# --- control flow ----------------------------------------------------------------------------------


def _loop(trip_count: str, inits: list[TensorProto], inputs: list[onnx.ValueInfoProto] | None = None,
          body_op: str = "Add", state_grows: bool = False) -> onnx.ModelProto:
    step = (helper.make_node("Concat", ["s_in", "s_in"], ["s_out"], axis=0, name="grow") if state_grows
            else helper.make_node(body_op, ["s_in", "s_in"], ["s_out"], name="step"))
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"], name="keep_going"), step],
        "body",
        [fin("i", [], TensorProto.INT64), fin("c_in", [], TensorProto.BOOL), fin("s_in", [2])],
        [fin("c_out", [], TensorProto.BOOL), fin("s_out", [2])],
    )
    loop = helper.make_node("Loop", [trip_count, "cond", "x"], ["y"], body=body, name="loop")
    cond = numpy_helper.from_array(np.array(True), "cond")
    return model([loop], [fin("x", [2]), *(inputs or [])], ["y"], [cond, *inits])


def loop_no_trip_count() -> onnx.ModelProto:
    return _loop("", [])


def loop_dynamic_trip_count() -> onnx.ModelProto:
    return _loop("n", [], [fin("n", [], TensorProto.INT64)])


def loop_huge_trip_count() -> onnx.ModelProto:
    return _loop("n", [_int64("n", 10**12)])


def loop_bad_body() -> onnx.ModelProto:
    m = _loop("n", [_int64("n", 4)])
    m.graph.node[0].attribute[0].g.node[1].op_type = "Multinomial"
    return m


def loop_state_grows() -> onnx.ModelProto:
    return _loop("n", [_int64("n", 40)], state_grows=True)


def _if(then_op: str, then_domain: str = "") -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node(then_op, ["x"], ["t"], name="inner", domain=then_domain)],
                             "then", [], [fin("t", None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="else_neg")], "else", [], [fin("e", None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)],
                 [fin("x", [2, 3])], ["y"], [cond])


def if_bad_branch() -> onnx.ModelProto:
    return _if("RandomUniformLike")


def if_custom_domain_branch() -> onnx.ModelProto:
    return _if("Gelu", "com.microsoft")


def scan_bad_body() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"], name="accumulate"),
         helper.make_node("Bernoulli", ["acc_out"], ["partial"], name="random")],
        "body", [fin("acc_in", [4]), fin("row", [4])], [fin("acc_out", [4]), fin("partial", None, TensorProto.INT64)],
    )
    scan = helper.make_node("Scan", ["init", "xs"], ["total", "partials"], body=body, num_scan_inputs=1, name="scan")
    return model([scan], [fin("init", [4]), fin("xs", ["seq", 4])], ["total", "partials"], dim_max={"seq": 10})


def graph_attribute_on_plain_op() -> onnx.ModelProto:
    m = mlp()
    hidden = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "payload", [], [fin("t", None)])
    m.graph.node[2].attribute.append(helper.make_attribute("payload", hidden))
    return m


def nested_too_deep() -> onnx.ModelProto:
    """If inside If inside If ... nine levels deep: recursion must stay bounded."""
    inner = helper.make_graph([helper.make_node("Relu", ["x"], ["t0"], name="leaf")], "b0", [], [fin("t0", None)])
    for depth in range(1, 10):
        other = helper.make_graph([helper.make_node("Neg", ["x"], [f"e{depth}"], name=f"neg{depth}")],
                                  f"e{depth}", [], [fin(f"e{depth}", None)])
        node = helper.make_node("If", ["cond"], [f"t{depth}"], name=f"if{depth}", then_branch=inner,
                                else_branch=other)
        inner = helper.make_graph([node], f"b{depth}", [], [fin(f"t{depth}", None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return model(list(inner.node), [fin("x", [2])], ["t9"], [cond])


CASES: list[Case] = [
    # ops, domains, opsets, functions
    Case("op_not_allowed.onnx", "DisallowedOp", "op outside the allow-list", op_not_allowed, ["act", "RandomNormalLike"]),
    Case("dropout_training_mode.onnx", "DisallowedOp", "Dropout in training mode (random)", dropout_training_mode,
         ["drop"]),
    Case("domain_custom.onnx", "DisallowedDomain", "custom domain (com.microsoft)", domain_custom,
         ["act", "com.microsoft"]),
    Case("domain_ml.onnx", "DisallowedDomain", "ai.onnx.ml op", domain_ml, ["act", "ai.onnx.ml"]),
    Case("domain_training.onnx", "DisallowedDomain", "training op (ai.onnx.preview.training)", domain_training,
         ["act", "ai.onnx.preview.training"]),
    Case("opset_import_foreign.onnx", "DisallowedDomain", "unused ai.onnx.ml opset import", opset_import_foreign,
         ["ai.onnx.ml"]),
    Case("function_local.onnx", "DisallowedDomain", "model-local function", function_local, ["MyRelu"]),
    Case("opset_too_old.onnx", "BadOpset", "default opset 12 < 13", _opset(12), ["12"]),
    Case("opset_too_new.onnx", "BadOpset", "default opset 99, beyond any onnxruntime", _opset(99), ["99"]),
    # external data
    Case("external_absolute.onnx", "ExternalDataEscape", "absolute external-data path", _external_w1("/etc/passwd"),
         ["w1", "absolute"]),
    Case("external_dotdot.onnx", "ExternalDataEscape", "external-data path with '..'",
         _external_w1("weights/../../w1.bin"), ["w1", ".."]),
    Case("external_windows.onnx", "ExternalDataEscape", "Windows drive path", _external_w1("C:\\w1.bin"), ["w1"]),
    Case("external_symlink/model.onnx", "ExternalDataEscape", "external data escaping through a symlink",
         _external_w1("weights.bin"), ["w1", "outside the bundle"],
         extras={"weights.bin": ("symlink", "../outside.bin")}),
    # sizes
    Case("tensor_over_cap.onnx", "TensorTooLarge", "8 GiB intermediate after shape inference (cap 4 GiB)",
         tensor_over_cap, ["outer"]),
    Case("alloc_over_cap.onnx", "TensorTooLarge", "ConstantOfShape sized by shape arithmetic", alloc_over_cap, ["y"]),
    Case("range_over_cap.onnx", "TensorTooLarge", "Range of 10^15 elements", range_over_cap, ["r"]),
    Case("initializer_over_cap.onnx", "TensorTooLarge", "initializer dims over the cap", initializer_over_cap, ["w1"]),
    Case("dim_max_over_max_dim.onnx", "TensorTooLarge", "declared maximum over 2^31-1", dim_max_over_max_dim,
         ["batch"]),
    Case("task_over_limit.onnx", "TaskTooLarge", "initializers + peak activations over --max-bytes",
         task_over_limit, ["task needs"], limits={"max_total_bytes": 65536}),
    Case("proto_too_large.onnx", "ProtoTooLarge", "proto over the size limit", proto_too_large, ["limit"],
         limits={"max_proto_bytes": 1024}),
    # bounded shapes
    Case("dim_no_declared_max.onnx", "UnboundedDimension", "symbolic dim without a declared maximum",
         dim_no_declared_max, ["graph input x", "batch"]),
    Case("dim_unknown.onnx", "UnboundedDimension", "dim with neither value nor name", dim_unknown, ["graph input x"]),
    Case("rank_unknown.onnx", "UnboundedDimension", "input without a shape", rank_unknown, ["graph input x"]),
    Case("dim_data_dependent.onnx", "UnboundedDimension", "Expand to a shape read from data", dim_data_dependent,
         ["r", "data_expand"]),
    Case("dim_shrinks.onnx", "UnboundedDimension", "tensor that grows as the input shrinks", dim_shrinks,
         ["y", "sneaky_alloc"]),
    Case("dim_max_malformed.onnx", "MalformedGraph", "negative declared maximum", dim_max_malformed,
         ["splitup.dim_max"]),
    Case("value_max_over_cap.onnx", "TensorTooLarge", "declared value range whose bound is over the tensor cap",
         value_max_over_cap, ["r", "data_expand"]),
    Case("value_max_malformed.onnx", "MalformedGraph", "empty declared value range", value_max_malformed,
         ["splitup.value_max", "target"]),
    Case("value_shrinks.onnx", "TensorTooLarge", "tensor that grows as a declared value shrinks", value_shrinks,
         ["y", "sneaky_alloc"]),
    # structure
    Case("cycle.onnx", "MalformedGraph", "cycle of two nodes", cycle, ["cycle", "first", "second"]),
    Case("self_loop.onnx", "MalformedGraph", "node consuming its own output", self_loop, ["cycle", "selfish"]),
    Case("dangling_input.onnx", "MalformedGraph", "node input nothing defines", dangling_input, ["fc2", "ghost"]),
    Case("dangling_output.onnx", "MalformedGraph", "graph output nothing produces", dangling_output, ["nowhere"]),
    Case("duplicate_output.onnx", "MalformedGraph", "tensor name produced twice", duplicate_output, ["'h'", "twice"]),
    Case("duplicate_initializer.onnx", "MalformedGraph", "initializer defined twice", duplicate_initializer,
         ["w1", "twice"]),
    Case("initializer_shadows_input.onnx", "MalformedGraph", "initializer with a graph input's name",
         initializer_shadows_input, ["'x'"]),
    Case("unsorted.onnx", "MalformedGraph", "nodes out of topological order", unsorted, ["topologically"]),
    Case("empty_graph.onnx", "MalformedGraph", "graph without nodes", empty_graph, ["no nodes"]),
    Case("no_graph.onnx", "MalformedGraph", "model without a graph", no_graph, ["no graph"]),
    Case("not_protobuf.onnx", "MalformedGraph", "random bytes", not_protobuf, ["not a parsable ONNX model"]),
    Case("truncated.onnx", "MalformedGraph", "truncated protobuf", truncated, ["not a parsable ONNX model"]),
    Case("sparse_initializer.onnx", "MalformedGraph", "sparse initializer", sparse_initializer, ["sparse"]),
    # strings
    Case("string_input.onnx", "StringTensor", "string graph input", string_input, ["text"]),
    Case("string_cast.onnx", "StringTensor", "Cast to string", string_cast, ["ys", "to_text"]),
    Case("string_initializer.onnx", "StringTensor", "string initializer", string_initializer, ["names"]),
    Case("string_constant.onnx", "StringTensor", "string Constant", string_constant, ["text_const"]),
    # control flow
    Case("loop_no_trip_count.onnx", "ControlFlowRejected", "Loop without a trip count", loop_no_trip_count,
         ["loop", "forever"]),
    Case("loop_dynamic_trip_count.onnx", "ControlFlowRejected", "Loop trip count from a graph input",
         loop_dynamic_trip_count, ["loop", "static"]),
    Case("loop_huge_trip_count.onnx", "ControlFlowRejected", "Loop trip count 10^12", loop_huge_trip_count,
         ["loop", str(10**12)]),
    Case("loop_bad_body.onnx", "DisallowedOp", "random op inside a Loop body", loop_bad_body, ["step", "Multinomial"]),
    Case("loop_state_grows.onnx", "UnboundedDimension", "Loop state that changes shape every trip",
         loop_state_grows, ["y"]),
    Case("if_bad_branch.onnx", "DisallowedOp", "random op in an If branch", if_bad_branch,
         ["inner", "RandomUniformLike"]),
    Case("if_custom_domain_branch.onnx", "DisallowedDomain", "custom-domain op in an If branch",
         if_custom_domain_branch, ["inner", "com.microsoft"]),
    Case("scan_bad_body.onnx", "DisallowedOp", "random op in a Scan body", scan_bad_body, ["random", "Bernoulli"]),
    Case("graph_attribute_on_plain_op.onnx", "ControlFlowRejected", "subgraph smuggled into a plain op",
         graph_attribute_on_plain_op, ["act", "payload"]),
    Case("nested_too_deep.onnx", "ControlFlowRejected", "If nested nine levels deep", nested_too_deep, ["deeper"]),
]

# Files that are not models: targets of the symlink case (the secret a link would leak).
SUPPORT: dict[str, bytes] = {"outside.bin": b"\x00" * 128}


def generate(out: Path) -> dict[str, dict[str, object]]:
    """Write the corpus into ``out`` (emptied first) and return the manifest."""
    if out.exists():
        if any(out.iterdir()) and not (out / "manifest.json").exists():
            raise SystemExit(f"{out} is not empty and holds no corpus; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest: dict[str, dict[str, object]] = {}
    for case in CASES:
        target = out / case.path
        target.parent.mkdir(parents=True, exist_ok=True)
        built = case.build()
        target.write_bytes(built if isinstance(built, bytes) else built.SerializeToString())
        for rel, content in case.extras.items():
            extra = target.parent / rel
            if isinstance(content, tuple):
                os.symlink(content[1], extra)
            else:
                extra.write_bytes(content)
        entry: dict[str, object] = {"error": case.error, "covers": case.covers, "names": case.names}
        if case.limits:
            entry["limits"] = case.limits
            cli = [arg for key, value in case.limits.items() if key in CLI_OPTIONS
                   for arg in (CLI_OPTIONS[key], str(value))]
            if cli:
                entry["cli_args"] = cli
        manifest[case.path] = entry
    for rel, data in SUPPORT.items():
        (out / rel).write_bytes(data)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else CORPUS
    manifest = generate(out)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"wrote {len(manifest)} hostile models to {out} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
