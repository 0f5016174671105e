"""Monte-Carlo play of the game agrees with the closed forms."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from splitup.verify import econ
from splitup.verify.econ.simulate import simulate_asserter, simulate_margin, simulate_validator

ROUNDS = 200_000
GAMES = [
    econ.Game(reward=1, cost=0.8, slash=10, collusion=0.1),
    econ.Game(reward=1, cost=0.8, slash=10, collusion=0.4, validators=3, rate=0.15),
    econ.Game(reward=2, cost=1.5, slash=30, collusion=0.2, validators=2, rate=0.05, false_positive=0.05),
    econ.Game(reward=1, cost=0.5, slash=5, collusion=0.6, validators=1, rate=0.3, false_positive=0.1),
]


@pytest.mark.parametrize("game", GAMES)
def test_simulated_profits_match_formulas(game: econ.Game) -> None:
    rng = np.random.default_rng(7)
    honest = simulate_asserter(game, "honest", ROUNDS, rng)
    cheat = simulate_asserter(game, "cheat", ROUNDS, rng)
    assert honest.within(econ.honest_profit(game)), (honest, econ.honest_profit(game))
    assert cheat.within(econ.cheat_profit(game)), (cheat, econ.cheat_profit(game))
    # A wrong formula must be distinguishable: the cheat's detection term is many SEs wide.
    wrong_n = econ.cheat_profit(replace(game, validators=game.validators + 1))
    if game.collusion > 0:
        assert not cheat.within(wrong_n)


@pytest.mark.parametrize("game", GAMES)
def test_validator_simulation_matches(game: econ.Game) -> None:
    rng = np.random.default_rng(11)
    assert simulate_validator(game, "honest", ROUNDS, rng).within(econ.honest_validator_profit(game))
    assert simulate_validator(game, "lazy", ROUNDS, rng).within(econ.lazy_validator_profit(game))


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("e", [0.0, 0.05])
def test_honesty_flips_around_p_min_in_simulation(n: int, e: float) -> None:
    base = dict(reward=1.0, cost=0.8, slash=10.0, collusion=0.3, validators=n, false_positive=e)
    pm = econ.p_min(econ.Game(**base))
    rng = np.random.default_rng(3)
    for factor, honest_wins in ((0.7, False), (1.3, True)):
        g = econ.Game(**base, rate=pm * factor)
        margin = simulate_margin(g, 400_000, rng)
        assert margin.within(econ.honesty_margin(g))
        # The sign is resolved: the simulated margin is several standard errors away from zero.
        assert (margin.mean > 4 * margin.stderr) if honest_wins else (margin.mean < -4 * margin.stderr)
        assert econ.is_strict_nash(g) is honest_wins


def test_lazy_validator_loses_in_simulation() -> None:
    g = econ.Game(reward=1, cost=0.8, slash=10, trap_rate=0.12)
    lazy = simulate_validator(g, "lazy", ROUNDS, np.random.default_rng(5))
    assert lazy.mean + 4 * lazy.stderr < 0
