"""Pieces shared by the model families: parameter initialisation and attention with a KV cache."""

from __future__ import annotations

from collections.abc import Mapping

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
) -> Tensor:
    """Scaled dot-product attention of q (b,h,s,d) over k, v (b,kvh,P,d).

    Causality comes from ``Trilu`` with diagonal offset ``past_len`` over a ones tensor shaped like
    the scores, so query i (absolute position past+i) sees keys 0..past+i.
    """
    if n_rep > 1:
        k = repeat_kv(k, n_rep)
        v = repeat_kv(v, n_rep)
    d = q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / float(np.sqrt(d)))
    if past_len is not None:
        # The mask is built over (seq, past+seq) only and broadcast over batch and heads.
        ones = _ones_like(ctx, scores[0, 0]).cast("float32")
        keep = ctx.op("Trilu", [ones, past_len], ones.shape, "float32", upper=0).cast("bool")
        scores = keep.where(scores, float(np.finfo(np.float16 if scores.dtype == "float16" else np.float32).min))
    if additive_mask is not None:
        scores = scores + additive_mask
    return scores.softmax(-1) @ v


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
