"""Tasks against the lower bound, and plan time, for LLaMA-7B/13B/70B at 8-24 GiB and a Llama-3.1-405B
shape at 24 and 80 GiB (fp16, context 4096, 128-token chunks, 256 MiB workspace per task).

Run: .venv/bin/python bench/plan_table.py  (times: wall clock, and this process's CPU seconds in brackets,
which stay meaningful when other jobs share the cores; the load average is printed beside them)
Baseline in the same run: the partitioner on the graph as built, cutting only between and inside
transformer blocks. "partitioner" times the planner with operator splits (find sites, sketch and
solve, rewrite what the plan cuts and solve again); "splitup plan" times what the command does:
build the shape-only graph, size it, plan, and cut out and validate the task graphs. The last row is
issue 14's `splitup plan llama-70b --vram 12GiB --dtype int4` (fp16 activations).
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.table import Table

from splitup.graph import zoo
from splitup.partition import analyze, partition
from splitup.partition.plan import make_plan

GiB = 2**30
CONFIGS = [(name, b) for name in ("llama-7b", "llama-13b", "llama-70b") for b in (8, 12, 16, 24)] + [
    ("llama-405b", 24), ("llama-405b", 80)]


def main() -> None:
    load_before = os.getloadavg()
    table = Table(title="splitup plan: fp16, context 4096, 128-token chunks, 256 MiB workspace per task")
    for col in ("model", "node", "tasks", "lower bound", "blocks only", "partitioner wall (CPU)",
                "splitup plan wall (CPU)", "attention split", "slowest stage"):
        table.add_column(col, justify="left" if col == "model" else "right")
    worst = 0
    rows = [(name, gib, "fp16") for name, gib in CONFIGS] + [("llama-70b", 12, "int4")]
    for name, gib, dtype in rows:
        budget = gib * GiB
        acts = "fp16" if dtype == "int4" else None
        coarse = partition(analyze(zoo.build(name, dtype=dtype, activations=acts, validate=False), trusted=True), budget)
        t0, c0 = time.perf_counter(), time.process_time()
        result = make_plan(zoo.build(name, dtype=dtype, activations=acts, validate=False), name, budget, trusted=True)
        plan_s, plan_cpu = time.perf_counter() - t0, time.process_time() - c0
        n, lb = len(result.plan.tasks), result.plan.lower_bound
        worst = max(worst, n - lb)
        flops = [t.flops for t in result.plan.tasks]
        heads = sum(1 for k in result.plan.state if k.endswith("#0.key"))
        table.add_row(f"{name} ({dtype})" if dtype != "fp16" else name, f"{gib} GiB", str(n), str(lb),
                      str(len(coarse.segments)),
                      f"{result.partition_seconds:.2f} s ({result.partition_cpu_seconds:.2f})",
                      f"{plan_s:.2f} s ({plan_cpu:.2f})", f"{heads} layers" if heads else "-",
                      f"{max(flops) / (sum(flops) / n):.2f}x mean")
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
