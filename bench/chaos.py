"""The chaos run in full (issue 13): a local market of processes (ledger, store, 4 market nodes, the
gateway) serves a stream of requests, some malformed or over-long, while nodes, the gateway and the
ledger are killed with SIGKILL at random moments and restarted; then the books are checked.

Run: .venv/bin/python bench/chaos.py [--requests 60] [--concurrency 4] [--seed 1] [--gap 3,8]

Prints one table: requests and their outcomes, kills, jobs posted / closed / wound up / left open,
collateral locked after, lamports of all accounts before and after with the transaction fees, the
client's balance against what it paid for delivered work, stake lost by nodes never killed, and whether
the ledger's SQLite state after each kill equals what RPC reported just before. Exit status 1 when any
book does not balance. The short form runs in CI (tests/gateway/test_chaos.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitup.demo.chaos import ChaosReport, run_chaos, start_gateway
from splitup.demo.flow import prepare
from splitup.demo.network import local_market
from splitup.demo.procs import free_port

SOL = 10**9


def table(r: ChaosReport) -> Table:
    t = Table(title=f"chaos run: {r.requests} requests, {r.seconds:.0f} s, load average {r.load_avg}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    o = r.outcomes
    rows = [
        ("requests: served / refused 400 / 503 (ledger down) / failed",
         f"{o['served']} / {o['refused_400']} / {o['unavailable']} / {o['failed']}"),
        ("kills (SIGKILL): node / gateway / ledger", f"{r.kills['node']} / {r.kills['gateway']} / {r.kills['ledger']}"),
        ("jobs posted / closed / wound up / open after",
         f"{r.jobs_posted} / {r.jobs_closed} / {r.jobs_wound_up} / {r.jobs_open_after}"),
        ("collateral locked after (lamports)", f"{r.locked_after}"),
        ("lamports, all accounts: before", f"{r.lamports_before:,}"),
        ("lamports, all accounts: after", f"{r.lamports_after:,}"),
        ("difference = fees the ledger recorded",
         f"{r.lamports_before - r.lamports_after:,} = {r.fees:,} ({r.transactions} tx)"),
        ("client: start - end", f"{r.client_before - r.client_after:,}"),
        ("client: paid for delivered work + its fees", f"{r.client_paid:,} + {r.client_fees:,}"),
        ("client: escrow refunded at close", f"{r.refunded:,}"),
        ("stake lost: nodes never killed / killed nodes", f"{r.honest_stake_lost} / {r.killed_stake_lost}"),
        ("liveness faults (tasks held at its kills) / verdicts lost, per node",
         " ".join(f"{n}: {r.liveness_faults[n]} ({r.held_at_kills.get(n, '-')}) / {r.verdicts_lost[n]}"
                  for n in sorted(r.liveness_faults))),
        ("ledger SQLite after kill == RPC before", " ".join("yes" if ok else "NO" for ok in r.ledger_checks) or "-"),
        ("books balance", "yes" if not r.problems() else "NO: " + "; ".join(r.problems())),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gap", default="3,8", help="seconds between kills: min,max")
    ap.add_argument("--verify-rate-bps", type=int, default=2000)
    ap.add_argument("--keep", type=Path, default=None, help="run in this directory and keep it (logs, wallets)")
    a = ap.parse_args()
    console = Console(width=160)
    gap = tuple(float(x) for x in a.gap.split(","))
    with tempfile.TemporaryDirectory(prefix="splitup-chaos-") as tmp:
        root = a.keep or Path(tmp)
        prep = prepare(root, smaller=True, tasks=3, nodes=4, workspace=0, prompt="unused")
        with local_market(root, prep.model, prep.plan_dir, prep.budgets, verify_rate_bps=a.verify_rate_bps,
                          validator_timeout_slots=1200) as net:
            gw = start_gateway(net, port=free_port())
            report = run_chaos(net, gw, requests=a.requests, concurrency=a.concurrency, seed=a.seed,
                               gap=(gap[0], gap[1]), say=console.print)
    console.print(table(report))
    for note in report.notes:
        console.print(f"[yellow]{note}[/yellow]")
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
