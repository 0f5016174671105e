"""The closed forms of the PoSP game (docs/posp.md)."""

from __future__ import annotations

import math

import pytest

from splitup.verify import econ
from splitup.verify.errors import BadGameParameters


def test_issue_example_one_validator() -> None:
    g = econ.Game(reward=1, cost=0.8, slash=10, collusion=0.1)
    assert econ.p_min(g) == pytest.approx(0.8 / (0.9 * 11))
    assert econ.p_min(g) == pytest.approx(0.0808, abs=1e-4)
    # At the default 8% these stakes are just short of deterrence.
    assert not econ.is_strict_nash(g)
    assert econ.is_strict_nash(econ.Game(reward=1, cost=0.8, slash=10, collusion=0.1, rate=0.082))


def test_profits_match_hand_computation() -> None:
    g = econ.Game(reward=2, cost=1, slash=20, collusion=0.2, validators=3, rate=0.1, false_positive=0.01)
    assert econ.honest_profit(g) == pytest.approx(2 - 1 - 0.1 * 0.01 * 20)
    assert econ.detection_probability(g) == pytest.approx(0.1 * (1 - 0.2**3))
    assert econ.cheat_profit(g) == pytest.approx(2 - 0.1 * (1 - 0.008) * 22)
    assert econ.honesty_margin(g) == pytest.approx(0.1 * ((1 - 0.008) * 22 - 0.01 * 20) - 1)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("e", [0.0, 0.02])
def test_margin_is_zero_exactly_at_p_min(n: int, e: float) -> None:
    base = dict(reward=1.0, cost=0.8, slash=10.0, collusion=0.3, validators=n, false_positive=e)
    pm = econ.p_min(econ.Game(**base))
    assert econ.honesty_margin(econ.Game(**base, rate=pm)) == pytest.approx(0, abs=1e-12)
    assert econ.is_strict_nash(econ.Game(**base, rate=pm * 1.001))
    assert not econ.is_strict_nash(econ.Game(**base, rate=pm * 0.999))


def test_more_validators_lower_p_min_and_collusion_raises_it() -> None:
    pm = [econ.p_min(econ.Game(reward=1, cost=0.8, slash=10, collusion=0.5, validators=n)) for n in (1, 2, 4)]
    assert pm[0] > pm[1] > pm[2]
    assert pm[2] == pytest.approx(0.8 / ((1 - 0.5**4) * 11))
    no_collusion = econ.p_min(econ.Game(reward=1, cost=0.8, slash=10))
    assert no_collusion == pytest.approx(0.8 / 11) and no_collusion < pm[0]


def test_false_positives_raise_p_min_and_can_make_it_unreachable() -> None:
    clean = econ.p_min(econ.Game(reward=1, cost=0.8, slash=10))
    noisy = econ.p_min(econ.Game(reward=1, cost=0.8, slash=10, false_positive=0.05))
    assert noisy == pytest.approx(0.8 / (11 - 0.5)) and noisy > clean
    hopeless = econ.Game(reward=1, cost=0.8, slash=10, collusion=0.9, false_positive=0.2)
    assert econ.deterrence(hopeless) < 0 and math.isinf(econ.p_min(hopeless))
    assert econ.summary(hopeless)["p_min"] is None


def test_lazy_validator_loses_money_above_trap_rate_min() -> None:
    g = econ.Game(reward=1, cost=0.8, slash=10)
    t_min = econ.trap_rate_min(g)
    assert t_min == pytest.approx(1 / 11)
    above = econ.Game(reward=1, cost=0.8, slash=10, trap_rate=t_min * 1.01)
    below = econ.Game(reward=1, cost=0.8, slash=10, trap_rate=t_min * 0.99)
    assert econ.lazy_validator_profit(above) < 0 < econ.honest_validator_profit(above)
    assert econ.lazy_validator_loses(above)
    assert not econ.lazy_validator_loses(below) and econ.lazy_validator_profit(below) > 0


def test_expensive_validation_needs_traps_beyond_break_even() -> None:
    # A validator that pays more than it earns is not worse off lazy unless t (V + Sv) > Cv.
    g = econ.Game(reward=1, cost=0.8, slash=10, validator_reward=1, validator_cost=3, trap_rate=0.2)
    assert econ.trap_rate_min(g) == pytest.approx(3 / 11)
    assert not econ.lazy_validator_loses(g)


def test_overhead_counts_every_validator() -> None:
    g = econ.Game(reward=1, cost=0.8, slash=10, validators=2, rate=0.08)
    assert econ.verification_overhead(g) == pytest.approx(0.16)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("cost", -0.1, "cost"),
        ("reward", -1, "reward"),
        ("slash", 0, "slash"),
        ("collusion", 1.0, "collusion"),
        ("collusion", -0.1, "collusion"),
        ("validators", 0, "validators"),
        ("validators", 1.5, "validators"),
        ("rate", 1.5, "rate"),
        ("false_positive", 1.0, "false-positive"),
        ("trap_rate", -0.5, "trap rate"),
        ("cost", float("nan"), "finite"),
        ("slash", float("inf"), "finite"),
        ("validator_slash", 0.0, "validator slash"),
    ],
)
def test_bad_parameters_are_refused(field: str, value: float, words: str) -> None:
    params: dict = dict(reward=1, cost=0.8, slash=10)
    params[field] = value
    with pytest.raises(BadGameParameters, match=words):
        econ.Game(**params)
