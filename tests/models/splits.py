"""Plans of a real model with a chosen number of tasks."""

from pathlib import Path

import numpy as np
import onnx

from splitup.partition import PartitionError, analyze, partition
from splitup.partition.plan import make_plan


def plan_with_tasks(model: onnx.ModelProto, name: str, count: int, out: Path):
    """Write a plan of ``model`` with exactly ``count`` tasks: the largest budget that gives that many."""
    a = analyze(model)
    whole = partition(a, 2**40, workspace_bytes=0).segments[0].vram_bytes
    for frac in np.linspace(0.98, 0.1, 177):
        try:
            n = len(partition(a, int(whole * frac), workspace_bytes=0).segments)
        except PartitionError:
            continue
        if n == count:
            result = make_plan(model, name, int(whole * frac), workspace_bytes=0, out_dir=out)
            assert len(result.plan.tasks) == count
            return result
    raise AssertionError(f"no budget splits {name} into {count} tasks")
