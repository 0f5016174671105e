"""The task that chooses tokens computes in float32 in every plan, all of it or its head (then its logits
are judged from the hidden state the executor committed), and its logits are judged only under float32's
rule: in an fp16 plan a flip at a near-tie, which the fp16 rule cannot see, is caught (docs/posp.md,
"Precision of the token-choosing task")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from splitup.graph import zoo
from splitup.graph.errors import MalformedGraph
from splitup.graph.meta import TOKEN_FP32_KEY
from splitup.graph.precision import HALF_TYPES
from splitup.graph.upcast import split_head, token_fp32_form, token_head, with_token_fp32_form
from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.partition.task import GRAPH_FILE, Plan, PlanError, TaskDefinition, task_dir
from splitup.runtime import available_engines, get_engine, run_stateful
from splitup.verify.compare import (
    TOLERANCES,
    ArithmeticBelowStated,
    CoarseClassRefused,
    compare_tensor,
    judged_class,
)
from splitup.verify.replay import LOGITS, ReferenceRunner, judge, replay
from splitup.verify.sandbox import write_plan
from splitup.verify.transcript import BadTranscript, Transcript


@pytest.fixture(scope="module")
def fp16_plan(tmp_path_factory) -> tuple[Path, Plan]:
    """The token task with a float32 head."""
    out = tmp_path_factory.mktemp("fp16plan")
    return out, write_plan(out, dtype="fp16", token_fp32="head")


@pytest.fixture(scope="module")
def whole_plan(tmp_path_factory) -> tuple[Path, Plan]:
    """The token task all in float32: what ``auto`` gives where it costs no task."""
    out = tmp_path_factory.mktemp("wholeplan")
    return out, write_plan(out, dtype="fp16")


@pytest.fixture(params=["head", "task"])
def either_plan(request, fp16_plan, whole_plan) -> tuple[Path, Plan]:
    return fp16_plan if request.param == "head" else whole_plan


def test_auto_computes_the_whole_token_task_in_float32_where_that_costs_no_task(whole_plan):
    out, plan = whole_plan
    *hidden, last = plan.tasks
    assert all(t.precision == "fp16/fp16" for t in hidden)
    assert last.head is None
    assert last.precision == "fp32/fp32" and judged_class(last.precision, tokens=True) == "fp32"
    graph = onnx.load(str(task_dir(out, last) / GRAPH_FILE))
    assert _half_arithmetic(graph) == []
    specs = {s.name: s for s in (*last.inputs, *last.outputs)}
    assert specs[LOGITS].dtype == "float32"
    handed = [s for s in last.inputs if s.name not in last.state]
    assert handed and all(s.dtype == "float16" for s in handed)  # what the previous task committed
    # what the node holds is costed as it runs: a float32 cache where there is one (here the cut falls after
    # the last attention: the token task holds the last MLP, the norm and the LM head)
    assert last.kv_cache_bytes == sum(specs[n].max_bytes for n in last.state)
    assert all(specs[n].dtype in ("float32", "int64") for n in last.state)
    assert _half_arithmetic(onnx.load(str(task_dir(out, hidden[0]) / GRAPH_FILE)))  # the rest stays fp16


def _half_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Nodes other than a Cast that read or write a half-precision tensor."""
    g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return [n.name for n in g.node if n.op_type != "Cast"
            and any(types.get(x) in HALF_TYPES for x in (*n.input, *n.output) if x)]


def test_the_last_task_of_an_fp16_plan_chooses_tokens_in_a_float32_head(fp16_plan):
    out, plan = fp16_plan
    *hidden, last = plan.tasks
    assert all(t.precision == "fp16/fp16" and t.head is None for t in plan.tasks[:-1])
    specs = {s.name: s for s in (*last.inputs, *last.outputs)}
    assert last.head in specs and specs[last.head].dtype == "float16"  # committed as the layers made it
    assert specs[LOGITS].dtype == "float32"
    graph = onnx.load(str(task_dir(out, last) / GRAPH_FILE))
    body, head = split_head(graph, last.head, [LOGITS])
    assert [n.op_type for n in head.graph.node][0] == "Cast" and _half_arithmetic(head) == []
    assert {i.name for i in head.graph.input} == {last.head}
    # the layers before the head keep the plan's precision, KV cache included, and are costed so
    assert _half_arithmetic(body) and {specs[n].dtype for n in last.state} == {"float16", "int64"}
    assert last.kv_cache_bytes == sum(specs[n].max_bytes for n in last.state)
    assert len(head.graph.node) < 6  # the LM head (and its input's Cast), not the layers


def test_a_graph_without_a_single_hidden_state_before_its_head_has_its_whole_token_task_upcast():
    io = [(("x",), ("a",)), (("a", "w1"), ("b",)), (("a", "b"), ("c",)), (("c", "x"), ("logits",))]
    # the last matrix product reads its own input and a graph input: no one tensor carries everything on
    assert token_head(io, {"w1"}, {"w1"}, {"x"}) is None
    io[-1] = (("c", "w2"), ("logits",))
    assert token_head(io, {"w1", "w2"}, {"w1", "w2"}, {"x"}) == (3, "c")


def test_a_token_choosing_task_is_never_judged_under_a_half_class():
    with pytest.raises(CoarseClassRefused):
        judged_class("fp16/fp16", tokens=True)
    assert judged_class("fp16/fp16", tokens=False, executor="fp16", validator="fp32") == "fp16"
    assert judged_class("int4/fp32", tokens=True) == "int4"
    with pytest.raises(ArithmeticBelowStated):
        judged_class("fp32/fp32", tokens=True, executor="fp16")
    with pytest.raises(CoarseClassRefused):
        judged_class("fp32/fp32", tokens=True, validator="fp16")


def test_a_flip_at_a_near_tie_in_an_fp16_plan_is_caught(either_plan):
    out, plan = either_plan
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
        transcript.add(given, {k: v for k, v in result.items() if k not in last.task.state.values()})
        replayed = replay(validator, transcript)
        assert judge(transcript, replayed, task=validator.task).match  # honest, under the float32 rule
        judged.append((transcript, replayed))
    # the arbiter's exact engine runs the layers in true fp16 and agrees too
    exact = ReferenceRunner(task_dir(out, last.task))
    assert judge(judged[0][0], replay(exact, judged[0][0]), task=last.task).match
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
    # the validator's logits: with a float32 head, its head's on the executor's hidden state
    ref = (replayed.head or replayed.outputs)[0][LOGITS]
    fp16_rule = compare_tensor(LOGITS, flipped, ref, TOLERANCES["fp16"], is_logits=True)
    assert fp16_rule.match  # what the old fp16 class would have let through
    transcript.steps[0].outputs[LOGITS] = flipped
    verdict = judge(transcript, replayed, task=validator.task)
    assert not verdict.match and "token differs" in verdict.reason
    with pytest.raises(CoarseClassRefused):  # nor may a validator pass the fp16 thresholds explicitly
        judge(transcript, replayed, TOLERANCES["fp16"], task=validator.task)


def test_the_head_judges_logits_from_the_executors_own_hidden_state(fp16_plan):
    out, plan = fp16_plan
    runners = [get_engine("onnxruntime", threads=1).load(task_dir(out, t)) for t in plan.tasks]
    last = runners[-1].task
    env: dict[str, np.ndarray] = {"input_ids": np.arange(1, 9, dtype=np.int64)[None]}
    for r in runners:
        given = {s.name: env[s.name] for s in r.task.inputs if s.name in env and s.name not in r.task.state}
        result, _ = run_stateful(r, given, None)
        env.update(result)
    h, logits = result[last.head], result[LOGITS]

    def verdict(h_sent: np.ndarray, logits_sent: np.ndarray):
        t = Transcript("job", last.index, last.task_id)
        t.add(given, {LOGITS: logits_sent, last.head: h_sent})
        return judge(t, replay(runners[-1], t), task=last)

    assert verdict(h, logits).match
    # logits that are not the head of the hidden state sent with them, by a little (a nudged logit row)
    nudged = logits.copy()
    nudged[0, -1] += np.random.default_rng(0).normal(0, 1e-2, nudged.shape[-1]).astype(np.float32)
    v = verdict(h, nudged)
    assert not v.match and "logits" in v.reason
    # a hidden state the layers did not make (beyond the fp16 rule), with the logits its head gives
    forged = (h.astype(np.float32) * 1.05).astype(np.float16)
    forged_logits = runners[-1].head().run({last.head: forged})[LOGITS]
    v = verdict(forged, forged_logits)
    assert not v.match and last.head in v.reason
    # a transcript without the hidden state does not fit the task
    t = Transcript("job", last.index, last.task_id)
    t.add(given, {LOGITS: logits})
    with pytest.raises(BadTranscript):
        t.check_against(last)


def test_a_replay_runs_the_head_once_a_call_on_the_executors_hidden_state(fp16_plan, monkeypatch):
    """The logits are judged only as the head of the executor's committed hidden state: the replay runs the
    layers alone and the head once a call, not on the replayed hidden state as well."""
    out, plan = fp16_plan
    runners = [get_engine("onnxruntime", threads=1).load(task_dir(out, t)) for t in plan.tasks]
    last = runners[-1].task
    t = Transcript("job", last.index, last.task_id)
    env: dict[str, np.ndarray] = {"input_ids": np.arange(1, 9, dtype=np.int64)[None]}
    state: dict = {}
    for ids in (env["input_ids"], np.array([[9]], np.int64)):
        env = {"input_ids": ids}
        for r in runners[:-1]:
            env.update(run_stateful(r, {s.name: env[s.name] for s in r.task.inputs if s.name in env}, None)[0])
        given = {s.name: env[s.name] for s in last.inputs if s.name in env and s.name not in last.state}
        result, state = run_stateful(runners[-1], given, state)
        t.add(given, {k: v for k, v in result.items() if k not in last.state.values()})
    head = runners[-1].head()
    seen: list[np.ndarray] = []
    run = head.run
    monkeypatch.setattr(head, "run", lambda feeds: seen.append(feeds[last.head]) or run(feeds))
    replayed = replay(runners[-1], t)
    assert len(seen) == len(t.steps) == 2
    assert all(h is step.outputs[last.head] for h, step in zip(seen, t.steps, strict=True))
    assert all(LOGITS not in o for o in replayed.outputs) and len(replayed.head) == 2
    assert judge(t, replayed, task=last).match


def test_a_head_that_is_not_an_output_beside_the_logits_is_refused(fp16_plan):
    _, plan = fp16_plan
    for bad in ("no_such_output", LOGITS):
        forged = replace(plan.tasks[-1], head=bad).with_id()
        with pytest.raises(PlanError, match="head input"):
            TaskDefinition.from_json(forged.to_json())
    assert TaskDefinition.from_json(plan.tasks[-1].to_json()) == plan.tasks[-1]


def test_the_token_task_form_in_a_graph_is_one_of_the_known_ones():
    model = onnx.ModelProto()
    assert token_fp32_form(model) == "head"
    with_token_fp32_form(model, "task")
    with_token_fp32_form(model, "task")  # set, not added
    assert token_fp32_form(model) == "task" and len(model.metadata_props) == 1
    model.metadata_props.add(key=TOKEN_FP32_KEY, value="layers")
    with pytest.raises(MalformedGraph, match="one of task, head"):
        token_fp32_form(model)
    with pytest.raises(ValueError):
        with_token_fp32_form(model, "layers")


def test_onnxruntime_and_tinygrad_judge_each_others_float32_head(fp16_plan):
    reason = available_engines()["tinygrad"]
    if reason != "ok":
        pytest.skip(f"tinygrad engine unavailable: {reason}")
    out, plan = fp16_plan
    last = plan.tasks[-1]
    runners = [get_engine("onnxruntime", threads=1).load(task_dir(out, t)) for t in plan.tasks]
    env: dict[str, np.ndarray] = {"input_ids": np.arange(3, 11, dtype=np.int64)[None]}
    for r in runners[:-1]:
        env.update(run_stateful(r, {s.name: env[s.name] for s in r.task.inputs
                                    if s.name in env and s.name not in r.task.state}, None)[0])
    feeds = {s.name: env[s.name] for s in last.inputs if s.name in env and s.name not in last.state}
    tiny = get_engine("tinygrad").load(task_dir(out, last))
    for executor, validator in ((runners[-1], tiny), (tiny, runners[-1])):
        outs, _ = run_stateful(executor, feeds, None)
        t = Transcript("job", last.index, last.task_id, arithmetic=executor.arithmetic)
        t.add(feeds, {k: v for k, v in outs.items() if k not in last.state.values()})
        verdict = judge(t, replay(validator, t), task=last, arithmetic=validator.arithmetic)
        assert verdict.match, (executor.engine, verdict.reason)


def test_planning_leaves_the_callers_model_as_it_was():
    model = zoo.build("tiny-llama", seed=0, dtype="fp16")
    before = [(p.key, p.value) for p in model.metadata_props]
    budget = budget_for_tasks(analyze(model), 3)
    counts = {form: len(make_plan(model, "tiny", budget, workspace_bytes=0, token_fp32=form).plan.tasks)
              for form in ("task", "head", "auto")}
    assert [(p.key, p.value) for p in model.metadata_props] == before
    # and so a plan's count does not depend on the form asked for before it
    assert counts["auto"] == min(counts["task"], counts["head"])


def test_a_constant_both_the_layers_and_the_head_read_is_in_both_parts():
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    c = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [2.0]))
    graph = helper.make_graph(
        [c, helper.make_node("Add", ["x", "c"], ["h"]), helper.make_node("Mul", ["h", "c"], [LOGITS])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [3])])
    body, head = split_head(helper.make_model(graph), "h", [LOGITS])
    x = np.arange(3, dtype=np.float32)
    (h,) = ReferenceEvaluator(body).run(None, {"x": x})
    (logits,) = ReferenceEvaluator(head).run(None, {"h": h})
    assert np.array_equal(logits, (x + 2) * 2)
    assert [n.op_type for n in head.graph.node] == ["Constant", "Mul"]
