"""Verification overhead of Proof of Sampling against full replication, measured on one job mix.

    .venv/bin/python bench/posp_overhead.py [--jobs 300] [--markdown]

Every configuration runs the same jobs (tiny-llama split into 3 tasks; prompts of 1 to 12 tokens, 0 to
4 generated tokens) through the whole protocol in-process (LiteSVM market, onnxruntime nodes, local
blob store): executors record and commit, the chain draws, validators re-execute what is sampled, all
tasks are settled. Compute is counted two ways: estimated FLOPs (the task's FLOPs per position times
the positions each call processed) and measured engine seconds of the executors' calls and the
validators' replays. The ratio is (executed + re-executed) / executed: the total cost of a verified
job relative to an unverified one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitup.market import MarketParams
from splitup.verify.sandbox import make_world, prompt, write_plan

CONFIGS: list[tuple[str, MarketParams]] = [
    ("unverified (p = 0)", MarketParams.flat(0)),
    ("PoSP, p = 8 %", MarketParams.flat(800)),
    ("PoSP, adaptive (new nodes 30 % -> 8 %)", MarketParams()),
    ("full replication (p = 100 %)", MarketParams.flat(10_000)),
]


@dataclass
class Row:
    name: str
    tasks: int = 0
    sampled: int = 0
    executed_flops: int = 0
    reexecuted_flops: int = 0
    executed_s: float = 0.0
    reexecuted_s: float = 0.0
    wall_s: float = 0.0

    @property
    def flops_ratio(self) -> float:
        return (self.executed_flops + self.reexecuted_flops) / self.executed_flops

    @property
    def time_ratio(self) -> float:
        return (self.executed_s + self.reexecuted_s) / self.executed_s


def run(name: str, params: MarketParams, plan_dir: Path, store: Path, jobs: int) -> Row:
    w = make_world(plan_dir, store, params, n_nodes=4)
    runner = w.runner()
    row = Row(name)
    start = time.perf_counter()
    for seed in range(jobs):
        report = runner.run(prompt(seed, length=1 + seed % 12), new_tokens=(seed * 7) % 5)
        for t in report.tasks:
            if t.sampled and t.verdict != "agree":
                raise AssertionError(f"honest task {t.index} of job {report.job} failed: {t.reason}")
            row.tasks += 1
            row.sampled += t.sampled
            row.executed_flops += t.executed_flops
            row.reexecuted_flops += t.reexecuted_flops
            row.executed_s += t.executed_s
            row.reexecuted_s += t.reexecuted_s
    row.wall_s = time.perf_counter() - start
    return row


def table(rows: list[Row]) -> Table:
    t = Table(title="PoSP verification overhead (same job mix, tiny-llama in 3 tasks)")
    for col in ("configuration", "tasks", "sampled", "share", "re-executed / executed (FLOPs)",
                "total / unverified (FLOPs)", "total / unverified (engine time)", "wall s"):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for r in rows:
        t.add_row(r.name, str(r.tasks), str(r.sampled), f"{r.sampled / r.tasks:.1%}",
                  f"{r.reexecuted_flops / r.executed_flops:.3f}", f"{r.flops_ratio:.3f}x", f"{r.time_ratio:.3f}x",
                  f"{r.wall_s:.1f}")
    return t


def markdown(rows: list[Row]) -> str:
    lines = ["| configuration | tasks | sampled | total / unverified (FLOPs) | total / unverified (engine time) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.tasks} | {r.sampled} ({r.sampled / r.tasks:.1%}) | {r.flops_ratio:.3f}x "
                     f"| {r.time_ratio:.3f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plan_dir = Path(tmp) / "plan"
        write_plan(plan_dir)
        rows = [run(name, params, plan_dir, Path(tmp) / f"store{i}", args.jobs)
                for i, (name, params) in enumerate(CONFIGS)]
    Console(width=160).print(table(rows))
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
