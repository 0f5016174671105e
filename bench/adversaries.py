"""The adversary suite of issue 12 on the real program (LiteSVM, committed .so, default config).

Plays each strategy of ``splitup.verify.econ.adversaries`` for ``--jobs`` jobs beside the honest play of
the same seat and prints, per strategy, the expected and realised profit per job (SOL), the stake honest
parties lost and whether lamports were conserved. ``--markdown`` prints the table for docs/posp.md.

    .venv/bin/python bench/adversaries.py --jobs 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitup.market.market import LAMPORTS_PER_SOL
from splitup.verify.econ.adversaries import STRATEGIES, Result


def sol(lamports: float) -> str:
    return f"{lamports / LAMPORTS_PER_SOL:+.5f}"


def rows(results: list[Result]) -> list[list[str]]:
    return [[r.strategy, r.role, sol(r.honest_expected), sol(r.expected), sol(r.realised),
             "no" if not r.beats_honesty or r.strategy == "honest node" else "YES", f"{r.honest_stake_lost:,}",
             "yes" if r.conserved else "NO", r.note] for r in results]


HEAD = ["strategy", "seat", "honest, expected", "strategy, expected", "strategy, realised", "beats honesty",
        "honest stake lost", "lamports conserved", "note"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200, help="jobs per strategy")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    results = [s(args.jobs) for s in STRATEGIES]
    seconds = time.perf_counter() - start
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    if args.markdown:
        print("| " + " | ".join(HEAD) + " |")
        print("|" + "---|" * len(HEAD))
        for row in rows(results):
            print("| " + " | ".join(row) + " |")
        print(f"\n{args.jobs} jobs per strategy, {seconds:.0f} s, load average {' '.join(load)}")
        return 0
    table = Table(title=f"Adversaries at the chain's defaults: profit per job, SOL ({args.jobs} jobs each)")
    for col in HEAD:
        table.add_column(col, justify="left" if col in ("strategy", "seat", "note") else "right")
    for row in rows(results):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"{seconds:.0f} s on LiteSVM, load average {' '.join(load)}")
    bad = [r.strategy for r in results[1:] if r.beats_honesty or r.honest_stake_lost or not r.conserved]
    return 1 if bad or not results[0].conserved else 0


if __name__ == "__main__":
    raise SystemExit(main())
