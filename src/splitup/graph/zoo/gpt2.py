"""GPT-2 decoders (learned positions, pre-LayerNorm blocks, tanh-approximated GELU)."""

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
class GPT2Config:
    vocab_size: int = 50257
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    context: int = 1024
    max_seq: int = 512
    norm_eps: float = 1e-5
    batch: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _block(ctx: TensorContext, cfg: GPT2Config, p: ParamSource, dt: str, x: Tensor,
           past: KvPast | None, pos: Tensor | None) -> tuple[Tensor, KvPast | None]:
    d = cfg.hidden
    h = x.layernorm(p(ctx, "ln_1.weight", (d,), dt, "ones"), p(ctx, "ln_1.bias", (d,), dt, "zeros"), cfg.norm_eps)
    with ctx.scope("attn"):
        qkv = h.linear(p(ctx, "c_attn.weight", (d, 3 * d), dt), p(ctx, "c_attn.bias", (3 * d,), dt, "zeros"))
        q = split_heads(qkv[..., :d], cfg.heads, cfg.head_dim)
        k = split_heads(qkv[..., d : 2 * d], cfg.heads, cfg.head_dim)
        v = split_heads(qkv[..., 2 * d :], cfg.heads, cfg.head_dim)
        if past and pos is not None:
            present, keep = update_cache(ctx, past, k, v, pos, x)
            attn = merge_heads(causal_attention(ctx, q, present.key, present.value, None, keep=keep))
        else:
            present = None
            attn = merge_heads(causal_attention(ctx, q, k, v, ctx.constant(np.array(0, np.int64))))
        x = x + attn.linear(p(ctx, "c_proj.weight", (d, d), dt), p(ctx, "c_proj.bias", (d,), dt, "zeros"))
    h = x.layernorm(p(ctx, "ln_2.weight", (d,), dt, "ones"), p(ctx, "ln_2.bias", (d,), dt, "zeros"), cfg.norm_eps)
    with ctx.scope("mlp"):
        h = h.linear(p(ctx, "c_fc.weight", (d, 4 * d), dt), p(ctx, "c_fc.bias", (4 * d,), dt, "zeros"))
        h = h.gelu("tanh")
        x = x + h.linear(p(ctx, "c_proj.weight", (4 * d, d), dt), p(ctx, "c_proj.bias", (d,), dt, "zeros"))
    return x, present


def build_gpt2(
    cfg: GPT2Config, params: ParamSource | None = None, *, dtype: str = "float32", kv_cache: bool = True,
    name: str = "gpt2", validate: bool = True,
) -> onnx.ModelProto:
    """input_ids (batch, seq) [+ past.{i}.key/value/length] -> logits (batch, seq, vocab) [+ present.*]."""
    p = params or ParamSource()
    ctx = TensorContext(name)
    ctx.declare_dim("seq", cfg.max_seq)
    batch: int | str = cfg.batch
    if cfg.batch > 1:  # a symbolic batch axis bounded by cfg.batch: a node runs several sessions per call
        ctx.declare_dim("batch", cfg.batch)
        batch = "batch"
    ids = ctx.add_graph_input("input_ids", (batch, "seq"), "int64")
    pasts = kv_inputs(ctx, cfg.layers, (batch, cfg.heads, "past", cfg.head_dim), dtype, cfg.context) \
        if kv_cache else []
    tok = p(ctx, "wte.weight", (cfg.vocab_size, cfg.hidden), dtype)
    x = tok.gather(ids)
    # Every layer holds the same length; each reads its own so that any split of the layers keeps its state.
    offset = pasts[0].length.unsqueeze(1) if pasts else None
    x = x + p(ctx, "wpe.weight", (cfg.context, cfg.hidden), dtype).gather(positions(ctx, x, offset))
    presents: list[KvPast] = []
    for i in range(cfg.layers):
        with ctx.scope(f"h.{i}"):
            past = pasts[i] if kv_cache else None
            pos = positions(ctx, x, past.length.unsqueeze(1)) if past else None
            x, present = _block(ctx, cfg, p, dtype, x, past, pos)
        if present is not None:
            presents.append(present)
    x = x.layernorm(p(ctx, "ln_f.weight", (cfg.hidden,), dtype, "ones"),
                    p(ctx, "ln_f.bias", (cfg.hidden,), dtype, "zeros"), cfg.norm_eps)
    # GPT-2 ties lm_head to wte; a separate (transposed) copy avoids a transpose per token at run time.
    logits = x.linear(p(ctx, "lm_head.weight", (cfg.hidden, cfg.vocab_size), dtype))
    p.check_all_used()
    return ctx.compile_to_graph({"logits": logits, **kv_outputs(ctx, pasts, presents)}, validate=validate)
