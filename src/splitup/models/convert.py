"""Map Hugging Face checkpoint names and layouts onto zoo parameter names.

Hugging Face ``nn.Linear`` stores (out, in); the builder's ``linear`` takes (in, out), so those are
transposed here once, at import. GPT-2's ``Conv1D`` already stores (in, out).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from splitup.graph.errors import BuilderError
from splitup.graph.quant import QuantizedArray


def _get(sd: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    for prefix in ("", "model.", "transformer.", "bert."):
        if prefix + key in sd:
            v = sd[prefix + key]
            return v if isinstance(v, QuantizedArray) else np.asarray(v, dtype=np.float32)
    raise BuilderError(f"checkpoint has no tensor {key!r}")


def _t(w: np.ndarray | QuantizedArray) -> np.ndarray | QuantizedArray:
    """(out, in) -> (in, out); quantised blocks move with their values."""
    return w.transpose() if isinstance(w, QuantizedArray) else np.ascontiguousarray(w.T, dtype=np.float32)


def llama_from_hf(sd: Mapping[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    w = {"embed.weight": _get(sd, "embed_tokens.weight"), "norm.weight": _get(sd, "norm.weight")}
    w["lm_head.weight"] = _t(sd["lm_head.weight"] if "lm_head.weight" in sd else w["embed.weight"])
    for i in range(layers):
        pre = f"layers.{i}."
        w[pre + "input_norm.weight"] = _get(sd, pre + "input_layernorm.weight")
        w[pre + "post_norm.weight"] = _get(sd, pre + "post_attention_layernorm.weight")
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            w[f"{pre}attn.{ours}.weight"] = _t(_get(sd, f"{pre}self_attn.{theirs}.weight"))
        for ours in ("gate", "up", "down"):
            w[f"{pre}mlp.{ours}.weight"] = _t(_get(sd, f"{pre}mlp.{ours}_proj.weight"))
    return w


def gpt2_from_hf(sd: Mapping[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    w = {name: _get(sd, name) for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    w["lm_head.weight"] = np.ascontiguousarray(w["wte.weight"].T)
    for i in range(layers):
        for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                     "attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                     "mlp.c_proj.weight", "mlp.c_proj.bias"):
            w[f"h.{i}.{name}"] = _get(sd, f"h.{i}.{name}")
    return w


def bert_from_hf(sd: Mapping[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    w = {
        "embeddings.word.weight": _get(sd, "embeddings.word_embeddings.weight"),
        "embeddings.position.weight": _get(sd, "embeddings.position_embeddings.weight"),
        "embeddings.token_type.weight": _get(sd, "embeddings.token_type_embeddings.weight"),
        "embeddings.norm.weight": _get(sd, "embeddings.LayerNorm.weight"),
        "embeddings.norm.bias": _get(sd, "embeddings.LayerNorm.bias"),
    }
    for i in range(layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for ours, theirs in (("attn.q", "attention.self.query"), ("attn.k", "attention.self.key"),
                             ("attn.v", "attention.self.value"), ("attn.out", "attention.output.dense"),
                             ("mlp.up", "intermediate.dense"), ("mlp.down", "output.dense")):
            w[f"{dst}{ours}.weight"] = np.ascontiguousarray(_get(sd, f"{src}{theirs}.weight").T)
            w[f"{dst}{ours}.bias"] = _get(sd, f"{src}{theirs}.bias")
        for ours, theirs in (("attn.norm", "attention.output.LayerNorm"), ("mlp.norm", "output.LayerNorm")):
            w[f"{dst}{ours}.weight"] = _get(sd, f"{src}{theirs}.weight")
            w[f"{dst}{ours}.bias"] = _get(sd, f"{src}{theirs}.bias")
    return w
