"""The market simulation: cheats are caught at the sampling rate and the ledger of profits adds up."""

from __future__ import annotations

import math

import numpy as np

from splitup.verify import econ
from splitup.verify.econ.market_sim import (
    HONEST,
    LAZY,
    SUBTLE,
    MarketConfig,
    cheater_profit_curve,
    simulate_market,
)
from splitup.verify.sampling import SamplingPolicy

GAME = econ.Game(reward=1, cost=0.8, slash=10, rate=0.1)


def _se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def test_cheats_caught_at_the_sampling_rate() -> None:
    res = simulate_market(MarketConfig(GAME, tasks=12_000, lazy_share=0.1, subtle_share=0.1), np.random.default_rng(0))
    assert res.cheats > 2000
    assert abs(res.detection_rate - GAME.rate) < 4 * _se(GAME.rate, res.cheats)
    # Every uncaught cheat is a wrong result for the client; every caught one was replaced.
    assert res.wrong_results_delivered == res.cheats - res.cheats_caught
    assert res.honest_slashed == 0 and res.validators_slashed == 0
    assert res.slashed_total == res.cheats_caught * GAME.slash
    assert math.isclose(res.profit_per_task(HONEST), GAME.reward - GAME.cost)
    for kind in (LAZY, SUBTLE):
        n = res.tasks_by_kind[kind]
        sd = (GAME.reward + GAME.slash) * math.sqrt(GAME.rate * (1 - GAME.rate))
        assert abs(res.profit_per_task(kind) - econ.cheat_profit(GAME)) < 4 * sd / math.sqrt(n)
    assert abs(res.overhead - GAME.rate) < 4 * _se(GAME.rate, res.tasks)


def test_colluding_validators_let_cheats_through() -> None:
    g = econ.Game(reward=1, cost=0.8, slash=10, rate=0.2, collusion=0.99)
    res = simulate_market(MarketConfig(g, tasks=3000, nodes=100), np.random.default_rng(1))
    assert res.sampled > 400
    # 99 of 100 nodes collude; a cheat is caught only when the one honest validator is drawn.
    assert res.detection_rate < 0.02
    assert res.overhead < 0.02


def test_two_validators_beat_partial_collusion() -> None:
    g1 = econ.Game(reward=1, cost=0.8, slash=10, rate=0.2, collusion=0.5)
    g2 = econ.Game(reward=1, cost=0.8, slash=10, rate=0.2, collusion=0.5, validators=2)
    r1 = simulate_market(MarketConfig(g1, tasks=6000, lazy_share=0.2), np.random.default_rng(2))
    r2 = simulate_market(MarketConfig(g2, tasks=6000, lazy_share=0.2), np.random.default_rng(2))
    assert abs(r1.detection_rate - econ.detection_probability(g1)) < 4 * _se(0.1, r1.cheats)
    assert abs(r2.detection_rate - econ.detection_probability(g2)) < 4 * _se(0.15, r2.cheats)
    assert r2.detection_rate > r1.detection_rate


def test_perturbation_below_tolerance_is_not_a_wrong_result() -> None:
    res = simulate_market(MarketConfig(GAME, tasks=3000, lazy_share=0.0, subtle_share=0.2, subtle_eps=1e-6),
                          np.random.default_rng(3))
    assert res.cheats > 400 and res.cheats_caught == 0 and res.wrong_results_delivered == 0


def test_adaptive_policy_catches_cheaters_faster() -> None:
    fixed = simulate_market(MarketConfig(GAME, tasks=6000), np.random.default_rng(4))
    adaptive = simulate_market(MarketConfig(GAME, tasks=6000, policy=SamplingPolicy(base_bps=1000)),
                               np.random.default_rng(4))
    assert adaptive.detection_rate > fixed.detection_rate
    assert adaptive.profit_per_task(LAZY) < fixed.profit_per_task(LAZY) < 0


def test_cheater_profit_falls_through_zero_at_p_min() -> None:
    g = econ.Game(reward=1, cost=0.8, slash=10)
    pm = econ.p_min(g)
    rows = cheater_profit_curve(g, [0.3 * pm, 3 * pm], np.random.default_rng(5), tasks=4000)
    (_, low_sim, low_formula), (_, high_sim, high_formula) = rows
    assert low_sim > g.reward - g.cost and low_formula > g.reward - g.cost
    assert high_sim < 0 and high_formula < 0
