"""``splitup demo --dtype``: the demo's model is planned and written in the precision asked for."""

from __future__ import annotations

import pytest

from splitup.cli import main
from splitup.demo.flow import prepare
from splitup.partition.task import Plan


@pytest.mark.parametrize("dtype", ["int4"])
def test_demo_plans_its_model_in_the_dtype_asked_for(dtype, tmp_path) -> None:
    prep = prepare(tmp_path, smaller=True, tasks=3, nodes=4, workspace=0, prompt="hi", dtype=dtype)
    plan = Plan.load(prep.plan_dir)
    assert len(plan.tasks) == 3 and {t.precision for t in plan.tasks} == {f"{dtype}/fp32"}


def test_dtype_is_refused_unless_known(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--dtype", "int3"])
    assert "invalid choice" in capsys.readouterr().err
