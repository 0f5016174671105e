"""Real pretrained models, loaded offline: config, weights, tokenizer and our ONNX graph of them.

``load_real_model("smollm2-135m")`` reads the weights from the package that ships them (through
the user cache after the first time), builds the graph with the zoo's builder code and binds the
weights by name. ``build_real(name)`` gives the zoo graph with the same weights, in any dtype.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
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
from splitup.models.errors import ChatTemplateError, ModelError
from splitup.models.registry import RealModelSpec, spec

# Bumped whenever the importer's output changes, so old cache entries are not reused.
IMPORTER_VERSION = 1


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
        )
    from splitup.models.gguf_import import read_gguf

    g = read_gguf(path, keep_quantised=keep_quantised)
    eos = () if g.eos_id is None else (g.eos_id,)
    flat, layouts = _flatten(g.weights)
    entry.store(flat, {"tokenizer.json": g.tokenizer_json}, {
        "model": s.name, "source": path.name, "source_sha256": source, "importer_version": IMPORTER_VERSION,
        "config": asdict(g.config), "chat_template": g.chat_template, "bos_id": g.bos_id, "eos_ids": list(eos),
        "gguf_metadata": g.metadata, "quantised": layouts,
    })
    return ImportedWeights(g.config, g.weights, g.tokenizer_json, g.chat_template, g.bos_id, eos, source)


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


def render_chat(template: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Render a shipped Jinja chat template in a sandbox (a template is data, not trusted code) with what Hugging
    Face's templates use besides the messages, as ``transformers`` renders them: ``raise_exception`` (a template
    refusing the conversation, e.g. roles that do not alternate), ``strftime_now``, ``tojson`` without HTML
    escaping, loop controls, ``{% generation %}`` blocks, ``dict`` and ``namespace``. Whatever stops the
    rendering is a ``ChatTemplateError`` naming it."""
    env = _chat_environment()
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt)
    except ChatTemplateError:
        raise
    except Exception as exc:  # the template is the model's data: any failure of it is its error, named
        raise ChatTemplateError(f"the model's chat template cannot render these messages: "
                                f"{type(exc).__name__}: {exc}") from None


@functools.cache
def _chat_environment() -> Any:
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` marks the assistant's part for training masks: its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    class Namespace(jinja2.utils.Namespace):
        """No underscore names: a template must not reach the interpreter's internals through attributes."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick (self in args)
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a template may not set {name!r} on a namespace")

    class Dict:
        """``dict(...)`` and ``dict.fromkeys(...)``, without the type itself (its attributes lead out)."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: Any) -> None:
        raise ChatTemplateError(f"the model's chat template refuses these messages: {message}")

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt), dict=Dict())
    return env


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

    @property
    def is_decoder(self) -> bool:
        return self.spec.kind == "decoder"

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ModelError(f"{self.name} has no chat template")
        return render_chat(self.chat_template, messages, add_generation_prompt)

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
    )
