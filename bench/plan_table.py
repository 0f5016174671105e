"""Plan time and task count for LLaMA-7B/13B/70B at 8, 12, 16 and 24 GiB (fp16, 4096 context).

Run: .venv/bin/python bench/plan_table.py
Times include building the shape-only graph, sizing it and the partition DP, as `splitup plan` does.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from splitup.graph import zoo
from splitup.partition.plan import make_plan

GiB = 2**30


def main() -> None:
    table = Table(title="splitup plan: tasks (lower bound) and plan time, fp16, context 4096, 128-token chunks")
    table.add_column("model")
    budgets = (8, 12, 16, 24)
    for b in budgets:
        table.add_column(f"{b} GiB", justify="right")
    for name in ("llama-7b", "llama-13b", "llama-70b"):
        cells = []
        for b in budgets:
            t0 = time.perf_counter()
            model = zoo.build(name, dtype="float16", validate=False)
            result = make_plan(model, name, b * GiB, trusted=True)
            dt = time.perf_counter() - t0
            cells.append(f"{len(result.plan.tasks)} ({result.plan.lower_bound}) in {dt:.2f} s")
        table.add_row(name, *cells)
    console = Console(width=120)
    console.print(table)
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
