"""Plain numpy forward passes of Llama and GPT-2, written from the papers and Hugging Face's semantics.

Independent of the builder and the zoo: nothing here imports ``splitup``. Weights are a dict of arrays
named as the zoo names its parameters, linear weights stored (in, out) so ``y = x @ W + b``. Everything
is computed in float64; a KV cache is a list of (key, value) pairs of shape (batch, kv_heads, past,
head_dim), keys stored after the rotary embedding, as Hugging Face's ``DynamicCache`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Cache = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Hyper:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    norm_eps: float
    rope_theta: float = 10000.0


def _f64(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in weights.items()}


def empty_cache(h: Hyper, batch: int = 1) -> Cache:
    z = np.zeros((batch, h.kv_heads, 0, h.head_dim))
    return [(z, z) for _ in range(h.layers)]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, past: int) -> np.ndarray:
    """Causal scaled dot-product attention; q (b, H, s, d), k/v (b, H, past + s, d).

    Query i sits at absolute position past + i and sees keys 0 .. past + i.
    """
    s, total = q.shape[2], k.shape[2]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    visible = np.arange(total)[None, :] <= (past + np.arange(s))[:, None]
    scores = np.where(visible, scores, -np.inf)
    return softmax(scores) @ v


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, s, d = x.shape
    return x.reshape(b, s, heads, d // heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


# --- Llama (Touvron et al. 2023; HF LlamaForCausalLM) --------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Zhang & Sennrich 2019: x / sqrt(mean(x^2) + eps) * g (no centring, no bias)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding (Su et al. 2021) in HF's layout: frequencies repeated over both halves."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = positions[:, None] * inv_freq[None, :]
    emb = np.concatenate([angles, angles], axis=-1)  # (s, d)
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def llama_forward(
    weights: dict[str, np.ndarray], h: Hyper, ids: np.ndarray, cache: Cache | None = None
) -> tuple[np.ndarray, Cache]:
    """Logits (b, s, vocab) and the new cache for tokens ``ids`` (b, s) after ``cache``."""
    w = _f64(weights)
    cache = cache if cache is not None else empty_cache(h, ids.shape[0])
    past = cache[0][0].shape[2]
    pos = past + np.arange(ids.shape[1], dtype=np.float64)
    x = w["embed.weight"][ids]
    present: Cache = []
    for i in range(h.layers):
        p = f"layers.{i}."
        a = rms_norm(x, w[p + "input_norm.weight"], h.norm_eps)
        q = rope(split_heads(a @ w[p + "attn.q.weight"], h.heads), pos, h.rope_theta)
        k = rope(split_heads(a @ w[p + "attn.k.weight"], h.kv_heads), pos, h.rope_theta)
        v = split_heads(a @ w[p + "attn.v.weight"], h.kv_heads)
        k = np.concatenate([cache[i][0], k], axis=2)
        v = np.concatenate([cache[i][1], v], axis=2)
        present.append((k, v))
        # Grouped-query attention: query head j reads key/value head j // (heads / kv_heads).
        n_rep = h.heads // h.kv_heads
        attn = attention(q, np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1), past)
        x = x + merge_heads(attn) @ w[p + "attn.o.weight"]
        m = rms_norm(x, w[p + "post_norm.weight"], h.norm_eps)
        # SwiGLU (Shazeer 2020): down(silu(gate(m)) * up(m)).
        x = x + (silu(m @ w[p + "mlp.gate.weight"]) * (m @ w[p + "mlp.up.weight"])) @ w[p + "mlp.down.weight"]
    x = rms_norm(x, w["norm.weight"], h.norm_eps)
    return x @ w["lm_head.weight"], present


# --- GPT-2 (Radford et al. 2019; HF GPT2LMHeadModel) -----------------------------------------------------


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's "gelu_new": the tanh approximation of Hendrycks & Gimpel."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def gpt2_forward(
    weights: dict[str, np.ndarray], h: Hyper, ids: np.ndarray, cache: Cache | None = None
) -> tuple[np.ndarray, Cache]:
    w = _f64(weights)
    cache = cache if cache is not None else empty_cache(h, ids.shape[0])
    past = cache[0][0].shape[2]
    d = w["wte.weight"].shape[1]
    x = w["wte.weight"][ids] + w["wpe.weight"][past + np.arange(ids.shape[1])]
    present: Cache = []
    for i in range(h.layers):
        p = f"h.{i}."
        a = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], h.norm_eps)
        qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]  # fused q|k|v projection
        q, k, v = (split_heads(t, h.heads) for t in (qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]))
        k = np.concatenate([cache[i][0], k], axis=2)
        v = np.concatenate([cache[i][1], v], axis=2)
        present.append((k, v))
        x = x + merge_heads(attention(q, k, v, past)) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], h.norm_eps)
        m = gelu_tanh(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], h.norm_eps)
    return x @ w["lm_head.weight"], present
