"""BERT-style encoders such as all-MiniLM-L6-v2 (post-LayerNorm blocks, erf GELU, mean pooling)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from splitup.graph.builder import Tensor, TensorContext
from splitup.graph.zoo.common import ParamSource, merge_heads, positions, split_heads


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    intermediate: int = 1536
    layers: int = 6
    heads: int = 12
    max_positions: int = 512
    type_vocab: int = 2
    norm_eps: float = 1e-12
    max_seq: int = 256
    max_batch: int = 32

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _ln(ctx: TensorContext, p: ParamSource, x: Tensor, name: str, d: int, eps: float) -> Tensor:
    return x.layernorm(p(ctx, f"{name}.weight", (d,), x.dtype, "ones"), p(ctx, f"{name}.bias", (d,), x.dtype, "zeros"), eps)


def _dense(ctx: TensorContext, p: ParamSource, x: Tensor, name: str, din: int, dout: int) -> Tensor:
    return x.linear(p(ctx, f"{name}.weight", (din, dout), x.dtype), p(ctx, f"{name}.bias", (dout,), x.dtype, "zeros"))


def build_bert(
    cfg: BertConfig, params: ParamSource | None = None, *, dtype: str = "float32", name: str = "bert",
    validate: bool = True,
) -> onnx.ModelProto:
    """input_ids, attention_mask (batch, seq) -> last_hidden_state, sentence_embedding (L2-normalised mean)."""
    p = params or ParamSource()
    ctx = TensorContext(name)
    ctx.declare_dim("batch", cfg.max_batch)
    ctx.declare_dim("seq", cfg.max_seq)
    ids = ctx.add_graph_input("input_ids", ("batch", "seq"), "int64")
    mask = ctx.add_graph_input("attention_mask", ("batch", "seq"), "int64")
    d = cfg.hidden
    with ctx.scope("embeddings"):
        x = p(ctx, "word.weight", (cfg.vocab_size, d), dtype).gather(ids)
        x = x + p(ctx, "position.weight", (cfg.max_positions, d), dtype).gather(positions(ctx, x, None))
        x = x + p(ctx, "token_type.weight", (cfg.type_vocab, d), dtype)[0]
        x = _ln(ctx, p, x, "norm", d, cfg.norm_eps)
    maskf = mask.cast(dtype)
    additive = ((1.0 - maskf) * float(np.finfo(np.float32).min)).unsqueeze(1).unsqueeze(1)
    for i in range(cfg.layers):
        with ctx.scope(f"layers.{i}"):
            with ctx.scope("attn"):
                q = split_heads(_dense(ctx, p, x, "q", d, d), cfg.heads, cfg.head_dim)
                k = split_heads(_dense(ctx, p, x, "k", d, d), cfg.heads, cfg.head_dim)
                v = split_heads(_dense(ctx, p, x, "v", d, d), cfg.heads, cfg.head_dim)
                scores = (q @ k.transpose(-2, -1)) * (1.0 / float(np.sqrt(cfg.head_dim))) + additive
                attn = merge_heads(scores.softmax(-1) @ v)
                x = _ln(ctx, p, x + _dense(ctx, p, attn, "out", d, d), "norm", d, cfg.norm_eps)
            with ctx.scope("mlp"):
                h = _dense(ctx, p, x, "up", d, cfg.intermediate).gelu()
                x = _ln(ctx, p, x + _dense(ctx, p, h, "down", cfg.intermediate, d), "norm", d, cfg.norm_eps)
    m = maskf.unsqueeze(-1)
    pooled = (x * m).sum(1) / ((m.sum(1)) + 1e-9)
    norm = ((pooled * pooled).sum(-1, keepdim=True)).sqrt()
    emb = pooled / (norm + 1e-12)
    p.check_all_used()
    return ctx.compile_to_graph({"last_hidden_state": x, "sentence_embedding": emb}, validate=validate)
