"""LLaMA-family decoders (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from splitup.graph.builder import Tensor, TensorContext
from splitup.graph.zoo.common import (
    KvPast,
    ParamSource,
    causal_attention,
    kv_inputs,
    kv_outputs,
    merge_heads,
    positions,
    split_heads,
    update_cache,
)


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden: int = 4096
    intermediate: int = 11008
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    context: int = 4096
    max_seq: int = 512
    # Sequences per call. Above 1 the batch axis is symbolic with this maximum, so a node can run any
    # number of sessions' steps (of equal cache length) in one call; 1 keeps the static form.
    batch: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def rope_tables(cfg: LlamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape (context, head_dim), computed exactly as Hugging Face's LlamaRotaryEmbedding."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    freqs = np.outer(np.arange(cfg.context, dtype=np.float32), inv_freq.astype(np.float32))
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def _rotate_half(x: Tensor) -> Tensor:
    half = int(x.shape[-1]) // 2
    return x.ctx.cat([-x[..., half:], x[..., :half]], axis=-1)


def _layer(ctx: TensorContext, cfg: LlamaConfig, p: ParamSource, dt: str, x: Tensor,
           past: KvPast | None, cos_t: Tensor, sin_t: Tensor) -> tuple[Tensor, KvPast | None]:
    d, hd, kvd = cfg.hidden, cfg.head_dim, cfg.kv_heads * cfg.head_dim
    h = x.rmsnorm(p(ctx, "input_norm.weight", (d,), dt, "ones"), cfg.norm_eps)
    with ctx.scope("attn"):
        q = split_heads(h.linear(p(ctx, "q.weight", (d, d), dt)), cfg.heads, hd)
        k = split_heads(h.linear(p(ctx, "k.weight", (d, kvd), dt)), cfg.kv_heads, hd)
        v = split_heads(h.linear(p(ctx, "v.weight", (d, kvd), dt)), cfg.kv_heads, hd)
        pos = positions(ctx, x, past.length.unsqueeze(1) if past else None)
        cos = cos_t.gather(pos).unsqueeze(1)
        sin = sin_t.gather(pos).unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        n_rep = cfg.heads // cfg.kv_heads
        if past:
            present, keep = update_cache(ctx, past, k, v, pos, x)
            attn = causal_attention(ctx, q, present.key, present.value, None, n_rep=n_rep, keep=keep)
        else:
            present = None
            attn = causal_attention(ctx, q, k, v, ctx.constant(np.array(0, np.int64)), n_rep=n_rep)
        x = x + merge_heads(attn).linear(p(ctx, "o.weight", (d, d), dt))
    h = x.rmsnorm(p(ctx, "post_norm.weight", (d,), dt, "ones"), cfg.norm_eps)
    with ctx.scope("mlp"):
        gate = h.linear(p(ctx, "gate.weight", (d, cfg.intermediate), dt)).silu()
        up = h.linear(p(ctx, "up.weight", (d, cfg.intermediate), dt))
        x = x + (gate * up).linear(p(ctx, "down.weight", (cfg.intermediate, d), dt))
    return x, present


def build_llama(
    cfg: LlamaConfig, params: ParamSource | None = None, *, dtype: str = "float32", kv_cache: bool = True,
    name: str = "llama", validate: bool = True,
) -> onnx.ModelProto:
    """input_ids (batch, seq) [+ past.{i}.key/value/length] -> logits (batch, seq, vocab) [+ present.*].

    With ``kv_cache`` each layer's cache has a capacity axis (``past``, at most the context) and a
    length per sequence; see ``splitup.graph.zoo.common.update_cache``."""
    p = params or ParamSource()
    ctx = TensorContext(name)
    ctx.declare_dim("seq", cfg.max_seq)
    batch: int | str = cfg.batch
    if cfg.batch > 1:  # a symbolic batch axis bounded by cfg.batch: a node runs several sessions per call
        ctx.declare_dim("batch", cfg.batch)
        batch = "batch"
    ids = ctx.add_graph_input("input_ids", (batch, "seq"), "int64")
    pasts = kv_inputs(ctx, cfg.layers, (batch, cfg.kv_heads, "past", cfg.head_dim), dtype, cfg.context) \
        if kv_cache else []
    cos_np, sin_np = rope_tables(cfg)
    cos_t = ctx.parameter("rope.cos", cos_np.shape, dtype, cos_np)
    sin_t = ctx.parameter("rope.sin", sin_np.shape, dtype, sin_np)
    x = p(ctx, "embed.weight", (cfg.vocab_size, cfg.hidden), dtype).gather(ids)
    presents: list[KvPast] = []
    for i in range(cfg.layers):
        with ctx.scope(f"layers.{i}"):
            x, present = _layer(ctx, cfg, p, dtype, x, pasts[i] if kv_cache else None, cos_t, sin_t)
        if present is not None:
            presents.append(present)
    x = x.rmsnorm(p(ctx, "norm.weight", (cfg.hidden,), dtype, "ones"), cfg.norm_eps)
    logits = x.linear(p(ctx, "lm_head.weight", (cfg.hidden, cfg.vocab_size), dtype))
    p.check_all_used()
    return ctx.compile_to_graph({"logits": logits, **kv_outputs(ctx, pasts, presents)}, validate=validate)
