"""GGUF (llama.cpp's format) -> a LlamaConfig, Hugging Face-layout weights and a tokenizer.

The file is read with the ``gguf`` package: memory-mapped, no pickle, no code from the file.
Quantised blocks are dequantised to float32 (so our graph and any reference compute on identical
numbers) or, with ``keep_quantised``, kept as they are: Q4_1 (32 values, fp16 scale ``d`` and minimum
``m``, ``w = d*q + m``, q in 0..15) and Q8_0 (32 int8 values, fp16 scale) become ``QuantizedArray``s
with the same integers, scales and minimums. Two layout facts of llama.cpp's converter are undone here:

- tensor dims are stored innermost first, so a (out, in) matrix has GGUF shape [in, out];
- Q and K rows are permuted per head from Hugging Face's rotate-half rotary layout to the
  interleaved one llama.cpp uses (``LlamaModel.permute`` in its convert script).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitup.graph.quant import QuantizedArray
from splitup.graph.zoo.llama import LlamaConfig
from splitup.models.errors import ModelError

_GGUF_BLOCK = 32

# GGUF tensor names -> Hugging Face Llama names, per layer and global.
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


@dataclass(frozen=True)
class GGUFModel:
    config: LlamaConfig
    weights: dict[str, np.ndarray | QuantizedArray]  # Hugging Face names, (out, in) layout
    tokenizer_json: str
    chat_template: str | None
    bos_id: int | None
    eos_id: int | None
    special_tokens: dict[str, str]  # bos_token, ...: what chat templates write ({{ bos_token }})
    metadata: dict[str, Any]  # scalar general.* / llama.* fields, for display and provenance


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of a Q or K projection of shape (n_head*head_dim, in)."""
    rows, cols = w.shape
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def blocks_of(data: np.ndarray, kind: str, shape: tuple[int, int]) -> QuantizedArray | None:
    """A Q4_1 or Q8_0 tensor's blocks as they are stored (rows of ``shape`` = (out, in), blocked along in);
    None for other types, which are dequantised."""
    rows, cols = shape
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(rows, cols // _GGUF_BLOCK, -1)
    half = lambda b: np.ascontiguousarray(b).view(np.float16)[..., 0]  # noqa: E731 - little-endian fp16 pairs
    if kind == "Q8_0":  # d: f16, qs: 32 x int8
        q = raw[..., 2:].view(np.int8).reshape(rows, cols)
        return QuantizedArray(np.ascontiguousarray(q), half(raw[..., 0:2]), 1, _GGUF_BLOCK, 8)
    if kind == "Q4_1":  # d: f16, m: f16, qs: 16 bytes, low nibbles are values 0..15, high ones 16..31
        qs = raw[..., 4:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=-1).reshape(rows, cols)
        return QuantizedArray(np.ascontiguousarray(q, dtype=np.uint8), half(raw[..., 0:2]), 1, _GGUF_BLOCK, 4,
                              zero_point=None, minimum=half(raw[..., 2:4]))
    return None


def _permute_rows(w: np.ndarray | QuantizedArray, n_head: int) -> np.ndarray | QuantizedArray:
    if isinstance(w, np.ndarray):
        return unpermute(w, n_head)
    f = (lambda a: None if a is None else np.ascontiguousarray(unpermute(a, n_head)))  # noqa: E731
    return QuantizedArray(f(w.q), f(w.scale), w.axis, w.block, w.bits, f(w.zero_point), f(w.minimum))


def _field(reader: Any, key: str, default: Any = ...) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is ...:
            raise ModelError(f"GGUF file has no metadata field {key!r}")
        return default
    return f.contents()


def _config(reader: Any, max_seq: int) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelError(f"only llama-architecture GGUF files are supported, this one is {arch!r}")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    if int(_field(reader, "llama.rope.dimension_count", hidden // heads)) != hidden // heads:
        raise ModelError("partial rotary embeddings are not supported")
    vocab = _field(reader, "llama.vocab_size", None)
    if vocab is None:
        vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden=hidden,
        intermediate=int(_field(reader, "llama.feed_forward_length")),
        layers=int(_field(reader, "llama.block_count")),
        heads=heads,
        kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        # The float32 value as stored, widened exactly: the reference reads the same one.
        norm_eps=float(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon"))),
        context=int(_field(reader, "llama.context_length")),
        max_seq=max_seq,
    )


def tokenizer_json(reader: Any) -> str:
    """A ``tokenizers`` byte-level BPE tokenizer from the GGUF vocabulary, merges and token types."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelError(f"only byte-level BPE ('gpt2') GGUF tokenizers are supported, not {kind!r}")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    # llama.cpp's "smollm" pre-tokenizer: every digit alone, then GPT-2's byte-level split.
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre in ("smollm", "starcoder", "refact") else []
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    # Token type 3 is CONTROL: matched whole in the text and never split by BPE.
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i, t in enumerate(types) if t == 3])
    return tk.to_str()


# The special tokens transformers' GGUF tokenizer names, and the fields giving their ids.
_SPECIAL_TOKEN_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                      "pad_token": "padding_token_id"}


def special_tokens(reader: Any) -> dict[str, str]:
    ids = {name: _field(reader, f"tokenizer.ggml.{key}", None) for name, key in _SPECIAL_TOKEN_IDS.items()}
    ids = {name: int(i) for name, i in ids.items() if i is not None}
    if not ids:
        return {}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not all(0 <= i < len(tokens) for i in ids.values()):
        raise ModelError(f"GGUF special token ids {ids} outside the vocabulary of {len(tokens)} tokens")
    return {name: str(tokens[i]) for name, i in ids.items()}


def read_gguf(path: Path, *, max_seq: int = 256, keep_quantised: bool = False) -> GGUFModel:
    import gguf
    from gguf.quants import dequantize

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read GGUF file {path}: {exc}") from exc
    cfg = _config(reader, max_seq)
    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise ModelError(f"unexpected GGUF tensor {t.name!r}")
            name = f"model.layers.{int(layer)}.{_LAYER_NAMES[rest]}"
        elif t.name in _GLOBAL_NAMES:
            name = _GLOBAL_NAMES[t.name]
        elif t.name == "rope_freqs.weight":
            raise ModelError("GGUF files with scaled rotary frequencies are not supported")
        else:
            raise ModelError(f"unexpected GGUF tensor {t.name!r}")
        shape = [int(d) for d in reversed(t.shape)]
        w: np.ndarray | QuantizedArray | None = None
        if keep_quantised and len(shape) == 2:
            w = blocks_of(t.data, t.tensor_type.name, (shape[0], shape[1]))
        if w is None:
            w = np.ascontiguousarray(dequantize(t.data, t.tensor_type).reshape(shape), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            w = _permute_rows(w, cfg.heads)
        elif name.endswith("k_proj.weight"):
            w = _permute_rows(w, cfg.kv_heads)
        weights[name] = w
    expected = 2 + 9 * cfg.layers
    if len([k for k in weights if k != "lm_head.weight"]) != expected:
        raise ModelError(f"GGUF file has {len(weights)} tensors, a {cfg.layers}-layer llama needs {expected}")
    bos = _field(reader, "tokenizer.ggml.bos_token_id", None)
    eos = _field(reader, "tokenizer.ggml.eos_token_id", None)
    meta = {k: _field(reader, k) for k in reader.fields
            if k.startswith(("general.", "llama.")) and not isinstance(_field(reader, k), list)}
    return GGUFModel(
        config=cfg, weights=weights, tokenizer_json=tokenizer_json(reader),
        chat_template=_field(reader, "tokenizer.chat_template", None),
        bos_id=None if bos is None else int(bos), eos_id=None if eos is None else int(eos),
        special_tokens=special_tokens(reader), metadata=json.loads(json.dumps(meta, default=str)),
    )
