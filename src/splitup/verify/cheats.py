"""Dishonest strategies, for tests and the demo: what a cheating executor returns instead of its outputs,
and how a validator can shirk. Honest is the default everywhere; these exist to prove they are caught.

A cheat sees one call's feeds and true boundary outputs and returns what the node reports (and
forwards): the transcript records the cheated outputs, as a real cheater's would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum

import numpy as np

#: (call index, feeds, true boundary outputs) -> the outputs the node reports
Cheat = Callable[[int, Mapping[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]]


def perturb(relative: float = 0.01, seed: int = 0) -> Cheat:
    """Noise of ``relative`` x the output's RMS: a cheaper kernel, lower precision, a shortcut."""
    rng = np.random.default_rng(seed)

    def cheat(step: int, feeds: Mapping[str, np.ndarray], outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        noisy = {}
        for k, v in outs.items():
            if v.dtype.kind != "f" or not v.size:
                noisy[k] = v
                continue
            rms = float(np.sqrt(np.mean(np.square(v, dtype=np.float64))))
            noisy[k] = (v + rng.standard_normal(v.shape) * relative * rms).astype(v.dtype)
        return noisy

    return cheat


def zeros() -> Cheat:
    """Return zeros of the right shape: no work at all."""
    return lambda step, feeds, outs: {k: np.zeros_like(v) for k, v in outs.items()}


def skip_layers() -> Cheat:
    """Skip the task's layers: pass an input of the same shape and dtype straight through (the residual
    stream unchanged); an output with no such input repeats the previous call's value (stale)."""
    last: dict[str, np.ndarray] = {}

    def cheat(step: int, feeds: Mapping[str, np.ndarray], outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        faked = {}
        for k, v in outs.items():
            same = [x for x in feeds.values() if x.shape == v.shape and x.dtype == v.dtype]
            if same:
                faked[k] = same[0].copy()
            elif k in last and last[k].shape[:-2] == v.shape[:-2]:
                prev = last[k]
                faked[k] = np.resize(prev, v.shape).astype(v.dtype)
            else:
                faked[k] = np.zeros_like(v)
        last.update(outs)
        return faked

    return cheat


class Behaviour(Enum):
    """How a validator answers."""

    HONEST = "honest"  # re-executes and applies the tolerance rule
    LAZY = "lazy"  # says "agree" without re-executing (the verifier's dilemma)
    LIAR = "liar"  # says "disagree" whatever it sees (griefing an honest node)
