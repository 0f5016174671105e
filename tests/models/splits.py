"""Plans of a real model with a chosen number of tasks."""

from pathlib import Path

import onnx

from splitup.partition import PartitionError, analyze, partition
from splitup.partition.plan import make_plan


def plan_with_tasks(model: onnx.ModelProto, name: str, count: int, out: Path):
    """Write a plan of ``model`` with exactly ``count`` tasks.

    The task count only falls as the budget grows, so a bisection over the budget finds one in a
    few partitioner runs (each takes ~0.3 s on SmolLM2's 2300-node graph).
    """
    a = analyze(model)
    lo, hi = 0, partition(a, 2**40, workspace_bytes=0).segments[0].vram_bytes  # hi: one task
    for _ in range(40):
        mid = (lo + hi) // 2
        try:
            n = len(partition(a, mid, workspace_bytes=0).segments)
        except PartitionError:
            n = 10**9  # too small for the largest single piece: "infinitely many" tasks
        if n == count:
            result = make_plan(model, name, mid, workspace_bytes=0, out_dir=out)
            assert len(result.plan.tasks) == count
            return result
        lo, hi = (mid, hi) if n > count else (lo, mid)
    raise AssertionError(f"no budget splits {name} into {count} tasks")
