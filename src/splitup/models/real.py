"""Real pretrained models, loaded offline: config, weights, tokenizer and our ONNX graph of them.

``load_real_model("smollm2-135m")`` reads the weights from the package that ships them (through
the user cache after the first time), builds the graph with the zoo's builder code and binds the
weights by name. ``build_real(name)`` gives the zoo graph with the same weights, in any dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitup.graph.quant import QuantizedArray, resolve_dtype
from splitup.graph.zoo.bert import BertConfig, build_bert
from splitup.graph.zoo.common import ParamSource
from splitup.graph.zoo.llama import LlamaConfig, build_llama
from splitup.models.cache import CacheEntry, cache_root, sha256_file
from splitup.models.convert import bert_from_hf, llama_from_hf
from splitup.models.errors import ModelError
from splitup.models.registry import RealModelSpec, spec

# Bumped whenever the importer's output changes, so old cache entries are not reused.
IMPORTER_VERSION = 2


@dataclass(frozen=True)
class ImportedWeights:
    """What an importer produced: Hugging Face names and layouts, so references load them as they are."""

    config: LlamaConfig | BertConfig
    hf_weights: dict[str, np.ndarray | QuantizedArray]
    tokenizer_json: str
    chat_template: str | None = None
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    source_sha256: str = ""
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, ...: what chat templates write


_PARTS = ("q", "scale", "zero_point", "minimum")


def _flatten(weights: Mapping[str, np.ndarray | QuantizedArray]) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """Quantised arrays as plain arrays (``name::q``, ``name::scale``, ...) for the cache, and their layouts."""
    flat: dict[str, np.ndarray] = {}
    layouts: dict[str, list[int]] = {}
    for k, v in weights.items():
        if isinstance(v, QuantizedArray):
            layouts[k] = [v.axis, v.block, v.bits]
            flat.update({f"{k}::{p}": getattr(v, p) for p in _PARTS if getattr(v, p) is not None})
        else:
            flat[k] = v
    return flat, layouts


def _unflatten(flat: Mapping[str, np.ndarray], layouts: Mapping[str, list[int]]) -> dict[str, np.ndarray | QuantizedArray]:
    out: dict[str, np.ndarray | QuantizedArray] = {k: v for k, v in flat.items() if "::" not in k}
    for k, (axis, block, bits) in layouts.items():
        parts = {p: flat.get(f"{k}::{p}") for p in _PARTS}
        out[k] = QuantizedArray(parts["q"], parts["scale"], int(axis), int(block), int(bits),  # type: ignore[arg-type]
                                parts["zero_point"], parts["minimum"])
    return out


def _import_gguf(s: RealModelSpec, path: Path, keep_quantised: bool) -> ImportedWeights:
    source = sha256_file(path)
    kind = "-q" if keep_quantised else ""
    entry = CacheEntry(cache_root() / s.name / f"{source[:16]}-v{IMPORTER_VERSION}{kind}")
    hit = entry.load()
    if hit is not None:
        weights, texts, meta = hit
        return ImportedWeights(
            config=LlamaConfig(**meta["config"]), hf_weights=_unflatten(weights, meta.get("quantised", {})),
            tokenizer_json=texts["tokenizer.json"], chat_template=meta.get("chat_template"),
            bos_id=meta.get("bos_id"), eos_ids=tuple(meta.get("eos_ids", ())), source_sha256=source,
            special_tokens=meta["special_tokens"],
        )
    from splitup.models.gguf_import import read_gguf

    g = read_gguf(path, keep_quantised=keep_quantised)
    eos = () if g.eos_id is None else (g.eos_id,)
    flat, layouts = _flatten(g.weights)
    entry.store(flat, {"tokenizer.json": g.tokenizer_json}, {
        "model": s.name, "source": path.name, "source_sha256": source, "importer_version": IMPORTER_VERSION,
        "config": asdict(g.config), "chat_template": g.chat_template, "bos_id": g.bos_id, "eos_ids": list(eos),
        "special_tokens": g.special_tokens, "gguf_metadata": g.metadata, "quantised": layouts,
    })
    return ImportedWeights(g.config, g.weights, g.tokenizer_json, g.chat_template, g.bos_id, eos, source,
                           g.special_tokens)


def _import_sentence_bert(path: Path) -> ImportedWeights:
    from splitup.models.safetensors_import import read_sentence_bert

    f = read_sentence_bert(path.parent)
    return ImportedWeights(f.config, f.weights, f.tokenizer_json, source_sha256=sha256_file(path))


def import_weights(name: str, *, keep_quantised: bool = False) -> ImportedWeights:
    """The model's config, weights (Hugging Face names) and tokenizer, read offline: float32, or with
    ``keep_quantised`` the file's own quantised blocks where it has them (GGUF Q4_1 / Q8_0)."""
    s = spec(name)
    path = s.require_path()
    if s.family == "llama":
        return _import_gguf(s, path, keep_quantised)
    if s.family == "bert":
        return _import_sentence_bert(path)
    raise ModelError(f"no importer for family {s.family!r}")


def to_zoo_names(imported: ImportedWeights) -> dict[str, np.ndarray | QuantizedArray]:
    """Our graph's parameter names and (in, out) layouts."""
    cfg = imported.config
    if isinstance(cfg, LlamaConfig):
        return llama_from_hf(imported.hf_weights, cfg.layers)
    return bert_from_hf(imported.hf_weights, cfg.layers)


def zoo_weights(name: str, *, keep_quantised: bool = False) -> dict[str, np.ndarray | QuantizedArray]:
    """Real weights under our graph's parameter names."""
    return to_zoo_names(import_weights(name, keep_quantised=keep_quantised))


def build_real(name: str, *, dtype: str = "float32", activations: str | None = None, **kw: Any) -> onnx.ModelProto:
    """``zoo.build`` with the pretrained weights the model's package ships; int4 on a GGUF model keeps
    the file's own 4-bit blocks instead of quantising a float copy again."""
    from splitup.graph import zoo

    _, quant = resolve_dtype(dtype, activations)
    weights = zoo_weights(name, keep_quantised=quant is not None and quant.bits == 4)
    return zoo.build(name, weights=weights, dtype=dtype, activations=activations, **kw)


@dataclass
class RealModel:
    name: str
    spec: RealModelSpec
    config: LlamaConfig | BertConfig
    model: onnx.ModelProto
    tokenizer: Any  # tokenizers.Tokenizer
    hf_weights: dict[str, np.ndarray | QuantizedArray] = field(repr=False)
    eos_ids: tuple[int, ...] = ()
    bos_id: int | None = None
    chat_template: str | None = None
    dtype: str = "fp32"
    special_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def is_decoder(self) -> bool:
        return self.spec.kind == "decoder"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; a chat prompt without ``add_special_tokens``: its template wrote them."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        from splitup.chat.renderer import render_chat  # it imports this package's errors

        if not self.chat_template:
            raise ModelError(f"{self.name} has no chat template")
        return render_chat(self.chat_template, messages, add_generation_prompt, self.special_tokens)

    def encode_batch(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Padded ``input_ids`` and ``attention_mask`` for the encoder graph."""
        encs = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), np.int64)
        mask = np.zeros((len(encs), width), np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def load_real_model(
    name: str, *, max_seq: int | None = None, kv_cache: bool = True, validate: bool = True,
    context: int | None = None, dtype: str = "fp32", activations: str | None = None,
) -> RealModel:
    """Import ``name`` and build its graph; ``max_seq`` bounds the tokens of one call (prefill chunk),
    ``context`` the tokens a generation may hold (the KV cache's capacity; default: the model's).

    ``dtype``: fp32 (dequantised), fp16, int8 (round-to-nearest per block) or int4: a GGUF model's
    own 4-bit blocks as shipped (Q4_1 matrices, Q8_0 embeddings), otherwise round-to-nearest.
    """
    from tokenizers import Tokenizer

    s = spec(name)
    act, quant = resolve_dtype(dtype, activations)
    imported = import_weights(name, keep_quantised=quant is not None and quant.bits == 4)
    cfg = imported.config
    if max_seq is not None:
        cfg = type(cfg)(**{**asdict(cfg), "max_seq": int(max_seq)})
    if context is not None and isinstance(cfg, LlamaConfig):
        cfg = type(cfg)(**{**asdict(cfg), "context": int(context)})
    params = ParamSource(weights=to_zoo_names(imported), quant=quant)
    if isinstance(cfg, LlamaConfig):
        model = build_llama(cfg, params, dtype=act, kv_cache=kv_cache, name=name, validate=validate)
    else:
        model = build_bert(cfg, params, dtype=act, name=name, validate=validate)
    tok = Tokenizer.from_str(imported.tokenizer_json)
    if isinstance(cfg, BertConfig):
        # sentence-transformers truncates at max_seq_length, special tokens included.
        tok.enable_truncation(cfg.max_seq)
        tok.no_padding()
    return RealModel(
        name=name, spec=s, config=cfg, model=model, tokenizer=tok, hf_weights=imported.hf_weights,
        eos_ids=imported.eos_ids, bos_id=imported.bos_id, chat_template=imported.chat_template, dtype=dtype,
        special_tokens=imported.special_tokens,
    )
