"""The chaos run's short form (issue 13), on the gateway tests' market (its processes reused): requests,
some malformed or over-long, through the gateway while a node, the gateway and the ledger are each
SIGKILLed and restarted; then every book must balance (``splitup.demo.chaos.ChaosReport.problems``).
Fewer requests than the full form (``bench/chaos.py``), the same checks, every kind of kill."""

from __future__ import annotations

import pytest

from splitup.demo.chaos import run_chaos


@pytest.mark.timeout(400)
def test_chaos_keeps_the_books(env) -> None:
    report = run_chaos(env.net, env.gateway, requests=9, concurrency=3, seed=3, gap=(1.5, 3.0), say=print)
    seen = (dict(report.outcomes), dict(report.kills), report.notes)
    assert report.kills["node"] >= 1 and report.kills["gateway"] >= 1 and report.kills["ledger"] >= 1, seen
    assert report.outcomes["served"] >= 1 and report.outcomes["refused_400"] >= 1, seen
    assert report.problems() == [], (report.problems(), report.notes)
    assert report.ledger_checks and all(report.ledger_checks)
    assert report.jobs_open_after == 0 and report.locked_after == 0 and report.honest_stake_lost == 0
