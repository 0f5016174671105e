"""The economics of Proof of Sampling, apart from the protocol roles: the game and its closed forms
(``game``, re-exported here), Monte-Carlo simulations of it (``simulate``) and of a whole market through
the real comparison rule (``market_sim``). ``splitup econ`` prints them; docs/posp.md derives them."""

from splitup.verify.econ.game import (
    DEFAULT_RATE,
    DEFAULT_TRAP_RATE,
    Game,
    cheat_profit,
    detection_probability,
    deterrence,
    honest_profit,
    honest_validator_profit,
    honesty_margin,
    is_strict_nash,
    lazy_validator_loses,
    lazy_validator_profit,
    p_min,
    summary,
    trap_rate_min,
    verification_overhead,
)

__all__ = [
    "DEFAULT_RATE",
    "DEFAULT_TRAP_RATE",
    "Game",
    "cheat_profit",
    "detection_probability",
    "deterrence",
    "honest_profit",
    "honest_validator_profit",
    "honesty_margin",
    "is_strict_nash",
    "lazy_validator_loses",
    "lazy_validator_profit",
    "p_min",
    "summary",
    "trap_rate_min",
    "verification_overhead",
]
