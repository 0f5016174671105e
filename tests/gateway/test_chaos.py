"""The chaos run's short form (issue 13), on the gateway tests' market (its processes reused): requests,
some malformed or over-long, through the gateway while a node, the gateway and the ledger are each
SIGKILLed and restarted; then every book must balance (``splitup.demo.chaos.ChaosReport.problems``).
Fewer requests than the full form (``bench/chaos.py``), the same checks, every kind of kill."""

from __future__ import annotations

import pytest

from splitup.demo.chaos import ChaosReport, run_chaos


def test_the_books_blame_only_what_a_kill_explains() -> None:
    """Stake lost by a killed node is excused only as far as its kills explain it: one liveness fault per
    task it held when killed, and no lost verdict at all (nobody cheats in the run). Before, any loss of a
    node that was killed once passed, which hid honest nodes' penalties whenever they fell on it."""
    r = ChaosReport(killed_nodes={"node-a"}, held_at_kills={"node-a": 1})
    r.liveness_faults.update({"node-a": 1})
    assert r.problems() == []
    r.liveness_faults.update({"node-a": 1})
    assert r.problems() == ["node-a has 2 liveness fault(s); its kills found it holding 1 task(s)"]
    r.liveness_faults.clear()
    r.verdicts_lost.update({"node-b": 1})
    assert r.problems() == ["node-b lost 1 verdict(s), yet no node cheats in this run"]
    r.verdicts_lost.clear()
    r.held_at_kills["node-a"] = None  # the chain could not be read at the kill: any fault is explained
    r.liveness_faults.update({"node-a": 3})
    assert r.problems() == []


@pytest.mark.timeout(400)
def test_chaos_keeps_the_books(env) -> None:
    report = run_chaos(env.net, env.gateway, requests=9, concurrency=3, seed=3, gap=(1.5, 3.0), say=print)
    seen = (dict(report.outcomes), dict(report.kills), report.notes)
    assert report.kills["node"] >= 1 and report.kills["gateway"] >= 1 and report.kills["ledger"] >= 1, seen
    assert report.outcomes["served"] >= 1 and report.outcomes["refused_400"] >= 1, seen
    assert report.problems() == [], (report.problems(), report.notes)
    assert report.ledger_checks and all(report.ledger_checks)
    assert report.jobs_open_after == 0 and report.locked_after == 0 and report.honest_stake_lost == 0
