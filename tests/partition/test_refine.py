"""Operator splits: plans within one task of the lower bound, and split plans that reproduce the model."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitup.graph import zoo
from splitup.partition import PartitionError, analyze, partition, plan_partition
from splitup.partition.local import LocalPipeline
from splitup.partition.plan import make_plan
from splitup.partition.refine import find_sites

from .conftest import random_feeds, reference, whole_vram

GiB = 2**30

# The README plan table and the two 405B rows of issue 19 (fp16, context 4096, 128-token chunks).
NAMED = [(name, b) for name in ("llama-7b", "llama-13b", "llama-70b") for b in (8, 12, 16, 24)] + [
    ("llama-405b", 24), ("llama-405b", 80)]


@pytest.fixture(scope="module")
def shape_only():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = analyze(zoo.build(name, dtype="float16", validate=False), trusted=True)
        return cache[name]

    return get


@pytest.mark.parametrize(("name", "gib"), NAMED)
def test_named_configs_plan_within_one_task_of_the_lower_bound(shape_only, name, gib):
    # Planning time is measured in bench/plan_table.py, not asserted here.
    a = shape_only(name)
    refined, part = plan_partition(a, gib * GiB)
    assert len(part.segments) <= part.lower_bound + 1, (name, gib, len(part.segments), part.lower_bound)
    assert all(s.vram_bytes <= gib * GiB for s in part.segments)
    assert part.segments[0].start == 0 and part.segments[-1].stop == len(refined.nodes)
    # Never worse than cutting only between (and inside) blocks.
    coarse = partition(a, gib * GiB)
    assert len(part.segments) <= len(coarse.segments)


def test_405b_at_24gib_needs_the_split_and_it_saves_tasks(shape_only):
    a = shape_only("llama-405b")
    coarse = partition(a, 24 * GiB)
    refined, part = plan_partition(a, 24 * GiB)
    assert len(part.segments) < len(coarse.segments)
    split = [n for n in refined.nodes if "#" in n.name]
    assert split and {n.op_type for n in split} >= {"MatMul", "Add"}
    # Only the sites a cut goes through are rewritten: far fewer nodes than splitting every MLP.
    assert len(refined.nodes) - len(a.nodes) < 0.05 * len(a.nodes)


def test_no_split_where_it_does_not_pay():
    model = zoo.build("tiny-llama", seed=0)
    a = analyze(model)
    refined, part = plan_partition(a, 2**40, workspace_bytes=0)
    assert refined is a and len(part.segments) == 1


def _split_ops(result) -> set[str]:
    return {n.op_type for n in result.analysis.nodes if "#" in n.name}


def _assert_same(model, out, feeds, atol=1e-5):
    ref = reference(model, feeds)
    got = LocalPipeline(out).run(feeds)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, atol=atol, rtol=0, err_msg=k)


@pytest.mark.parametrize(("name", "overrides", "fraction", "kinds"), [
    # Full vocabularies: the embedding by vocabulary ranges and the lm_head by columns.
    ("tiny-gpt2", {"vocab_size": 50257}, 0.15, {"Where", "Concat"}),
    ("tiny-llama", {"vocab_size": 32000}, 0.15, {"Where", "Concat"}),
    # An MLP larger than the budget: up/gate by columns, down by rows with partial sums added.
    ("tiny-llama", {"intermediate": 4096}, 0.12, {"MatMul", "Add", "Sigmoid"}),
])
def test_split_plans_reproduce_the_model(tmp_path, name, overrides, fraction, kinds):
    model = zoo.build(name, seed=0, max_seq=8, kv_cache=False, **overrides)
    budget = int(whole_vram(model) * fraction)
    try:
        coarse = len(partition(analyze(model), budget, workspace_bytes=0).segments)
    except PartitionError as exc:
        assert "alone needs" in str(exc)  # no plan at all without splitting an operator
        coarse = None
    result = make_plan(model, name, budget, workspace_bytes=0, out_dir=tmp_path)
    assert coarse is None or len(result.plan.tasks) < coarse
    assert len(result.plan.tasks) >= 3
    assert kinds <= _split_ops(result)
    assert len(result.plan.tasks) <= result.plan.lower_bound + 2
    _assert_same(model, tmp_path, random_feeds(model, seq=8))
    _assert_same(model, tmp_path, random_feeds(model, seq=3, seed=1))


@pytest.mark.parametrize(("name", "overrides", "fraction", "crossing"), [
    # A cut inside a split MLP: a running partial sum of the down projection crosses it.
    ("tiny-llama", {"intermediate": 2048}, 0.2, "mlp"),
    # GPT-2 reads the cache's length for its positions before the embedding: the vocabulary ranges
    # are placed before that read, so they still spread over tasks.
    ("tiny-gpt2", {"vocab_size": 50257}, 0.3, "gather"),
    # Attention by groups of KV heads (GQA, 8 query heads over 4 KV heads): each part holds its slice of
    # the cache as its own state and a partial sum of the output projection crosses the cut.
    ("tiny-llama", {"hidden": 128, "heads": 8, "kv_heads": 4, "intermediate": 96}, 0.25, "attn"),
])
def test_kv_cache_generation_with_split_cuts(tmp_path, name, overrides, fraction, crossing):
    model = zoo.build(name, seed=0, max_seq=8, **overrides)
    plan = make_plan(model, name, int(whole_vram(model) * fraction), workspace_bytes=0, out_dir=tmp_path).plan
    assert len(plan.tasks) >= 3
    assert any(crossing in o.name and "#" in o.name for t in plan.tasks[:-1] for o in t.outputs)
    if crossing == "attn":  # one layer's cache, by KV heads, on two tasks
        held = [{k.split("#")[0] for k in t.state if "key#" in k} for t in plan.tasks]
        assert any(held[i] & held[j] for i in range(len(held)) for j in range(i + 1, len(held)))
    ids = np.random.default_rng(3).integers(0, 500, (1, 8))
    empty = {k: np.zeros((1, v.shape[1], 8, v.shape[3]), np.float32) if v.ndim == 4 else np.zeros(1, np.int64)
             for k, v in random_feeds(model).items() if k.startswith("past")}  # capacity 8, length 0
    full = reference(model, {"input_ids": ids, **empty})["logits"]
    pipe = LocalPipeline(tmp_path)
    steps = [pipe.run({"input_ids": ids[:, :5]})["logits"]]
    for t in range(5, 8):
        steps.append(pipe.run({"input_ids": ids[:, t : t + 1]})["logits"])
    got = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
    assert (got.argmax(-1) == full.argmax(-1)).all()


def test_heterogeneous_nodes_use_the_same_split_units(tmp_path):
    model = zoo.build("tiny-llama", seed=0, intermediate=4096, max_seq=8, kv_cache=False)
    whole = whole_vram(model)
    sizes = [int(whole * 0.12), int(whole * 0.2), int(whole * 0.3), int(whole * 0.12), int(whole * 0.5)]
    result = make_plan(model, "tiny-llama", sizes, workspace_bytes=0, out_dir=tmp_path)
    assert _split_ops(result)
    remaining = list(sizes)
    for t in result.plan.tasks:
        assert t.vram_bytes <= t.budget_bytes
        remaining.remove(t.budget_bytes)
    _assert_same(model, tmp_path, random_feeds(model, seq=8))


def _gemm_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(512, 32)).astype(np.float32), "w1")  # transB: (N, K)
    b1 = numpy_helper.from_array(rng.normal(size=(512,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(512, 16)).astype(np.float32), "w2")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                              initializer=[w1, b1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_gemm_is_split_by_columns(tmp_path):
    model = _gemm_model()
    assert {s.kind for s in find_sites(analyze(model))} == {"columns"}
    result = make_plan(model, "gemm", int(whole_vram(model) * 0.4), workspace_bytes=0, out_dir=tmp_path)
    assert len(result.plan.tasks) >= 3 and "Concat" in _split_ops(result)
    _assert_same(model, tmp_path, {"x": np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)})


def test_token_ids_past_the_vocabulary_still_fail(tmp_path):
    model = zoo.build("tiny-llama", seed=0, vocab_size=32000, max_seq=8, kv_cache=False)
    make_plan(model, "tiny-llama", int(whole_vram(model) * 0.15), workspace_bytes=0, out_dir=tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - the engine's own out-of-range error, as for the whole model
        LocalPipeline(tmp_path).run({"input_ids": np.array([[5, 32000]], np.int64)})
