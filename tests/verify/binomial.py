"""Exact binomial acceptance regions for tests that count on-chain draws (which cannot be seeded)."""

from __future__ import annotations

import math


def binomial_region(n: int, p: float, alpha: float) -> tuple[int, int]:
    """The smallest ``[lo, hi]`` with P(X < lo) <= alpha/2 and P(X > hi) <= alpha/2 for X ~ Bin(n, p)."""
    # in logs: math.comb(n, k) * p**k overflows a float beyond about a thousand draws
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
                    + (n - k) * math.log1p(-p)) for k in range(n + 1)]
    lo, tail = 0, 0.0
    while tail + pmf[lo] <= alpha / 2:
        tail += pmf[lo]
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf[hi] <= alpha / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi
