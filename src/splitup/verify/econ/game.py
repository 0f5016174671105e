"""The Proof-of-Sampling game: expected profits, the strict-Nash condition and the minimal sampling rate.

The model follows Zhang et al., "Proof of Sampling" (Hyperbolic, arXiv 2405.00295), per task:

* an asserter earns ``reward`` R for a task that costs it ``cost`` C to compute;
* after it commits, the task is sampled with probability ``rate`` p and handed to ``validators`` n
  validators; each one independently belongs to the asserter's colluding group with probability
  ``collusion`` r and then vouches for anything;
* a cheat is caught unless *every* sampled validator colludes, so with probability p(1 - r^n); a
  caught asserter forfeits R and is slashed ``slash`` S;
* an honest asserter is wrongly slashed S with probability ``false_positive`` e per sampled task (the
  end-to-end rate after arbitration); its reward, already earned by a correct result, stands.

Validators get ``validator_reward`` V per check at a compute cost ``validator_cost`` Cv. A lazy
validator answers "match" without re-executing; the program plants a known-wrong output into a
validator's duty with probability ``trap_rate`` t, and a validator that vouches for it forfeits V and
is slashed ``validator_slash`` Sv. docs/posp.md derives every formula below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from splitup.verify.errors import BadGameParameters

DEFAULT_RATE = 0.08
DEFAULT_TRAP_RATE = 0.10


@dataclass(frozen=True)
class Game:
    reward: float
    cost: float
    slash: float
    collusion: float = 0.0
    validators: int = 1
    rate: float = DEFAULT_RATE
    false_positive: float = 0.0
    # None: the validator is paid and charged like the asserter of the task it re-executes.
    validator_reward: float | None = None
    validator_cost: float | None = None
    validator_slash: float | None = None
    trap_rate: float = DEFAULT_TRAP_RATE

    def __post_init__(self) -> None:
        _check(self)

    @property
    def v_reward(self) -> float:
        return self.reward if self.validator_reward is None else self.validator_reward

    @property
    def v_cost(self) -> float:
        return self.cost if self.validator_cost is None else self.validator_cost

    @property
    def v_slash(self) -> float:
        return self.slash if self.validator_slash is None else self.validator_slash


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadGameParameters(f"{name} must be a finite number, got {value!r}")


def _check(g: Game) -> None:
    for name in ("reward", "cost", "slash", "collusion", "rate", "false_positive", "trap_rate"):
        _finite(name, getattr(g, name))
    for name in ("validator_reward", "validator_cost", "validator_slash"):
        if getattr(g, name) is not None:
            _finite(name, getattr(g, name))
    if g.reward < 0:
        raise BadGameParameters(f"reward must be >= 0, got {g.reward}")
    if g.cost < 0:
        raise BadGameParameters(f"cost must be >= 0, got {g.cost}")
    if g.slash <= 0:
        raise BadGameParameters(f"slash must be > 0, got {g.slash}")
    if not 0 <= g.collusion < 1:
        raise BadGameParameters(f"collusion share must be in [0, 1), got {g.collusion}")
    if isinstance(g.validators, bool) or not isinstance(g.validators, int) or g.validators < 1:
        raise BadGameParameters(f"validators must be an integer >= 1, got {g.validators!r}")
    if not 0 <= g.rate <= 1:
        raise BadGameParameters(f"sampling rate must be in [0, 1], got {g.rate}")
    if not 0 <= g.false_positive < 1:
        raise BadGameParameters(f"false-positive rate must be in [0, 1), got {g.false_positive}")
    if not 0 <= g.trap_rate <= 1:
        raise BadGameParameters(f"trap rate must be in [0, 1], got {g.trap_rate}")
    if g.v_reward < 0:
        raise BadGameParameters(f"validator reward must be >= 0, got {g.v_reward}")
    if g.v_cost < 0:
        raise BadGameParameters(f"validator cost must be >= 0, got {g.v_cost}")
    if g.v_slash <= 0:
        raise BadGameParameters(f"validator slash must be > 0, got {g.v_slash}")


def detection_probability(g: Game) -> float:
    """P(a cheat is caught) = p(1 - r^n): sampled, and at least one sampled validator is honest."""
    return g.rate * (1.0 - g.collusion**g.validators)


def honest_profit(g: Game) -> float:
    """E[profit] of an honest asserter: R - C - p e S."""
    return g.reward - g.cost - g.rate * g.false_positive * g.slash


def cheat_profit(g: Game) -> float:
    """E[profit] of an asserter that skips the work: R - p(1 - r^n)(R + S)."""
    return g.reward - detection_probability(g) * (g.reward + g.slash)


def honesty_margin(g: Game) -> float:
    """honest - cheat = p[(1 - r^n)(R + S) - e S] - C; honesty is strictly better iff this is > 0."""
    return honest_profit(g) - cheat_profit(g)


def is_strict_nash(g: Game) -> bool:
    """Whether honesty is a strict best response for asserters (and so a strict Nash equilibrium)."""
    return honesty_margin(g) > 0


def deterrence(g: Game) -> float:
    """The per-unit-p penalty gap (1 - r^n)(R + S) - e S that sampling must turn into more than C."""
    return (1.0 - g.collusion**g.validators) * (g.reward + g.slash) - g.false_positive * g.slash


def p_min(g: Game) -> float:
    """The rate at which honest and cheating profits are equal: C / [(1 - r^n)(R + S) - e S].

    Honesty is a strict equilibrium for every p above it. ``math.inf`` when no rate deters cheating
    (false positives eat the whole penalty); a value above 1 means sampling alone cannot do it either.
    """
    d = deterrence(g)
    if d <= 0:
        return math.inf
    return g.cost / d


# --- validators -------------------------------------------------------------------------------------


def honest_validator_profit(g: Game) -> float:
    """E[profit] per check of a validator that re-executes: V - Cv (it rejects planted outputs)."""
    return g.v_reward - g.v_cost


def lazy_validator_profit(g: Game) -> float:
    """E[profit] per check of a validator that always says "match": (1 - t) V - t Sv."""
    return (1.0 - g.trap_rate) * g.v_reward - g.trap_rate * g.v_slash


def trap_rate_min(g: Game) -> float:
    """The smallest trap rate at which a lazy validator loses money *and* earns less than an honest one.

    Losing money: (1 - t)V - t Sv < 0  <=>  t > V / (V + Sv).
    Worse than honest: V - Cv > (1 - t)V - t Sv  <=>  t > Cv / (V + Sv); implied by the first when V >= Cv.
    """
    return max(g.v_reward, g.v_cost) / (g.v_reward + g.v_slash)


def lazy_validator_loses(g: Game) -> bool:
    return lazy_validator_profit(g) < 0 and lazy_validator_profit(g) < honest_validator_profit(g)


def verification_overhead(g: Game) -> float:
    """Expected extra compute per task as a fraction of the task itself: p n Cv / C."""
    if g.cost == 0:
        return 0.0
    return g.rate * g.validators * g.v_cost / g.cost


def summary(g: Game) -> dict[str, object]:
    """Everything ``splitup econ --json`` prints; infinities become None so the output is valid JSON."""
    pm = p_min(g)
    out: dict[str, object] = {
        "p_min": None if math.isinf(pm) else pm,
        "p_min_feasible": pm <= 1.0,
        "honest_profit": honest_profit(g),
        "cheat_profit": cheat_profit(g),
        "honesty_margin": honesty_margin(g),
        "nash": is_strict_nash(g),
        "detection_probability": detection_probability(g),
        "honest_validator_profit": honest_validator_profit(g),
        "lazy_validator_profit": lazy_validator_profit(g),
        "lazy_validator_loses": lazy_validator_loses(g),
        "trap_rate_min": trap_rate_min(g),
        "verification_overhead": verification_overhead(g),
    }
    params = asdict(g)
    params.update(validator_reward=g.v_reward, validator_cost=g.v_cost, validator_slash=g.v_slash)
    out["params"] = params
    return out
