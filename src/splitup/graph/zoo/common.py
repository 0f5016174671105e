"""Pieces shared by the model families: parameter initialisation and attention with a KV cache.

Decoder graphs hold their KV cache in a fixed-capacity form: per layer ``past.{i}.key`` and
``past.{i}.value`` (batch, kv_heads, capacity, head_dim), where ``capacity`` is the symbolic dim
``past`` (at most the model's context), and ``past.{i}.length`` (batch,) int64, the tokens each
sequence already holds. New keys and values are written at slots ``length + [0, seq)``; the mask
comes from the length, so slots beyond it never count. All three are state (``present.{i}.*`` replace
them after a call), so a runtime may keep the capacity equal to the length and grow it every step (the
growing form, fastest on onnxruntime's CPU provider) or allocate the whole context once and keep
every shape the same from step to step (the fixed form, for engines that compile per shape). Both run
the same graph, so a validator replays an executor's calls whichever form either of them uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from splitup.graph.builder import QuantizedParameter, Tensor, TensorContext
from splitup.graph.errors import BuilderError
from splitup.graph.quant import QuantFormat, QuantizedArray


class ParamSource:
    """Where parameter values come from: nothing (shape-only), a seeded RNG, or named arrays.

    With ``quant`` every matrix (2-D, randomly initialised in a seeded model) is stored quantised
    (round-to-nearest per block); weights given as ``QuantizedArray`` (a GGUF file's blocks) are kept as
    they are with ``quant``, and dequantised to float without it.
    """

    def __init__(
        self, seed: int | None = None, weights: Mapping[str, np.ndarray | QuantizedArray] | None = None,
        std: float = 0.02, quant: QuantFormat | None = None,
    ) -> None:
        if seed is not None and weights is not None:
            raise BuilderError("give either a seed or weights, not both")
        self.rng = np.random.default_rng(seed) if seed is not None else None
        self.weights = weights
        self.std = std
        self.quant = quant
        self.used: set[str] = set()

    def __call__(
        self, ctx: TensorContext, name: str, shape: tuple[int, ...], dtype: str, init: str = "normal"
    ) -> Tensor | QuantizedParameter:
        full = ".".join([*ctx._scope, name])
        data: np.ndarray | QuantizedArray | None = None
        if self.weights is not None:
            if full not in self.weights:
                raise BuilderError(f"weights have no entry for parameter {full!r}")
            data = self.weights[full]
            if isinstance(data, QuantizedArray) and self.quant is None:
                data = data.dequantize()
            elif not isinstance(data, QuantizedArray):
                data = np.asarray(data)
            self.used.add(full)
        elif self.rng is not None:
            if init == "ones":
                data = np.ones(shape, dtype=np.float32)
            elif init == "zeros":
                data = np.zeros(shape, dtype=np.float32)
            else:
                data = self.rng.normal(0.0, self.std, size=shape).astype(np.float32)
        if self.quant is not None and len(shape) == 2 and (init == "normal" or isinstance(data, QuantizedArray)):
            return ctx.quantized_parameter(name, shape, dtype, self.quant, data)
        if isinstance(data, QuantizedArray):
            data = data.dequantize()
        return ctx.parameter(name, shape, dtype, data)

    def check_all_used(self) -> None:
        if self.weights is not None:
            extra = sorted(set(self.weights) - self.used)
            if extra:
                raise BuilderError(f"weights not used by the graph: {extra[:5]}{' ...' if len(extra) > 5 else ''}")


def _ones_like(ctx: TensorContext, t: Tensor) -> Tensor:
    """An all-true bool tensor shaped like ``t``, made elementwise (``not (t > t)`` holds for every
    value, NaN and inf included), so plain shape inference sizes it without reading any data."""
    return ctx.op("Not", [t._binary("Greater", t, "bool")], t.shape, "bool")


def positions(ctx: TensorContext, hidden: Tensor, offset: Tensor | None) -> Tensor:
    """Positions ``offset + [0, seq)`` of shape (batch, seq), from the hidden state's shape alone."""
    ones = _ones_like(ctx, hidden[..., 0]).cast("int64")
    axis = ctx.constant(np.array(1, np.int64))
    pos = ctx.op("CumSum", [ones, axis], ones.shape, "int64") - ctx.constant(np.array(1, np.int64))
    return pos + offset if offset is not None else pos


def causal_attention(
    ctx: TensorContext,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    past_len: Tensor | None,
    n_rep: int = 1,
    additive_mask: Tensor | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """Scaled dot-product attention of q (b,h,s,d) over k, v (b,kvh,P,d).

    Causality comes from ``keep`` (bool, broadcast to the scores: see ``cache_mask``) when given, else
    from ``Trilu`` with diagonal offset ``past_len`` over a ones tensor shaped like the scores, so query
    i (absolute position past+i) sees keys 0..past+i.
    """
    if n_rep > 1:
        k = repeat_kv(k, n_rep)
        v = repeat_kv(v, n_rep)
    d = q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / float(np.sqrt(d)))
    lowest = float(np.finfo(np.float16 if scores.dtype == "float16" else np.float32).min)
    if keep is None and past_len is not None:
        # The mask is built over (seq, past+seq) only and broadcast over batch and heads; a symbolic batch
        # axis cannot be indexed away, so there it is kept (Trilu works on the last two axes of any rank).
        base = scores[0, 0] if isinstance(scores.shape[0], int) else scores[:, :1]
        ones = _ones_like(ctx, base).cast("float32")
        keep = ctx.op("Trilu", [ones, past_len], ones.shape, "float32", upper=0).cast("bool")
    if keep is not None:
        scores = keep.where(scores, lowest)
    if additive_mask is not None:
        scores = scores + additive_mask
    return scores.softmax(-1) @ v


def cache_slots(ctx: TensorContext, cache: Tensor) -> Tensor:
    """Slot numbers ``[0, capacity)`` of a KV cache (b, kvh, capacity, d), from its shape alone: shaped
    (capacity,), or (b, 1, capacity) when the batch axis is symbolic (it cannot be indexed away)."""
    static = isinstance(cache.shape[0], int)
    ones = _ones_like(ctx, cache[0, 0, :, 0] if static else cache[:, :1, :, 0]).cast("int64")
    axis = ctx.constant(np.array(0 if static else 2, np.int64))
    return ctx.op("CumSum", [ones, axis], ones.shape, "int64") - ctx.constant(np.array(1, np.int64))


def write_cache(ctx: TensorContext, cache: Tensor, new: Tensor, pos: Tensor) -> Tensor:
    """``cache`` (b, kvh, capacity, d) with ``new`` (b, kvh, s, d) written at slots ``pos`` (b, s).

    A fixed-capacity cache updated by position (``ScatterElements`` along the slot axis): the shape of
    the cache never changes, so engines that compile per shape (tinygrad, CUDA graphs) compile once.
    Slots past a sequence's length hold stale values that ``cache_mask`` hides.
    """
    ones = _ones_like(ctx, new).cast("int64")
    index = ones * pos.unsqueeze(1).unsqueeze(3)
    return ctx.op("ScatterElements", [cache, index, new], cache.shape, cache.dtype, axis=2)


def cache_mask(ctx: TensorContext, cache: Tensor, pos: Tensor) -> Tensor:
    """(b, 1, s, capacity) bool: query at position ``pos[b, i]`` sees slots ``0..pos[b, i]`` (causal, and
    nothing beyond the sequence's own length, whatever the capacity)."""
    slots = cache_slots(ctx, cache)
    return (slots <= pos.unsqueeze(2)).unsqueeze(1)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(b, kvh, P, d) -> (b, kvh*n_rep, P, d) for grouped-query attention."""
    b, kvh, p, d = x.shape
    if not isinstance(kvh, int) or not isinstance(d, int):
        raise BuilderError("repeat_kv needs static head counts")
    return x.unsqueeze(2).expand(1, 1, n_rep, 1, 1).reshape(b, kvh * n_rep, p, d)


def split_heads(x: Tensor, heads: int, head_dim: int) -> Tensor:
    """(b, s, heads*head_dim) -> (b, heads, s, head_dim)."""
    b, s, _ = x.shape
    return x.reshape(b, s, heads, head_dim).permute(0, 2, 1, 3)


def merge_heads(x: Tensor) -> Tensor:
    """(b, heads, s, head_dim) -> (b, s, heads*head_dim)."""
    b, h, s, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, s, int(h) * int(d))


class KvPast(NamedTuple):
    key: Tensor
    value: Tensor
    length: Tensor


def kv_inputs(ctx: TensorContext, layers: int, shape: tuple[int | str, ...], dtype: str, context: int) -> list[KvPast]:
    """Per layer the cache inputs ``past.{i}.key/value`` of ``shape`` (its ``past`` axis is the capacity)
    and ``past.{i}.length`` (batch,)."""
    ctx.declare_dim("past", context)
    return [KvPast(ctx.add_graph_input(f"past.{i}.key", shape, dtype), ctx.add_graph_input(f"past.{i}.value", shape, dtype),
                   ctx.add_graph_input(f"past.{i}.length", (shape[0],), "int64")) for i in range(layers)]


def kv_outputs(ctx: TensorContext, pasts: list[KvPast], presents: list[KvPast]) -> dict[str, Tensor]:
    """The ``present.{i}.*`` outputs, each declared as the state that replaces its ``past.{i}.*`` input."""
    outputs: dict[str, Tensor] = {}
    for i, (past, present) in enumerate(zip(pasts, presents, strict=True)):
        for field, before, after in zip(KvPast._fields, past, present, strict=True):
            outputs[f"present.{i}.{field}"] = after
            ctx.state[before.name] = f"present.{i}.{field}"
    return outputs


def update_cache(ctx: TensorContext, past: KvPast, k: Tensor, v: Tensor, pos: Tensor,
                 hidden: Tensor) -> tuple[KvPast, Tensor]:
    """Write this call's keys and values (b, kvh, seq, d) at positions ``pos`` (b, seq); returns the
    updated cache (length advanced by seq) and the attention mask (b, 1, seq, capacity)."""
    key = write_cache(ctx, past.key, k, pos)
    value = write_cache(ctx, past.value, v, pos)
    return KvPast(key, value, past.length + hidden.dim_size(1)), cache_mask(ctx, key, pos)
