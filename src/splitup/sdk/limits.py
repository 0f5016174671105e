"""A generation request checked against the model's declared limits before any job is posted.

The limits come from the plan the model was published with: the context is the maximum of the KV
cache's axis (every position indexes the model's position table of that size), the vocabulary is the
last axis of the logits. A request beyond them would be escrowed, accepted, and then fail inside an
engine on some node; refusing it here costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from splitup.partition.task import SEQ_DIM, Plan
from splitup.sdk.errors import RequestError

MAX_SEED = 2**63 - 1


def context_length(plan: Plan) -> int | None:
    """Tokens a generation may hold in all (prompt + completion); None for a model without a KV cache."""
    most: int | None = None
    for task in plan.tasks:
        specs = {s.name: s for s in task.inputs}
        for name in task.state:
            for d in specs[name].shape if name in specs else ():
                if isinstance(d, str) and d != SEQ_DIM and d in task.dim_max:
                    most = task.dim_max[d] if most is None else min(most, task.dim_max[d])
    return most


def vocab_size(plan: Plan, logits: str = "logits") -> int | None:
    spec = next((o for o in plan.outputs if o.name == logits), None)
    return int(spec.max_shape[-1]) if spec is not None and spec.max_shape else None


def check_generation(plan: Plan, prompt_ids: Sequence[int], max_tokens: Any, temperature: Any = 0.0,
                     top_k: Any = None, seed: Any = None) -> None:
    """Raise :class:`RequestError` naming the field and the limit a generation request breaks."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(f"max_tokens must be an integer of at least 1, not {max_tokens!r}", "max_tokens")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or not 0 <= temperature <= 2:
        raise RequestError(f"temperature must be a number in [0, 2], not {temperature!r}", "temperature")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RequestError(f"top_k must be a positive integer, not {top_k!r}", "top_k")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise RequestError(f"seed must be an integer in [0, 2^63), not {seed!r}", "seed")
    if not prompt_ids:
        raise RequestError("the prompt is empty", "prompt")
    vocab = vocab_size(plan)
    if vocab is not None:
        bad = [t for t in prompt_ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token id {bad[0]!r} is outside the model's vocabulary of {vocab}", "prompt")
    ctx = context_length(plan)
    if ctx is not None and len(prompt_ids) + max_tokens > ctx:
        # OpenAI's wording and code, so clients that recognise it (and people) know what to shorten.
        raise RequestError(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, {max_tokens} for the "
            "completion). Please reduce the prompt or max_tokens.", "messages", "context_length_exceeded")
