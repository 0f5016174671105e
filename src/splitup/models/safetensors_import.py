"""A sentence-transformers BERT directory (config.json, model.safetensors, tokenizer.json) -> our encoder.

Everything is read as data: JSON configs and a safetensors file (memory-mapped, no pickle). The
pooling the package declares is checked against the one our graph computes (mean over the
attention mask, then L2 normalisation), so a different checkpoint fails loudly instead of silently
embedding differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitup import jsonparse
from splitup.graph.zoo.bert import BertConfig
from splitup.models.errors import ModelError

# Tensors in the checkpoint that the sentence-embedding graph does not use.
_UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


@dataclass(frozen=True)
class SentenceEncoderFiles:
    config: BertConfig
    weights: dict[str, np.ndarray]  # Hugging Face BertModel names and layouts, float32
    tokenizer_json: str


def _json(path: Path) -> Any:
    try:
        return jsonparse.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


def read_sentence_bert(directory: Path) -> SentenceEncoderFiles:
    from safetensors.numpy import load_file

    hf = _json(directory / "config.json")
    if hf.get("model_type") != "bert" or hf.get("hidden_act") != "gelu":
        raise ModelError(f"{directory}: expected a BERT with erf GELU, got {hf.get('model_type')}/{hf.get('hidden_act')}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError(f"{directory}: only absolute position embeddings are supported")
    pooling = _json(directory / "1_Pooling" / "config.json")
    modules = [m.get("type", "") for m in _json(directory / "modules.json")]
    if not pooling.get("pooling_mode_mean_tokens") or not any(t.endswith(".Normalize") for t in modules):
        raise ModelError(f"{directory}: the graph computes normalised mean pooling, the package declares {pooling}")
    st = _json(directory / "sentence_bert_config.json")
    cfg = BertConfig(
        vocab_size=int(hf["vocab_size"]), hidden=int(hf["hidden_size"]), intermediate=int(hf["intermediate_size"]),
        layers=int(hf["num_hidden_layers"]), heads=int(hf["num_attention_heads"]),
        max_positions=int(hf["max_position_embeddings"]), type_vocab=int(hf["type_vocab_size"]),
        norm_eps=float(hf["layer_norm_eps"]), max_seq=int(st.get("max_seq_length", hf["max_position_embeddings"])),
    )
    try:
        raw = load_file(str(directory / "model.safetensors"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {directory / 'model.safetensors'}: {exc}") from exc
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in raw.items() if k not in _UNUSED}
    try:
        tok = (directory / "tokenizer.json").read_text()
    except OSError as exc:
        raise ModelError(f"cannot read the tokenizer of {directory}: {exc}") from exc
    return SentenceEncoderFiles(cfg, weights, tok)
