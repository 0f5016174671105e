"""The task that chooses tokens computes in float32 in every plan, and is judged only under a float32 class:
in an fp16 plan a flip at a near-tie, which the fp16 rule cannot see, is caught (docs/posp.md, "Precision of
the token-choosing task")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from splitup.graph.precision import HALF_TYPES
from splitup.partition.task import GRAPH_FILE, Plan, task_dir
from splitup.runtime import get_engine, run_stateful
from splitup.verify.compare import (
    TOLERANCES,
    ArithmeticBelowStated,
    CoarseClassRefused,
    compare_tensor,
    judged_class,
)
from splitup.verify.replay import LOGITS, judge, replay
from splitup.verify.sandbox import write_plan
from splitup.verify.transcript import Transcript


@pytest.fixture(scope="module")
def fp16_plan(tmp_path_factory) -> tuple[Path, Plan]:
    out = tmp_path_factory.mktemp("fp16plan")
    return out, write_plan(out, dtype="fp16")


def _half_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Nodes other than a Cast that read or write a half-precision tensor."""
    g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return [n.name for n in g.node if n.op_type != "Cast"
            and any(types.get(x) in HALF_TYPES for x in (*n.input, *n.output) if x)]


def test_the_last_task_of_an_fp16_plan_computes_in_float32(fp16_plan):
    out, plan = fp16_plan
    *hidden, last = plan.tasks
    assert all(t.precision == "fp16/fp16" for t in hidden)
    assert last.precision == "fp32/fp32" and judged_class(last.precision, tokens=True) == "fp32"
    graph = onnx.load(str(task_dir(out, last) / GRAPH_FILE))
    assert _half_arithmetic(graph) == []
    specs = {s.name: s for s in (*last.inputs, *last.outputs)}
    assert specs[LOGITS].dtype == "float32"
    handed = [s for s in last.inputs if s.name not in last.state]
    assert handed and all(s.dtype == "float16" for s in handed)  # what the previous task committed
    # what the node holds is costed as it runs: a float32 cache where there is one
    assert last.kv_cache_bytes == sum(specs[n].max_bytes for n in last.state)
    assert all(specs[n].dtype == "float32" for n in last.state)
    assert _half_arithmetic(onnx.load(str(task_dir(out, hidden[0]) / GRAPH_FILE)))  # the rest stays fp16


def test_a_token_choosing_task_is_never_judged_under_a_half_class():
    with pytest.raises(CoarseClassRefused):
        judged_class("fp16/fp16", tokens=True)
    assert judged_class("fp16/fp16", tokens=False, executor="fp16", validator="fp32") == "fp16"
    assert judged_class("int4/fp32", tokens=True) == "int4"
    with pytest.raises(ArithmeticBelowStated):
        judged_class("fp32/fp32", tokens=True, executor="fp16")
    with pytest.raises(CoarseClassRefused):
        judged_class("fp32/fp32", tokens=True, validator="fp16")


def test_a_flip_at_a_near_tie_in_an_fp16_plan_is_caught(fp16_plan):
    out, plan = fp16_plan
    engine = get_engine("onnxruntime", threads=1)
    runners = [engine.load(task_dir(out, t)) for t in plan.tasks]
    last = runners[-1]
    validator = get_engine("onnxruntime", threads=2).load(task_dir(out, last.task))
    seq = plan.tasks[0].dim_max["seq"]
    judged = []  # one prefill each: (transcript of the last task, the validator's replay)
    for prompt in np.random.default_rng(3).integers(0, 512, (12, seq)):
        env: dict[str, np.ndarray] = {"input_ids": prompt[None].astype(np.int64)}
        transcript = Transcript("job", last.task.index, last.task.task_id)
        for r in runners:
            given = {s.name: env[s.name] for s in r.task.inputs if s.name in env and s.name not in r.task.state}
            result, _ = run_stateful(r, given, None)
            env.update(result)
        transcript.add(given, {LOGITS: result[LOGITS]})
        replayed = replay(validator, transcript)
        assert judge(transcript, replayed, task=validator.task).match  # honest, under the float32 rule
        judged.append((transcript, replayed))
    # the row whose top two logits are closest, relative to its range, beyond float32's tie window: swap them
    gaps = []
    for k, (t, _) in enumerate(judged):
        for r, row in enumerate(t.steps[0].outputs[LOGITS][0].astype(np.float64)):
            top = np.sort(row)[-2:]
            gaps.append(((top[1] - top[0]) / (row.max() - row.min()), k, r))
    gap, k, r = min(g for g in gaps if g[0] > 2e-5)
    assert gap < 2e-3, gap  # a near-tie: inside the fp16 rule's slack, far outside float32's
    transcript, replayed = judged[k]
    flipped = transcript.steps[0].outputs[LOGITS].copy()
    a, b = np.argsort(-flipped[0, r])[:2]
    flipped[0, r, a], flipped[0, r, b] = flipped[0, r, b], flipped[0, r, a]
    fp16_rule = compare_tensor(LOGITS, flipped, replayed.outputs[0][LOGITS], TOLERANCES["fp16"], is_logits=True)
    assert fp16_rule.match  # what the old fp16 class would have let through
    transcript.steps[0].outputs[LOGITS] = flipped
    verdict = judge(transcript, replayed, task=validator.task)
    assert not verdict.match and "token differs" in verdict.reason
    with pytest.raises(CoarseClassRefused):  # nor may a validator pass the fp16 thresholds explicitly
        judge(transcript, replayed, TOLERANCES["fp16"], task=validator.task)
