"""Token choice from logits and the generation loop, shared by distributed and single-process runs.

The choice is the canonical one of :mod:`splitup.decoding` (greedy: lowest id within a narrow window of
the maximum; sampled: a draw keyed by the seed and the token's position), so a validator can recompute
it from its own logits and every honest engine emits the same text.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from splitup.decoding import GREEDY, Decoding, DecodingError, choose

__all__ = ["Decoding", "DecodingError", "GREEDY", "decoding_for", "generate_tokens", "pick_token"]


def decoding_for(temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
                 top_p: float = 1.0) -> Decoding:
    """The job's decoding rule from the usual knobs; an unseeded sampled job gets seed 0 (reproducible)."""
    return Decoding(float(temperature), int(top_k or 0), float(top_p), int(seed or 0))


def pick_token(logits: np.ndarray, decoding: Decoding = GREEDY, position: int = 0) -> int:
    """The canonical token of the last row of ``logits`` for a sequence of ``position`` tokens so far."""
    return choose(np.asarray(logits).reshape(-1, np.asarray(logits).shape[-1])[-1], decoding, position)


def generate_tokens(step: Callable[[np.ndarray], np.ndarray], prompt: list[int], max_new_tokens: int, *,
                    decoding: Decoding | None = None, temperature: float = 0.0, top_k: int | None = None,
                    seed: int | None = None, eos_id: int | None = None,
                    on_token: Callable[[int], None] | None = None) -> list[int]:
    """Feed the prompt, then one token at a time; ``step(ids (1, n))`` returns logits whose position
    ``[0, -1]`` is the next-token distribution (``(1, n, vocab)`` or just the last row, ``(1, 1, vocab)``).
    ``decoding`` wins over the ``temperature``/``top_k``/``seed`` shorthand."""
    decoding = decoding or decoding_for(temperature, top_k, seed)
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    out: list[int] = []
    ids = np.asarray([prompt], dtype=np.int64)
    for _ in range(max_new_tokens):
        logits = step(ids)
        token = pick_token(logits[0, -1], decoding, len(prompt) + len(out))
        out.append(token)
        if on_token is not None:
            on_token(token)
        if eos_id is not None and token == eos_id:
            break
        ids = np.asarray([[token]], dtype=np.int64)
    return out
