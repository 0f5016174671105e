"""The model zoo: families written with the builder API, and named configurations of them.

``build("llama-70b")`` gives a shape-only planning graph (no weights in memory);
``build("tiny-llama", seed=0)`` a runnable one with seeded random weights;
``build("gpt2", weights=...)`` binds real weights by parameter name;
the pretrained weights of a model that a package ships come from ``splitup.models.real.build_real``
(``minilm`` and ``smollm2-135m``), which binds them through ``weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from splitup.graph.errors import BuilderError
from splitup.graph.quant import QuantizedArray, resolve_dtype
from splitup.graph.zoo.bert import BertConfig, build_bert
from splitup.graph.zoo.common import ParamSource
from splitup.graph.zoo.gpt2 import GPT2Config, build_gpt2
from splitup.graph.zoo.llama import LlamaConfig, build_llama
from splitup.graph.zoo.small import CNNConfig, MLPConfig, build_cnn, build_mlp


@dataclass(frozen=True)
class ZooEntry:
    family: str
    config: Any
    description: str

    @property
    def is_decoder(self) -> bool:
        return self.family in ("llama", "gpt2")


_BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "llama": build_llama,
    "gpt2": build_gpt2,
    "bert": build_bert,
    "mlp": build_mlp,
    "cnn": build_cnn,
}

ZOO: dict[str, ZooEntry] = {
    "mlp": ZooEntry("mlp", MLPConfig(), "5-layer MLP, 64 -> 10"),
    "cnn": ZooEntry("cnn", CNNConfig(), "3-block CNN on 32x32 RGB images"),
    "tiny-gpt2": ZooEntry("gpt2", GPT2Config(vocab_size=512, hidden=64, layers=4, heads=4, context=128, max_seq=64),
                          "4-layer GPT-2 for tests"),
    "gpt2": ZooEntry("gpt2", GPT2Config(), "GPT-2 small, 124M parameters"),
    "gpt2-medium": ZooEntry("gpt2", GPT2Config(hidden=1024, layers=24, heads=16), "GPT-2 medium, 355M"),
    "gpt2-xl": ZooEntry("gpt2", GPT2Config(hidden=1600, layers=48, heads=25), "GPT-2 XL, 1.5B"),
    "tiny-llama": ZooEntry("llama", LlamaConfig(vocab_size=512, hidden=64, intermediate=172, layers=4, heads=4,
                                                kv_heads=2, context=128, max_seq=64), "4-layer LLaMA with GQA for tests"),
    "llama-7b": ZooEntry("llama", LlamaConfig(max_seq=128), "LLaMA-2 7B"),
    "llama-13b": ZooEntry("llama", LlamaConfig(hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, max_seq=128),
                          "LLaMA-2 13B"),
    "llama-70b": ZooEntry("llama", LlamaConfig(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8,
                                               max_seq=128),
                          "LLaMA-2 70B (grouped-query attention)"),
    "llama-3-8b": ZooEntry("llama", LlamaConfig(vocab_size=128256, hidden=4096, intermediate=14336, layers=32,
                                                heads=32, kv_heads=8, rope_theta=500000.0, context=8192,
                                                max_seq=128),
                           "LLaMA-3 8B"),
    "llama-405b": ZooEntry("llama", LlamaConfig(vocab_size=128256, hidden=16384, intermediate=53248, layers=126,
                                                heads=128, kv_heads=8, rope_theta=500000.0, context=4096, max_seq=128),
                           "Llama-3.1-405B shape (GQA, 128k vocabulary; 4096 context for planning)"),
    "tiny-bert": ZooEntry("bert", BertConfig(vocab_size=512, hidden=64, intermediate=128, layers=2, heads=4,
                                             max_positions=64, max_seq=64, max_batch=4), "2-layer BERT for tests"),
    "minilm": ZooEntry("bert", BertConfig(), "all-MiniLM-L6-v2 architecture (6-layer BERT encoder)"),
    # Config as read from the shipped GGUF file (tests/models checks the two agree).
    "smollm2-135m": ZooEntry("llama", LlamaConfig(vocab_size=49152, hidden=576, intermediate=1536, layers=30, heads=9,
                                                  kv_heads=3, rope_theta=100000.0, norm_eps=9.999999747378752e-06,
                                                  context=8192, max_seq=256),
                             "SmolLM2-135M-Instruct (tied embeddings, grouped-query attention)"),
}


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise BuilderError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[name]


def build(
    name: str,
    *,
    seed: int | None = None,
    weights: Mapping[str, np.ndarray | QuantizedArray] | None = None,
    dtype: str = "float32",
    activations: str | None = None,
    validate: bool = True,
    **overrides: Any,
) -> onnx.ModelProto:
    """Build zoo model ``name``; ``overrides`` replace config fields (``context=8192``) or pass
    builder options (``kv_cache=False``). Without seed or weights the graph is shape-only.
    ``dtype`` is fp32/float32, fp16/float16 or int8/int4 (weights quantised per block, activations
    ``activations``, float32 by default); see ``splitup.graph.quant``."""
    act, quant = resolve_dtype(dtype, activations)
    e = entry(name)
    fields = set(e.config.__dataclass_fields__)
    cfg = replace(e.config, **{k: v for k, v in overrides.items() if k in fields})
    opts = {k: v for k, v in overrides.items() if k not in fields}
    params = ParamSource(seed=seed, weights=weights, std=0.1 if e.family in ("mlp", "cnn") else 0.02, quant=quant)
    return _BUILDERS[e.family](cfg, params, dtype=act, name=name, validate=validate, **opts)


_CONFIGS: dict[str, type] = {
    "llama": LlamaConfig, "gpt2": GPT2Config, "bert": BertConfig, "mlp": MLPConfig, "cnn": CNNConfig,
}
# Hugging Face config.json names of the fields each family's config has.
_HF_KEYS: dict[str, dict[str, str]] = {
    "llama": {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
              "num_key_value_heads": "kv_heads", "intermediate_size": "intermediate", "vocab_size": "vocab_size",
              "rope_theta": "rope_theta", "rms_norm_eps": "norm_eps", "max_position_embeddings": "context"},
    "gpt2": {"n_embd": "hidden", "n_layer": "layers", "n_head": "heads", "n_positions": "context", "n_ctx": "context",
             "layer_norm_epsilon": "norm_eps", "vocab_size": "vocab_size"},
    "bert": {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
             "intermediate_size": "intermediate", "max_position_embeddings": "max_positions",
             "type_vocab_size": "type_vocab", "layer_norm_eps": "norm_eps", "vocab_size": "vocab_size"},
}
# Hugging Face keys that do not change the inference graph (ids, dropout, training and export details).
_HF_INERT = frozenset({
    "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "bos_token_id",
    "eos_token_id", "pad_token_id", "use_cache", "initializer_range", "tie_word_embeddings", "pretraining_tp",
    "attention_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "classifier_dropout", "gradient_checkpointing", "summary_type",
    "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "task_specific_params", "position_embedding_type",
})
# Hugging Face keys the family's graph hard-codes: any other value would silently build a different model.
_HF_FIXED: dict[str, dict[str, tuple[Any, ...]]] = {
    "llama": {"hidden_act": ("silu",), "rope_scaling": (None,), "attention_bias": (False,), "mlp_bias": (False,)},
    "gpt2": {"activation_function": ("gelu_new",), "scale_attn_weights": (True,),
             "scale_attn_by_inverse_layer_idx": (False,), "reorder_and_upcast_attn": (False,),
             "add_cross_attention": (False,)},
    "bert": {"hidden_act": ("gelu",)},
}


def _config_from_dict(family: str, config: Mapping[str, Any]) -> Any:
    cls = _CONFIGS[family]
    defaults = cls()
    fields = set(cls.__dataclass_fields__)
    hf, fixed = _HF_KEYS.get(family, {}), _HF_FIXED.get(family, {})
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    derived: dict[str, Any] = {}  # keys HF derives from others (head_dim, n_inner): checked once built
    unknown: list[str] = []
    for key, value in config.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
            continue
        if key in fixed:
            if not any(value == ok and type(value) is type(ok) for ok in fixed[key]):
                raise BuilderError(f"{family} config {key}={value!r} is not supported: the graph implements "
                                   f"{key}={fixed[key][0]!r}")
            continue
        if key in _HF_INERT:
            continue
        if (family, key) in (("llama", "head_dim"), ("gpt2", "n_inner")):
            derived[key] = value
            continue
        field = key if key in fields else hf.get(key)
        if field is None:
            unknown.append(key)
            continue
        if field in values and values[field] != value:
            raise BuilderError(f"{family} config gives {field!r} twice: {source[field]}={values[field]!r} and "
                               f"{key}={value!r}")
        values[field], source[field] = value, key
    if unknown:
        known = sorted(fields | set(hf) | set(fixed))
        raise BuilderError(f"unknown {family} config keys: {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    for field, value in values.items():
        default = getattr(defaults, field)
        where = f"{family} config {source[field]}={value!r}"
        if isinstance(default, bool) or not isinstance(default, int | float):  # sequences: sizes, channels
            if not isinstance(value, list | tuple) or len(value) < 2 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise BuilderError(f"{where}: expected a list of at least two positive integers")
            values[field] = tuple(value)
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BuilderError(f"{where}: expected a positive integer")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise BuilderError(f"{where}: expected a positive finite number")
        else:
            values[field] = float(value)
    if family == "llama" and "heads" in values and "kv_heads" not in values:
        values["kv_heads"] = values["heads"]  # as in Hugging Face: no num_key_value_heads means plain MHA
    # A maximum sequence longer than the model's context is never valid: default it to the context.
    limit = "context" if "context" in fields else "max_positions" if "max_positions" in fields else None
    if limit and "max_seq" not in values:
        values["max_seq"] = min(defaults.max_seq, values.get(limit, getattr(defaults, limit)))
    cfg = replace(defaults, **values)
    if hasattr(cfg, "heads"):
        if cfg.hidden % cfg.heads:
            raise BuilderError(f"{family} config: hidden size {cfg.hidden} is not a multiple of {cfg.heads} heads")
        if family == "llama" and (cfg.heads % cfg.kv_heads or cfg.head_dim % 2):
            raise BuilderError(f"{family} config: {cfg.heads} heads need a multiple of {cfg.kv_heads} key/value "
                               f"heads and an even head size (got {cfg.head_dim})")
    expect = {"head_dim": getattr(cfg, "head_dim", None), "n_inner": 4 * getattr(cfg, "hidden", 0)}
    for key, value in derived.items():
        if value is not None and value != expect[key]:
            raise BuilderError(f"{family} config {key}={value!r} is not supported: the graph uses {expect[key]}")
    return cfg


def build_from_config(
    family: str,
    config: Mapping[str, Any],
    *,
    seed: int | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    dtype: str = "float32",
    activations: str | None = None,
    validate: bool = True,
    name: str | None = None,
    **options: Any,
) -> onnx.ModelProto:
    """Build a ``family`` model (llama, gpt2, bert, mlp, cnn) from a plain dict such as parsed JSON.

    Keys are the family config's field names (``hidden``, ``layers``, ``max_seq``, ...) or, for llama,
    gpt2 and bert, the names of a Hugging Face ``config.json`` (``hidden_size``, ``num_key_value_heads``,
    ``rope_theta``, ``rms_norm_eps``, ``max_position_embeddings``, ...); HF keys that do not change the
    inference graph (token ids, dropout) are ignored, and ones the family hard-codes (``hidden_act``)
    must hold the value it implements. Unknown keys, wrong types and inconsistent sizes raise a
    ``BuilderError`` naming them. Missing keys keep the family defaults; ``max_seq`` defaults to at most
    the context. ``options`` go to the family builder (``kv_cache=False``).
    """
    if family not in _CONFIGS:
        raise BuilderError(f"unknown model family {family!r}; known: {', '.join(sorted(_CONFIGS))}")
    if not isinstance(config, Mapping):
        raise BuilderError(f"a {family} config must be a mapping, not {type(config).__name__}")
    cfg = _config_from_dict(family, config)
    act, quant = resolve_dtype(dtype, activations)
    params = ParamSource(seed=seed, weights=weights, std=0.1 if family in ("mlp", "cnn") else 0.02, quant=quant)
    return _BUILDERS[family](cfg, params, dtype=act, name=name or family, validate=validate, **options)

__all__ = [
    "ZOO", "ZooEntry", "build", "build_from_config", "entry", "ParamSource", "LlamaConfig", "GPT2Config", "BertConfig",
    "MLPConfig", "CNNConfig", "build_llama", "build_gpt2", "build_bert", "build_mlp", "build_cnn",
]
