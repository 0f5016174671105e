"""The canonical token choice: which token a row of logits stands for, the same on every honest engine.

Engines differ in the last bits of the logits, so plain ``argmax`` lets two honest engines emit
different tokens at a near-tie, and the comparison rule then has to excuse near-ties, which leaves a
cheater room to flip the token the user reads. Instead the token is a deterministic function of the
logits that the validator can check against its own logits with a slack of the *measured* engine
difference (docs/posp.md, "Canonical token choice"):

* **greedy** (``temperature == 0``): among the tokens whose logit is within ``window`` x ``scale`` of
  the maximum, the lowest token id wins (``scale = max(1, max - min)`` over the finite logits: a
  common shift of all logits, which changes no probability, changes no choice);
* **sampled**: the candidates are cut by ``top_k`` then ``top_p`` (ranked by logit, ties to the lower
  id), weighted ``exp(logit / temperature)``, laid out in token-id order, and the token is the one
  whose cumulative interval holds ``u = uniform(seed, position, row)``: a hash of the job's seed and
  the token's position, so the draw is reproducible from the transcript alone, with no generator state.

``admissible`` is the validator's side: could ``token`` be the choice of an engine whose logits,
each taken relative to the row's maximum, differ from ``reference``'s by at most ``slack`` x scale?
It over-approximates that set (bounds taken independently), so an honest engine within the slack is
never refused; a cheat is accepted only when some logit lies within about one slack of a decision
boundary.

This module sits below every layer (client, models, verify import it) because the rule is shared, as
the commitment format is.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np

#: Relative width of the greedy tie window: narrow, of the order of the largest honest float32 logit
#: difference measured (bench/redteam.py), so that what honest engines cannot order goes to the lowest id.
GREEDY_WINDOW = 2e-6
_DOMAIN = b"SPLITUP-SAMPLE-v1\x00"


class DecodingError(ValueError):
    """Sampling parameters outside what the rule defines."""


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen: part of the job, recorded with the transcript of the task emitting logits."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no cut
    top_p: float = 1.0
    seed: int = 0
    window: float = GREEDY_WINDOW

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise DecodingError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise DecodingError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise DecodingError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise DecodingError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")
        if not (math.isfinite(self.window) and 0 <= self.window < 1):
            raise DecodingError(f"window must be in [0, 1), got {self.window!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_json(self) -> dict[str, float | int]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "seed": self.seed,
                "window": self.window}

    @staticmethod
    def from_json(d: dict) -> Decoding:
        try:
            return Decoding(float(d["temperature"]), int(d["top_k"]), float(d["top_p"]), int(d["seed"]),
                            float(d.get("window", GREEDY_WINDOW)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodingError(f"malformed decoding parameters: {exc}") from None


GREEDY = Decoding()


def uniform(seed: int, position: int, row: int = 0) -> float:
    """The sampler's draw for the token at ``position`` (tokens before it in the sequence) of batch ``row``:
    the first 53 bits of sha256(domain || seed || position || row), in [0, 1)."""
    digest = hashlib.sha256(_DOMAIN + struct.pack("<QQI", seed, position, row)).digest()
    return (int.from_bytes(digest[:8], "little") >> 11) / float(1 << 53)


def _clean(logits: np.ndarray) -> np.ndarray:
    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    if not row.size:
        raise DecodingError("empty logits")
    # NaN never wins: it cannot be ordered, so it must not be able to hide a choice.
    return np.where(np.isnan(row), -np.inf, row)


def scale(row: np.ndarray) -> float:
    """The unit that windows and slacks are relative to: ``max(1, max - min)`` of the finite logits."""
    finite = row[np.isfinite(row)]
    return max(1.0, float(finite.max() - finite.min())) if finite.size else 1.0


def choose(logits: np.ndarray, decoding: Decoding = GREEDY, position: int = 0, row: int = 0) -> int:
    """The canonical token of one row of logits (``position``/``row`` matter only when sampling)."""
    x = _clean(logits)
    top = float(x.max())
    if not np.isfinite(top):
        return int(np.argmax(x)) if top == np.inf else 0
    if decoding.greedy:
        return int(np.flatnonzero(x >= top - decoding.window * scale(x))[0])
    keep = _cut(x, decoding)
    w = np.where(keep, np.exp((x - top) / decoding.temperature), 0.0)
    cum = np.cumsum(w)
    i = int(np.searchsorted(cum, uniform(decoding.seed, position, row) * cum[-1], side="right"))
    # u < 1, but u * total may round up to the total: then the last candidate holds it.
    return min(i, int(np.flatnonzero(w)[-1]))


def _ranked(x: np.ndarray) -> np.ndarray:
    # Rank by logit, ties to the lower id, so the cut does not depend on a sort's stability.
    return np.lexsort((np.arange(x.size), -x))


def _cut(x: np.ndarray, d: Decoding) -> np.ndarray:
    """The candidates after top-k then top-p, as a mask over token ids."""
    order = _ranked(x)
    if d.top_k and d.top_k < x.size:
        order = order[: d.top_k]
    if d.top_p < 1:
        z = np.exp((x[order] - x[order[0]]) / d.temperature)
        ahead = np.concatenate(([0.0], np.cumsum(z)[:-1])) / z.sum()
        order = order[ahead < d.top_p]
    keep = np.zeros(x.size, dtype=bool)
    keep[order] = True
    return keep


def admissible(reference: np.ndarray, token: int, slack: float, decoding: Decoding = GREEDY,
               position: int = 0, row: int = 0) -> bool:
    """Whether ``token`` is the canonical choice of some logits within ``slack x scale`` of ``reference``
    element by element (the validator's own logits; ``slack`` the honest engine difference, relative)."""
    v = _clean(reference)
    if not 0 <= token < v.size:
        return False
    top = float(v.max())
    if not np.isfinite(top):
        return token == choose(v, decoding, position, row)
    s = scale(v)
    d = slack * s
    if decoding.greedy:
        # Logits relative to the maximum move by at most d, the other engine's scale by 2 d.
        edge = top - decoding.window * s
        margin = d * (1 + 2 * decoding.window)
        possible = v >= edge - margin
        surely = v >= edge + margin
        return bool(possible[token]) and not surely[:token].any()
    with np.errstate(invalid="ignore", divide="ignore"):
        may, must = _cut_bounds(v, decoding, d)
    if not may[token]:
        return False
    t = decoding.temperature
    hi = np.exp((v - top + d) / t)
    lo = np.exp((v - top - d) / t)
    ids = np.arange(v.size)
    # The token's interval [before, before + own) of the total, at its lowest start and highest end.
    before_min = lo[must & (ids < token)].sum()
    rest_max = hi[may & (ids >= token)].sum()
    upto_max = hi[may & (ids <= token)].sum()
    after_min = lo[must & (ids > token)].sum()
    low = before_min / (before_min + rest_max)
    high = upto_max / (upto_max + after_min)
    return bool(low <= uniform(decoding.seed, position, row) < high)


def _cut_bounds(v: np.ndarray, d: Decoding, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(may be a candidate, surely a candidate) for logits within ``delta`` of ``v``."""
    n = v.size
    order = _ranked(v)
    sorted_v = v[order]
    # For each token: how many others are surely ahead of it (> v + 2 delta) / possibly ahead (>= v - 2 delta).
    surely_ahead = np.searchsorted(-sorted_v, -(v + 2 * delta), side="left")
    maybe_ahead = np.searchsorted(-sorted_v, -(v - 2 * delta), side="right") - 1
    may = np.ones(n, dtype=bool)
    must = np.ones(n, dtype=bool)
    if d.top_k and d.top_k < n:
        may &= surely_ahead < d.top_k
        must &= maybe_ahead < d.top_k
    if d.top_p < 1:
        top = float(sorted_v[0])
        hi = np.exp((sorted_v - top + delta) / d.temperature)
        lo = np.exp((sorted_v - top - delta) / d.temperature)
        cum_lo = np.concatenate(([0.0], np.cumsum(lo)))
        cum_hi = np.concatenate(([0.0], np.cumsum(hi)))
        total_hi = cum_hi[-1]
        # Mass surely ahead, at its smallest, over everything else at its largest: a lower bound.
        a_lo = cum_lo[surely_ahead]
        ahead_min = a_lo / (a_lo + (total_hi - cum_hi[surely_ahead]))
        may &= ahead_min < d.top_p
        a_hi = cum_hi[np.maximum(maybe_ahead, 0) + 1] - np.exp((v - top + delta) / d.temperature)
        a_hi = np.maximum(a_hi, 0.0) * (maybe_ahead > 0)
        own_lo = np.exp((v - top - delta) / d.temperature)
        ahead_max = a_hi / (a_hi + own_lo)
        must &= ahead_max < d.top_p
    return may, must
