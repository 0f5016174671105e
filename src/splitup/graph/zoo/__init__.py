"""The model zoo: families written with the builder API, and named configurations of them.

``build("llama-70b")`` gives a shape-only planning graph (no weights in memory);
``build("tiny-llama", seed=0)`` a runnable one with seeded random weights;
``build("gpt2", weights=...)`` binds real weights by parameter name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from splitup.graph.errors import BuilderError
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
    "tiny-bert": ZooEntry("bert", BertConfig(vocab_size=512, hidden=64, intermediate=128, layers=2, heads=4,
                                             max_positions=64, max_seq=64, max_batch=4), "2-layer BERT for tests"),
    "minilm": ZooEntry("bert", BertConfig(), "all-MiniLM-L6-v2 architecture (6-layer BERT encoder)"),
}


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise BuilderError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[name]


def build(
    name: str,
    *,
    seed: int | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    dtype: str = "float32",
    validate: bool = True,
    **overrides: Any,
) -> onnx.ModelProto:
    """Build zoo model ``name``; ``overrides`` replace config fields (``context=8192``) or pass
    builder options (``kv_cache=False``). Without seed or weights the graph is shape-only."""
    e = entry(name)
    fields = set(e.config.__dataclass_fields__)
    cfg = replace(e.config, **{k: v for k, v in overrides.items() if k in fields})
    opts = {k: v for k, v in overrides.items() if k not in fields}
    params = ParamSource(seed=seed, weights=weights, std=0.1 if e.family in ("mlp", "cnn") else 0.02)
    return _BUILDERS[e.family](cfg, params, dtype=dtype, name=name, validate=validate, **opts)


__all__ = [
    "ZOO", "ZooEntry", "build", "entry", "ParamSource", "LlamaConfig", "GPT2Config", "BertConfig",
    "MLPConfig", "CNNConfig", "build_llama", "build_gpt2", "build_bert", "build_mlp", "build_cnn",
]
