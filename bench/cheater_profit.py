"""Cheater and honest profit per task against the sampling rate p, from the market simulation.

    .venv/bin/python bench/cheater_profit.py [--tasks 50000] [--seed 0] [--out docs/cheater_profit.png]

For each p from 0 to 30 % one market (``splitup.verify.econ.market_sim.simulate_market``: 100 nodes, 10 lazy
cheaters returning random outputs, 10 subtle ones adding 1 % noise, the rest honest; one validator per
drawn task, a share r of validators colluding) plays ``--tasks`` tasks through the real comparison rule
and arbitration. The plot shows the simulated profit per task of each behaviour, the closed forms of
``splitup.verify.econ`` (cheat: R - p(1-r)(R+S), honest: R - C) and p_min, where cheating stops paying.
Needs matplotlib (``pip install 'splitup[chart]'``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from splitup.verify import econ
from splitup.verify.econ.market_sim import HONEST, LAZY, SUBTLE, MarketConfig, simulate_market

# The example stakes: p_min = C / ((1-r)(R+S)) = 0.8 / 9.9 = 8.08 %.
GAME = econ.Game(reward=1.0, cost=0.8, slash=10.0, collusion=0.1, validators=1)
DEFAULT_RATE = 0.08  # the chain's base rate (docs/posp.md)


def curve(game: econ.Game, rates: np.ndarray, tasks: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for p in rates:
        g = replace(game, rate=float(p))
        res = simulate_market(MarketConfig(g, tasks=tasks, lazy_share=0.1, subtle_share=0.1), rng)
        rows.append({"p": float(p), LAZY: res.profit_per_task(LAZY), SUBTLE: res.profit_per_task(SUBTLE),
                     HONEST: res.profit_per_task(HONEST), "formula_cheat": econ.cheat_profit(g),
                     "formula_honest": econ.honest_profit(g), "detection": res.detection_rate})
    return rows


def plot(rows: list[dict[str, float]], game: econ.Game, tasks: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.array([r["p"] for r in rows]) * 100
    p_min = econ.p_min(game) * 100
    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=110)
    ax.axhline(0, color="black", lw=0.8)
    ax.axvspan(0, p_min, color="#d62728", alpha=0.07, lw=0)
    ax.text(p_min / 2, -2.1, "cheating beats\nhonesty", ha="center", color="#a01010", fontsize=9)
    ax.plot(p, [r["formula_cheat"] for r in rows], "--", color="gray", lw=1.2, label="cheat, formula R - p(1-r)(R+S)")
    ax.plot(p, [r[LAZY] for r in rows], "o-", color="#d62728", ms=4, lw=1.2, label="lazy cheater (random outputs)")
    ax.plot(p, [r[SUBTLE] for r in rows], "s-", color="#ff7f0e", ms=3.5, lw=1.2, label="subtle cheater (1 % noise)")
    ax.plot(p, [r[HONEST] for r in rows], "^-", color="#2ca02c", ms=4, lw=1.2, label="honest node (R - C)")
    ax.axvline(p_min, color="#1f77b4", lw=1.2)
    ax.text(p_min + 0.4, 1.2, f"p_min = {p_min:.2f} %", color="#1f77b4", fontsize=9, va="top")
    ax.axvline(DEFAULT_RATE * 100, color="dimgray", lw=1.0, ls=":")
    ax.text(DEFAULT_RATE * 100 - 0.3, -1.2, "chain default 8 %", color="dimgray", fontsize=8, ha="right",
            va="center", rotation=90)
    ax.set_xlim(0, p[-1])
    ax.set_ylim(-2.3, 1.3)
    ax.set_xlabel("sampling rate p (%)")
    ax.set_ylabel("profit per task (units of the reward R)")
    ax.set_title(f"PoSP: profit per task against p (R = {game.reward:g}, C = {game.cost:g}, S = {game.slash:g}, "
                 f"r = {game.collusion:g}; {tasks:,} tasks per point)", fontsize=9.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8.5, framealpha=0.95)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=50_000, help="tasks simulated per sampling rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/cheater_profit.png"))
    a = ap.parse_args()
    rows = curve(GAME, np.linspace(0.0, 0.3, 25), a.tasks, a.seed)
    table = Table(title=f"profit per task, R={GAME.reward:g} C={GAME.cost:g} S={GAME.slash:g} r={GAME.collusion:g}, "
                        f"p_min = {econ.p_min(GAME):.2%}")
    for col in ("p", "detection", "lazy", "subtle", "honest", "formula cheat", "formula honest"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['p']:.2%}", f"{r['detection']:.1%}", f"{r[LAZY]:+.3f}", f"{r[SUBTLE]:+.3f}",
                      f"{r[HONEST]:+.3f}", f"{r['formula_cheat']:+.3f}", f"{r['formula_honest']:+.3f}")
    Console(width=120).print(table)
    plot(rows, GAME, a.tasks, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
