"""bench/adversaries.py in its short form: at the chain's defaults no strategy earns what honesty earns
(in expectation over the program's draw at the rates it fixed), no honest party loses stake, and lamports
are conserved over every run."""

from __future__ import annotations

import pytest

from splitup.verify.econ.adversaries import STRATEGIES, Result

JOBS = 12


@pytest.fixture(scope="module")
def results() -> list[Result]:
    return [s(JOBS) for s in STRATEGIES]


def test_no_strategy_beats_honesty(results: list[Result]) -> None:
    honest = results[0]
    assert honest.strategy == "honest node" and honest.expected > 0
    for r in results[1:]:
        assert r.expected < r.honest_expected, f"{r.strategy}: {r.expected} >= {r.honest_expected} ({r.note})"


def test_no_honest_party_loses_stake_and_lamports_are_conserved(results: list[Result]) -> None:
    for r in results:
        assert r.honest_stake_lost == 0, r.strategy
        assert r.conserved, r.strategy
