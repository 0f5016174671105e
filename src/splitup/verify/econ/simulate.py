"""Monte-Carlo play of the PoSP game, to check the closed forms in ``econ`` and ``sampling``.

Each function draws every random event of a round from a caller-seeded ``numpy.random.Generator`` and
returns the sample mean with its standard error, so a test can ask "within k standard errors".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from splitup.verify.econ.game import Game
from splitup.verify.sampling import BPS, SamplingPolicy


@dataclass(frozen=True)
class Estimate:
    mean: float
    stderr: float
    rounds: int

    def within(self, value: float, k: float = 4.0) -> bool:
        """|mean - value| <= k standard errors (an exact match when the outcome has no variance)."""
        return abs(self.mean - value) <= k * self.stderr + 1e-12


def _estimate(x: np.ndarray) -> Estimate:
    n = x.size
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    return Estimate(float(x.mean()), sd / math.sqrt(n), n)


def _caught(g: Game, rounds: int, rng: np.random.Generator) -> np.ndarray:
    sampled = rng.random(rounds) < g.rate
    all_collude = (rng.random((rounds, g.validators)) < g.collusion).all(axis=1)
    return sampled & ~all_collude


def asserter_profits(
    g: Game, strategy: Literal["honest", "cheat"], rounds: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-round profit of one asserter playing ``strategy``."""
    if strategy == "cheat":
        # Skipped work costs nothing; a caught cheat loses the reward and the slash.
        return np.where(_caught(g, rounds, rng), -g.slash, g.reward)
    if strategy == "honest":
        sampled = rng.random(rounds) < g.rate
        flagged = sampled & (rng.random(rounds) < g.false_positive)
        return g.reward - g.cost - np.where(flagged, g.slash, 0.0)
    raise ValueError(f"unknown asserter strategy {strategy!r}")


def simulate_asserter(
    g: Game, strategy: Literal["honest", "cheat"], rounds: int, rng: np.random.Generator
) -> Estimate:
    return _estimate(asserter_profits(g, strategy, rounds, rng))


def simulate_margin(g: Game, rounds: int, rng: np.random.Generator) -> Estimate:
    """honest - cheat per round, the two played on independent draws."""
    return _estimate(asserter_profits(g, "honest", rounds, rng) - asserter_profits(g, "cheat", rounds, rng))


def simulate_validator(
    g: Game, strategy: Literal["honest", "lazy"], rounds: int, rng: np.random.Generator
) -> Estimate:
    """Per-check profit of a validator; the program plants a wrong output with probability t."""
    trap = rng.random(rounds) < g.trap_rate
    if strategy == "honest":
        # It re-executes, so it pays Cv every time and rejects every planted output.
        profits = np.full(rounds, g.v_reward - g.v_cost)
    elif strategy == "lazy":
        profits = np.where(trap, -g.v_slash, g.v_reward)
    else:
        raise ValueError(f"unknown validator strategy {strategy!r}")
    return _estimate(profits)


# --- adaptive sampling over a population ---------------------------------------------------------------


def policy_rates(policy: SamplingPolicy, honest_tasks: np.ndarray, since_failure: np.ndarray) -> np.ndarray:
    """Vectorised ``SamplingPolicy.rate_bps``; ``since_failure`` < 0 means "never failed"."""
    shift = np.minimum(honest_tasks // policy.new_node_half_life, 63)
    extra = np.right_shift(np.int64(policy.new_node_bps - policy.base_bps), shift)
    failed = since_failure >= 0
    fshift = np.minimum(np.where(failed, since_failure, 0) // policy.failed_half_life, 63)
    fextra = np.where(failed, np.right_shift(np.int64(policy.failed_bps - policy.base_bps), fshift), 0)
    return policy.base_bps + np.maximum(extra, fextra)


@dataclass(frozen=True)
class PopulationResult:
    tasks: int
    sampled: int
    cheats: int
    cheats_caught: int
    false_flags: int
    replaced_nodes: int

    @property
    def overhead(self) -> float:
        """Share of all tasks that were re-executed."""
        return self.sampled / self.tasks


def simulate_population(
    policy: SamplingPolicy,
    rng: np.random.Generator,
    *,
    nodes: int = 1000,
    tasks_per_node: int = 2000,
    cheater_share: float = 0.02,
    cheat_prob: float = 1.0,
    false_positive: float = 0.001,
) -> PopulationResult:
    """A market that runs ``nodes`` task slots for ``tasks_per_node`` rounds under ``policy``.

    Honest nodes are flagged wrongly with rate ``false_positive`` when sampled and then carry the
    failed-verdict rate. A cheater cheats on each task with probability ``cheat_prob``; when caught it is
    slashed out and a fresh node (new, and a cheater with probability ``cheater_share``) takes its slot.
    """
    honest_tasks = np.zeros(nodes, dtype=np.int64)
    since_failure = np.full(nodes, -1, dtype=np.int64)
    cheater = rng.random(nodes) < cheater_share
    sampled_total = cheats = caught_total = false_flags = replaced = 0
    for _ in range(tasks_per_node):
        rates = policy_rates(policy, honest_tasks, since_failure)
        sampled = rng.integers(0, BPS, size=nodes) < rates
        cheating = cheater & (rng.random(nodes) < cheat_prob)
        caught = sampled & cheating
        flagged = sampled & ~cheating & (rng.random(nodes) < false_positive)
        sampled_total += int(sampled.sum())
        cheats += int(cheating.sum())
        caught_total += int(caught.sum())
        false_flags += int(flagged.sum())
        replaced += int(caught.sum())
        ok = ~caught & ~flagged
        honest_tasks = np.where(ok, honest_tasks + 1, honest_tasks)
        since_failure = np.where(flagged, 0, np.where(ok & (since_failure >= 0), since_failure + 1, since_failure))
        # A slashed cheater leaves; a newcomer takes the slot with a blank record.
        honest_tasks[caught] = 0
        since_failure[caught] = -1
        cheater[caught] = rng.random(int(caught.sum())) < cheater_share
    return PopulationResult(
        tasks=nodes * tasks_per_node,
        sampled=sampled_total,
        cheats=cheats,
        cheats_caught=caught_total,
        false_flags=false_flags,
        replaced_nodes=replaced,
    )
