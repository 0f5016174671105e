"""Running a plan's tasks in sequence reproduces the whole model (max abs diff <= 1e-5)."""

import re

import numpy as np
import pytest

from splitup.graph import zoo
from splitup.partition import PartitionError, analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.partition.task import Plan, PlanError, load_task, task_dir
from splitup.runtime.local import LocalPipeline

from .conftest import random_feeds, reference, whole_vram

MODELS = {
    "mlp": {},
    "cnn": {"max_batch": 1, "channels": (3, 32, 64, 128)},
    "tiny-gpt2": {},
    "tiny-llama": {},
    "tiny-bert": {},
}


def budgets_for(model, counts=(2, 3, 4)):
    """A budget for each wanted task count that some budget gives exactly."""
    a = analyze(model)
    found = {}
    for n in counts:
        try:
            found[n] = budget_for_tasks(a, n)
        except PartitionError:
            continue
    return found


@pytest.mark.parametrize("name", list(MODELS))
def test_plan_reproduces_the_model(name, tmp_path):
    model = zoo.build(name, seed=0, kv_cache=False, **MODELS[name]) if "gpt2" in name or "llama" in name \
        else zoo.build(name, seed=0, **MODELS[name])
    feeds = random_feeds(model)
    ref = reference(model, feeds)
    budgets = budgets_for(model)
    assert len(budgets) >= 2, f"{name}: found budgets only for {sorted(budgets)} tasks"
    for count, budget in budgets.items():
        out = tmp_path / f"{count}"
        result = make_plan(model, name, budget, workspace_bytes=0, out_dir=out)
        assert len(result.plan.tasks) == count
        got = LocalPipeline(out).run(feeds)
        for k, v in ref.items():
            np.testing.assert_allclose(got[k], v, atol=1e-5, rtol=0, err_msg=f"{name} in {count} tasks: {k}")


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_kv_cache_generation_across_tasks(name, tmp_path):
    model = zoo.build(name, seed=0)
    whole = whole_vram(model)
    plan = make_plan(model, name, int(whole * 0.5), workspace_bytes=0, out_dir=tmp_path).plan
    assert len(plan.tasks) >= 3
    assert all(set(t.state) <= {i.name for i in t.inputs} for t in plan.tasks)
    # key, value and length of every layer (an attention split by KV heads holds them in parts "past.N#g.key")
    held = [re.sub(r"#\d+", "", k) for t in plan.tasks for k in t.state]
    assert set(held) == {f"past.{i}.{f}" for i in range(zoo.entry(name).config.layers) for f in ("key", "value", "length")}
    ids = np.random.default_rng(3).integers(0, 500, (1, 9))
    full = reference(model, random_feeds(model) | {"input_ids": ids} | {
        k: np.zeros((1, v.shape[1], 9, v.shape[3]), np.float32) if v.ndim == 4 else np.zeros(1, np.int64)
        for k, v in random_feeds(model).items() if k.startswith("past")})["logits"]
    pipe = LocalPipeline(tmp_path)
    steps = [pipe.run({"input_ids": ids[:, :5]})["logits"]]
    for t in range(5, 9):
        steps.append(pipe.run({"input_ids": ids[:, t : t + 1]})["logits"])
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_plan_round_trips_and_tampering_is_detected(tmp_path):
    model = zoo.build("tiny-llama", seed=0)
    plan = make_plan(model, "tiny-llama", int(whole_vram(model) * 0.6), out_dir=tmp_path, workspace_bytes=0).plan
    again = Plan.load(tmp_path)
    assert again == plan
    assert Plan.from_json(plan.to_json()) == plan
    assert len({t.task_id for t in plan.tasks}) == len(plan.tasks)
    shard = task_dir(tmp_path, plan.tasks[1]) / "weights.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(PlanError, match="does not match its sha256"):
        load_task(task_dir(tmp_path, plan.tasks[1]))
    with pytest.raises(PlanError, match="does not match its sha256"):
        LocalPipeline(tmp_path)
    body = plan.to_json()
    body["version"] = 99
    with pytest.raises(PlanError, match="version"):
        Plan.from_json(body)
    body = plan.to_json()
    body["tasks"][0]["vram_bytes"] += 1
    with pytest.raises(PlanError, match="task_id does not match"):
        Plan.from_json(body)
