"""Tasks against the lower bound, and plan time, for LLaMA-7B/13B/70B at 8-24 GiB and a Llama-3.1-405B
shape at 24 and 80 GiB (fp16, context 4096, 128-token chunks, 256 MiB workspace per task).

Run: .venv/bin/python bench/plan_table.py  (times: wall clock, and this process's CPU seconds in brackets,
which stay meaningful when other jobs share the cores; the load average is printed beside them)
Baseline in the same run: the partitioner on the graph as built, cutting only between and inside
transformer blocks. "split DP" times the planner with operator splits (find sites, rewrite, two or
three solves); "splitup plan" times what the command does: build the shape-only graph, size it,
plan, and cut out the task graphs.
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.table import Table

from splitup.graph import zoo
from splitup.partition import analyze, partition, plan_partition
from splitup.partition.plan import make_plan

GiB = 2**30
CONFIGS = [(name, b) for name in ("llama-7b", "llama-13b", "llama-70b") for b in (8, 12, 16, 24)] + [
    ("llama-405b", 24), ("llama-405b", 80)]


def main() -> None:
    load_before = os.getloadavg()
    table = Table(title="splitup plan: fp16, context 4096, 128-token chunks, 256 MiB workspace per task")
    for col in ("model", "node", "tasks", "lower bound", "blocks only", "split DP wall (CPU)",
                "splitup plan wall (CPU)", "slowest stage"):
        table.add_column(col, justify="left" if col == "model" else "right")
    worst = 0
    for name, gib in CONFIGS:
        budget = gib * GiB
        model = zoo.build(name, dtype="float16", validate=False)
        a = analyze(model, trusted=True)
        coarse = partition(a, budget)
        t0, c0 = time.perf_counter(), time.process_time()
        _, part = plan_partition(a, budget)
        split_s, split_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        result = make_plan(zoo.build(name, dtype="float16", validate=False), name, budget, trusted=True)
        plan_s, plan_cpu = time.perf_counter() - t0, time.process_time() - c0
        n, lb = len(result.plan.tasks), result.plan.lower_bound
        assert n == len(part.segments)
        worst = max(worst, n - lb)
        flops = [t.flops for t in result.plan.tasks]
        table.add_row(name, f"{gib} GiB", str(n), str(lb), str(len(coarse.segments)), f"{split_s:.2f} s ({split_cpu:.2f})",
                      f"{plan_s:.2f} s ({plan_cpu:.2f})", f"{max(flops) / (sum(flops) / n):.2f}x mean")
    console = Console(width=140)
    console.print(table)
    console.print(f"worst: {worst} task(s) above the lower bound; load average {load_before[0]:.2f} before, "
                  f"{os.getloadavg()[0]:.2f} after ({os.cpu_count()} cores)")
    from splitup.graph.validate import validate_model

    t0 = time.perf_counter()
    model = zoo.build("llama-70b", validate=False)
    built = time.perf_counter() - t0
    report = validate_model(model)
    console.print(f"llama-70b shape-only graph: built in {built:.2f} s, fully validated in "
                  f"{time.perf_counter() - t0 - built:.2f} s ({report.node_count} nodes, "
                  f"{report.parameter_count / 1e9:.2f} B parameters)")


if __name__ == "__main__":
    main()
