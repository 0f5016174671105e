"""Token choice from logits and the generation loop, shared by distributed and single-process runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def pick_token(logits: np.ndarray, *, temperature: float = 0.0, top_k: int | None = None,
               rng: np.random.Generator | None = None) -> int:
    """Greedy for ``temperature == 0``; otherwise a sample from the softmax over the ``top_k`` best."""
    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(row))
    if rng is None:
        raise ValueError("sampling needs a random generator (seeded for reproducible output)")
    if top_k is not None and 0 < top_k < row.size:
        # Ties are broken by index so that the kept set does not depend on the sort's stability.
        keep = np.lexsort((np.arange(row.size), -row))[:top_k]
    else:
        keep = np.arange(row.size)
    z = row[keep] / temperature
    p = np.exp(z - z.max())
    return int(keep[rng.choice(keep.size, p=p / p.sum())])


def generate_tokens(step: Callable[[np.ndarray], np.ndarray], prompt: list[int], max_new_tokens: int, *,
                    temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
                    eos_id: int | None = None, on_token: Callable[[int], None] | None = None) -> list[int]:
    """Feed the prompt, then one token at a time; ``step(ids (1, n))`` returns logits whose position
    ``[0, -1]`` is the next-token distribution (``(1, n, vocab)`` or just the last row, ``(1, 1, vocab)``)."""
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    rng = np.random.default_rng(seed) if temperature > 0 else None
    out: list[int] = []
    ids = np.asarray([prompt], dtype=np.int64)
    for _ in range(max_new_tokens):
        logits = step(ids)
        token = pick_token(logits[0, -1], temperature=temperature, top_k=top_k, rng=rng)
        out.append(token)
        if on_token is not None:
            on_token(token)
        if eos_id is not None and token == eos_id:
            break
        ids = np.asarray([[token]], dtype=np.int64)
    return out
