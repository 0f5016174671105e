"""A market of many tasks with cheating asserters and colluding validators, judged by the real rule.

Every task has a true output (a random float32 vector). Honest nodes return it with engine noise of
the size calibration measured (1e-7 relative); a *lazy* cheater returns random values of the output's
scale; a *subtle* cheater returns the true output with relative noise ``subtle_eps``. A sampled task
goes to ``game.validators`` validators, other nodes; a colluding validator vouches for anything, an
honest one re-executes (the true output plus its own engine noise) and applies ``compare_outputs``.
Any mismatch goes to arbitration, which compares the asserted output with the exact result: a
confirmed cheat forfeits R and is slashed S, a validator whose flag arbitration overturns is slashed.

The result is what issue 7 asks of the market simulation: detection rate, profits by behaviour,
slashed amounts, verification overhead and how often a client received a wrong result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from splitup.verify.compare import DEFAULT_TOLERANCE, Tolerance, compare_outputs
from splitup.verify.econ.game import Game, cheat_profit
from splitup.verify.sampling import BPS, NodeRecord, SamplingPolicy

HONEST, LAZY, SUBTLE = "honest", "lazy", "subtle"
ENGINE_NOISE = 1e-7


@dataclass(frozen=True)
class MarketConfig:
    game: Game
    nodes: int = 100
    tasks: int = 20_000
    lazy_share: float = 0.05
    subtle_share: float = 0.05
    subtle_eps: float = 0.01
    # None: every task is sampled at game.rate; otherwise the adaptive policy decides per node.
    policy: SamplingPolicy | None = None
    output_size: int = 256
    tolerance: Tolerance = DEFAULT_TOLERANCE


@dataclass
class MarketResult:
    tasks: int = 0
    sampled: int = 0
    validator_runs: int = 0
    cheats: int = 0
    cheats_caught: int = 0
    wrong_results_delivered: int = 0
    honest_slashed: int = 0
    validators_slashed: int = 0
    slashed_total: float = 0.0
    profit: dict[str, float] = field(default_factory=dict)
    tasks_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def detection_rate(self) -> float:
        return self.cheats_caught / self.cheats if self.cheats else float("nan")

    @property
    def overhead(self) -> float:
        """Validator re-executions per task: total compute with PoSP / unverified compute, minus 1."""
        return self.validator_runs / self.tasks

    @property
    def wrong_result_rate(self) -> float:
        return self.wrong_results_delivered / self.tasks

    def profit_per_task(self, kind: str) -> float:
        n = self.tasks_by_kind.get(kind, 0)
        return self.profit.get(kind, 0.0) / n if n else float("nan")


def _assign_kinds(cfg: MarketConfig, rng: np.random.Generator) -> np.ndarray:
    n_lazy = round(cfg.nodes * cfg.lazy_share)
    n_subtle = round(cfg.nodes * cfg.subtle_share)
    kinds = np.array([LAZY] * n_lazy + [SUBTLE] * n_subtle + [HONEST] * (cfg.nodes - n_lazy - n_subtle))
    rng.shuffle(kinds)
    return kinds


def _asserted(kind: str, truth: np.ndarray, cfg: MarketConfig, rng: np.random.Generator) -> np.ndarray:
    if kind == LAZY:
        return (float(np.std(truth)) * rng.standard_normal(truth.shape)).astype(np.float32)
    eps = cfg.subtle_eps if kind == SUBTLE else ENGINE_NOISE
    return (truth * (1 + eps * rng.standard_normal(truth.shape))).astype(np.float32)


def simulate_market(cfg: MarketConfig, rng: np.random.Generator) -> MarketResult:
    g = cfg.game
    if cfg.nodes < g.validators + 1:
        raise ValueError("need more nodes than validators per task")
    kinds = _assign_kinds(cfg, rng)
    # Collusion is a property of the validator: exactly round(r * nodes) of them vouch for anything.
    colluding = np.zeros(cfg.nodes, dtype=bool)
    colluding[rng.permutation(cfg.nodes)[: round(g.collusion * cfg.nodes)]] = True
    honest_tasks = np.zeros(cfg.nodes, dtype=np.int64)
    since_failure = np.full(cfg.nodes, -1, dtype=np.int64)  # -1: never failed
    res = MarketResult()
    for kind in (HONEST, LAZY, SUBTLE):
        res.profit[kind] = 0.0
        res.tasks_by_kind[kind] = 0
    rate_fixed = round(g.rate * BPS)
    for _ in range(cfg.tasks):
        node = int(rng.integers(cfg.nodes))
        kind = str(kinds[node])
        truth = rng.standard_normal(cfg.output_size).astype(np.float32)
        out = {"y": _asserted(kind, truth, cfg, rng)}
        cheat = kind != HONEST
        res.tasks += 1
        res.tasks_by_kind[kind] += 1
        res.cheats += cheat
        rate = rate_fixed if cfg.policy is None else cfg.policy.rate_bps(
            NodeRecord(int(honest_tasks[node]), None if since_failure[node] < 0 else int(since_failure[node])))
        profit = g.reward - (0.0 if cheat else g.cost)
        if int(rng.integers(BPS)) < rate:
            res.sampled += 1
            others = np.delete(np.arange(cfg.nodes), node)
            validators = rng.choice(others, size=g.validators, replace=False)
            flagged = []
            for v in validators:
                if colluding[v]:
                    continue
                res.validator_runs += 1
                mine = {"y": (truth * (1 + ENGINE_NOISE * rng.standard_normal(truth.shape))).astype(np.float32)}
                if not compare_outputs(out, mine, cfg.tolerance).match:
                    flagged.append(int(v))
            if flagged:
                # Arbitration: the exact result is the final word.
                guilty = not compare_outputs(out, {"y": truth}, cfg.tolerance).match
                if guilty:
                    profit = -g.slash if cheat else -g.slash + g.reward - g.cost
                    res.slashed_total += g.slash
                    if cheat:
                        res.cheats_caught += 1
                    else:
                        res.honest_slashed += 1
                    since_failure[node] = 0
                else:
                    res.validators_slashed += len(flagged)
                    res.slashed_total += g.v_slash * len(flagged)
            elif cheat and not compare_outputs(out, {"y": truth}, cfg.tolerance).match:
                res.wrong_results_delivered += 1
        elif cheat and not compare_outputs(out, {"y": truth}, cfg.tolerance).match:
            res.wrong_results_delivered += 1
        res.profit[kind] += profit
        if profit >= 0:
            # The program cannot tell an unsampled cheat from honest work: both extend the record.
            honest_tasks[node] += 1
            if since_failure[node] >= 0:
                since_failure[node] += 1
    return res


def cheater_profit_curve(game: Game, rates: list[float], rng: np.random.Generator, *, tasks: int = 20_000,
                         nodes: int = 100) -> list[tuple[float, float, float]]:
    """(p, simulated lazy-cheater profit per task, formula) for each sampling rate."""
    rows = []
    for p in rates:
        g = replace(game, rate=p)
        res = simulate_market(MarketConfig(g, nodes=nodes, tasks=tasks, lazy_share=0.1, subtle_share=0.0), rng)
        rows.append((p, res.profit_per_task(LAZY), cheat_profit(g)))
    return rows
