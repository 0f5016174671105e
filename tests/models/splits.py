"""Plans of a real model with a chosen number of tasks."""

from pathlib import Path

import onnx

from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan


def plan_with_tasks(model: onnx.ModelProto, name: str, count: int, out: Path):
    """Write a plan of ``model`` with exactly ``count`` tasks."""
    budget = budget_for_tasks(analyze(model), count)
    result = make_plan(model, name, budget, workspace_bytes=0, out_dir=out)
    assert len(result.plan.tasks) == count
    return result
