"""LLaMA-family decoders (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from splitup.graph.builder import Tensor, TensorContext
from splitup.graph.zoo.common import ParamSource, causal_attention, merge_heads, positions, split_heads


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
           past: tuple[Tensor, Tensor] | None, cos_t: Tensor, sin_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    d, hd, kvd = cfg.hidden, cfg.head_dim, cfg.kv_heads * cfg.head_dim
    h = x.rmsnorm(p(ctx, "input_norm.weight", (d,), dt, "ones"), cfg.norm_eps)
    with ctx.scope("attn"):
        q = split_heads(h.linear(p(ctx, "q.weight", (d, d), dt)), cfg.heads, hd)
        k = split_heads(h.linear(p(ctx, "k.weight", (d, kvd), dt)), cfg.kv_heads, hd)
        v = split_heads(h.linear(p(ctx, "v.weight", (d, kvd), dt)), cfg.kv_heads, hd)
        past_len = past[0].dim_size(2) if past else ctx.constant(np.array(0, np.int64))
        pos = positions(ctx, x, past_len if past else None)
        cos = cos_t.gather(pos).unsqueeze(1)
        sin = sin_t.gather(pos).unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if past:
            k = ctx.cat([past[0], k], axis=2)
            v = ctx.cat([past[1], v], axis=2)
        attn = causal_attention(ctx, q, k, v, past_len, n_rep=cfg.heads // cfg.kv_heads)
        x = x + merge_heads(attn).linear(p(ctx, "o.weight", (d, d), dt))
    h = x.rmsnorm(p(ctx, "post_norm.weight", (d,), dt, "ones"), cfg.norm_eps)
    with ctx.scope("mlp"):
        gate = h.linear(p(ctx, "gate.weight", (d, cfg.intermediate), dt)).silu()
        up = h.linear(p(ctx, "up.weight", (d, cfg.intermediate), dt))
        x = x + (gate * up).linear(p(ctx, "down.weight", (cfg.intermediate, d), dt))
    return x, k, v


def build_llama(
    cfg: LlamaConfig, params: ParamSource | None = None, *, dtype: str = "float32", kv_cache: bool = True,
    name: str = "llama", validate: bool = True,
) -> onnx.ModelProto:
    """input_ids (batch, seq) [+ past.{i}.key/value] -> logits (batch, seq, vocab) [+ present.*]."""
    p = params or ParamSource()
    ctx = TensorContext(name)
    ctx.declare_dim("seq", cfg.max_seq)
    batch: int | str = cfg.batch
    if cfg.batch > 1:
        ctx.declare_dim("batch", cfg.batch)
        batch = "batch"
    ids = ctx.add_graph_input("input_ids", (batch, "seq"), "int64")
    pasts: list[tuple[Tensor, Tensor]] = []
    if kv_cache:
        ctx.declare_dim("past", cfg.context)
        for i in range(cfg.layers):
            kv_shape = (batch, cfg.kv_heads, "past", cfg.head_dim)
            pasts.append((ctx.add_graph_input(f"past.{i}.key", kv_shape, dtype),
                          ctx.add_graph_input(f"past.{i}.value", kv_shape, dtype)))
    cos_np, sin_np = rope_tables(cfg)
    cos_t = ctx.parameter("rope.cos", cos_np.shape, dtype, cos_np)
    sin_t = ctx.parameter("rope.sin", sin_np.shape, dtype, sin_np)
    x = p(ctx, "embed.weight", (cfg.vocab_size, cfg.hidden), dtype).gather(ids)
    outputs: dict[str, Tensor] = {}
    for i in range(cfg.layers):
        with ctx.scope(f"layers.{i}"):
            x, k, v = _layer(ctx, cfg, p, dtype, x, pasts[i] if kv_cache else None, cos_t, sin_t)
        if kv_cache:
            outputs[f"present.{i}.key"], outputs[f"present.{i}.value"] = k, v
    x = x.rmsnorm(p(ctx, "norm.weight", (cfg.hidden,), dtype, "ones"), cfg.norm_eps)
    logits = x.linear(p(ctx, "lm_head.weight", (cfg.hidden, cfg.vocab_size), dtype))
    p.check_all_used()
    graph_outputs = {"logits": logits, **outputs}
    for i, (pk, pv) in enumerate(pasts):
        ctx.state[pk.name] = f"present.{i}.key"
        ctx.state[pv.name] = f"present.{i}.value"
    return ctx.compile_to_graph(graph_outputs, validate=validate)
