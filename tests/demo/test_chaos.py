"""The chaos run's short form (issue 13): requests, some malformed or over-long, through the gateway
while a node, the gateway and the ledger are each SIGKILLed and restarted; then every book must
balance (``splitup.demo.chaos.ChaosReport.problems``). The full form is ``bench/chaos.py``."""

from __future__ import annotations

import pytest

from splitup.demo.chaos import run_chaos, start_gateway
from splitup.demo.flow import prepare
from splitup.demo.network import local_market
from splitup.demo.procs import free_port


@pytest.mark.timeout(600)
def test_chaos_keeps_the_books(tmp_path) -> None:
    prep = prepare(tmp_path, smaller=True, tasks=3, nodes=4, workspace=0, prompt="unused")
    with local_market(tmp_path, prep.model, prep.plan_dir, prep.budgets, verify_rate_bps=2000,
                      validator_timeout_slots=1200) as net:
        gw = start_gateway(net, port=free_port())
        report = run_chaos(net, gw, requests=12, concurrency=3, seed=3, gap=(2.0, 4.0))
    assert report.kills["node"] >= 1 and report.kills["gateway"] >= 1 and report.kills["ledger"] >= 1
    assert report.outcomes["served"] >= 1 and report.outcomes["refused_400"] >= 1
    assert report.problems() == [], (report.problems(), report.notes)
    assert report.ledger_checks and all(report.ledger_checks)
    assert report.jobs_open_after == 0 and report.locked_after == 0 and report.honest_stake_lost == 0
