"""Honest nodes on different engines never fail each other's check: executors and validators on
onnxruntime and tinygrad, every task sampled, every verdict "agree", nobody slashed."""

from __future__ import annotations

import pytest

from splitup.market import MarketParams
from splitup.runtime import available_engines, get_engine
from splitup.verify.sandbox import PRICE, make_world, prompt, write_plan

TINYGRAD = available_engines().get("tinygrad", "missing")


@pytest.mark.skipif(TINYGRAD != "ok", reason=f"tinygrad cannot run here: {TINYGRAD}")
def test_onnxruntime_and_tinygrad_validate_each_other(tmp_path):
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir)
    w = make_world(plan_dir, tmp_path / "store", MarketParams.flat(10_000), n_nodes=3)
    tiny = get_engine("tinygrad")
    # tasks 0 and 1 on onnxruntime (nodes 0, 1), task 2 on tinygrad (node 2); node 2 validates with
    # tinygrad and node 0 with onnxruntime, so each engine checks the other's work
    executors = [w.executor(0), w.executor(1), w.executor(2, engine=tiny)]
    validators = [w.validator(2, engine=tiny), w.validator(0)]
    report = w.runner(executors, validators).run(prompt(11), new_tokens=1, nodes=[0, 1, 2])
    engines = {str(v.pubkey): v.engine_name for v in validators}
    assert engines[report.tasks[0].validator] == "tinygrad"
    assert engines[report.tasks[2].validator] == "onnxruntime"
    for t in report.tasks:
        assert t.sampled and t.verdict == "agree", t.reason
        assert t.node_paid == PRICE and t.node_slashed == t.validator_slashed == 0
