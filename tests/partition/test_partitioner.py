import math

import pytest

from splitup.graph import zoo
from splitup.partition import PartitionError, analyze, budget_for_tasks, partition, plan_partition

GiB = 2**30


@pytest.fixture(scope="module")
def llama70b():
    return analyze(zoo.build("llama-70b", dtype="float16", validate=False))


def test_llama_70b_at_12gib_is_near_the_lower_bound(llama70b):
    # Plan time is measured in bench/plan_table.py, not asserted here.
    part = partition(llama70b, 12 * GiB)
    # the bytes over the budget: the last task's float32 head (it chooses tokens) holds the widened LM head,
    # the rest of it the plan's fp16
    assert part.lower_bound == math.ceil((part.total_weight_bytes + part.total_kv_cache_bytes) / (12 * GiB)) == 11
    assert len(part.segments) == 12  # whole blocks only; splitup plan's operator splits do no better
    assert all(s.vram_bytes <= 12 * GiB for s in part.segments)
    assert sum(s.weight_bytes for s in part.segments) >= part.total_weight_bytes  # shared rope tables repeat
    # Contiguous, complete, and every cut is a small hidden-state tensor (1 x 128 x 8192 fp16).
    assert part.segments[0].start == 0 and part.segments[-1].stop == len(llama70b.nodes)
    for a, b in zip(part.segments, part.segments[1:], strict=False):
        assert a.stop == b.start
        assert a.cut_bytes <= 2 * 128 * 8192 * 2


def test_fewest_tasks_then_balanced_stages(llama70b):
    part = partition(llama70b, 24 * GiB)
    flops = [s.flops for s in part.segments]
    # The optimum puts the bottleneck close to the average; a greedy fill would leave a short tail.
    assert max(flops) < 1.25 * (sum(flops) / len(flops))


def test_heterogeneous_nodes_each_task_fits_its_node(llama70b):
    sizes = [8 * GiB, 12 * GiB, 16 * GiB, 24 * GiB] * 3
    part = partition(llama70b, sizes)
    used = sorted(s.budget_bytes for s in part.segments)
    for s in part.segments:
        assert s.vram_bytes <= s.budget_bytes
    remaining = list(sizes)
    for b in used:
        remaining.remove(b)  # never more nodes of a size than given
    with pytest.raises(PartitionError, match="does not fit on the given nodes"):
        partition(llama70b, [24 * GiB, 24 * GiB])


def test_impossible_budget_names_the_culprit(llama70b):
    with pytest.raises(PartitionError, match=r"weight 'embed.weight' alone needs 524288000 bytes"):
        partition(llama70b, 256 * 2**20)


def test_kv_cache_is_counted_at_the_declared_context():
    a = analyze(zoo.build("tiny-llama", seed=0))
    part = partition(a, 2**40, workspace_bytes=0)
    cfg = zoo.entry("tiny-llama").config
    per_layer = 2 * cfg.kv_heads * cfg.context * cfg.head_dim * 4 + 8  # key and value caches, the int64 length
    assert part.segments[0].kv_cache_bytes == cfg.layers * per_layer


def test_budget_for_tasks_finds_each_count_and_refuses_impossible_ones():
    a = analyze(zoo.build("tiny-llama", seed=0))
    for count in (1, 2, 3, 5):
        budget = budget_for_tasks(a, count)
        assert len(plan_partition(a, budget, workspace_bytes=0)[1].segments) == count
    with pytest.raises(PartitionError, match="exactly 10000 tasks"):
        budget_for_tasks(a, 10_000)


def test_attention_score_memory_is_part_of_a_tasks_activations():
    """The fused Attention op's score matrix is invisible to shape inference; the planner counts it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from splitup.graph.memory import hidden_workspace

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 512, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 512, 64])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"]),
             helper.make_node("Attention", ["q", "x", "x"], ["y"], name="attn")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 24)])
    a = analyze(model)
    scores = 4 * 3 * 4 * 512 * 512  # three float32 buffers of heads x queries x keys
    assert hidden_workspace(a.nodes[1], a.types) >= scores
    segment = partition(a, 2**30, workspace_bytes=0).segments[0]
    assert segment.activation_bytes >= scores
