"""``zoo.build_from_config``: a model family from a plain dict (own field names or HF config.json names)."""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest

from splitup.graph import BuilderError, zoo

# Llama-2-7b-hf's config.json, verbatim.
LLAMA2_7B_HF = json.loads("""{
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
  "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000
}""")

# openai-community/gpt2's config.json, verbatim.
GPT2_HF = json.loads("""{
  "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
  "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
  "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
  "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
  "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
  "vocab_size": 50257
}""")

TINY_LLAMA_HF = {
    "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 172, "vocab_size": 512, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128, "max_seq": 64,
}


def _params(model) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if not t.name.startswith("rope."))


def test_hf_llama_dict_builds_the_same_graph_as_the_zoo_entry() -> None:
    from_dict = zoo.build_from_config("llama", TINY_LLAMA_HF, seed=0, name="tiny-llama")
    assert from_dict.SerializeToString() == zoo.build("tiny-llama", seed=0).SerializeToString()


def test_own_field_names_work_too_and_the_graph_runs() -> None:
    cfg = {"vocab_size": 100, "hidden": 32, "intermediate": 64, "layers": 2, "heads": 4, "kv_heads": 1,
           "context": 32, "max_seq": 16}
    model = zoo.build_from_config("llama", json.loads(json.dumps(cfg)), seed=1, kv_cache=False)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {"input_ids": np.array([[1, 2, 3]])})
    assert logits.shape == (1, 3, 100) and np.isfinite(logits).all()


def test_real_llama2_config_json() -> None:
    model = zoo.build_from_config("llama", {**LLAMA2_7B_HF, "num_hidden_layers": 2})
    d, i, v = 4096, 11008, 32000
    assert _params(model) == 2 * v * d + d + 2 * (4 * d * d + 3 * d * i + 2 * d)
    # Every layer of the full config.json: LLaMA-2-7B has 6.74B parameters (shape-only, nothing allocated).
    assert _params(zoo.build_from_config("llama", LLAMA2_7B_HF, validate=False)) == 6_738_415_616


def test_real_gpt2_config_json_is_the_zoo_gpt2() -> None:
    small = {**GPT2_HF, "n_layer": 1, "n_embd": 64, "n_head": 4, "vocab_size": 300, "max_seq": 32}
    model = zoo.build_from_config("gpt2", small, seed=0)
    assert [i.name for i in model.graph.input] == ["input_ids", "past.0.key", "past.0.value", "past.0.length"]
    full = zoo.build_from_config("gpt2", GPT2_HF, validate=False)
    assert _params(full) == _params(zoo.build("gpt2", validate=False))


def test_small_families_from_dicts() -> None:
    mlp = zoo.build_from_config("mlp", {"sizes": [8, 16, 4], "max_batch": 2}, seed=0)
    out = ort.InferenceSession(mlp.SerializeToString()).run(None, {"x": np.ones((2, 8), np.float32)})[0]
    assert out.shape == (2, 4)
    cnn = zoo.build_from_config("cnn", {"channels": [3, 4], "image": 8, "classes": 3, "max_batch": 1})
    assert [o.name for o in cnn.graph.output] == ["logits"]
    bert = zoo.build_from_config("bert", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                          "intermediate_size": 64, "vocab_size": 50, "max_position_embeddings": 16,
                                          "hidden_act": "gelu", "max_batch": 2})
    assert bert.graph.input[0].name == "input_ids"


def test_unknown_keys_are_named() -> None:
    with pytest.raises(BuilderError, match="unknown llama config keys: flash_attention, sliding_window") as info:
        zoo.build_from_config("llama", {**TINY_LLAMA_HF, "sliding_window": 4096, "flash_attention": True})
    assert "hidden_size" in str(info.value)  # the known keys are listed
    with pytest.raises(BuilderError, match="unknown mlp config keys: hidden_size"):
        zoo.build_from_config("mlp", {"hidden_size": 4})


@pytest.mark.parametrize(
    ("family", "config", "message"),
    [
        ("llama", {"hidden_size": "4096"}, "hidden_size='4096': expected a positive integer"),
        ("llama", {"num_hidden_layers": True}, "expected a positive integer"),
        ("llama", {"num_hidden_layers": 0}, "expected a positive integer"),
        ("llama", {"vocab_size": 12.0}, "expected a positive integer"),
        ("llama", {"rms_norm_eps": -1e-6}, "expected a positive finite number"),
        ("llama", {"rope_theta": float("nan")}, "expected a positive finite number"),
        ("mlp", {"sizes": [8]}, "at least two positive integers"),
        ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ("llama", {"attention_bias": True}, "attention_bias"),
        ("llama", {"head_dim": 64, "hidden_size": 64, "num_attention_heads": 4}, "head_dim=64"),
        ("gpt2", {"activation_function": "relu"}, "activation_function"),
        ("gpt2", {"n_inner": 1000}, "n_inner=1000"),
        ("llama", {"hidden": 64, "hidden_size": 128}, "gives 'hidden' twice"),
        ("gpt2", {"n_ctx": 1024, "n_positions": 2048}, "gives 'context' twice"),
        ("llama", {"hidden_size": 100, "num_attention_heads": 8}, "not a multiple of 8 heads"),
        ("llama", {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3}, "key/value heads"),
        ("resnet", {}, "unknown model family 'resnet'"),
        ("llama", [("hidden_size", 64)], "must be a mapping"),
        ("llama", {1: 2}, "unknown llama config keys: 1"),
    ],
)
def test_bad_configs_raise_clear_errors(family: str, config: object, message: str) -> None:
    with pytest.raises(BuilderError, match=re.escape(message)):
        zoo.build_from_config(family, config, validate=False)  # type: ignore[arg-type]


def test_defaults_follow_hugging_face() -> None:
    # No num_key_value_heads: multi-head attention, one key/value head per query head.
    model = zoo.build_from_config("llama", {k: v for k, v in TINY_LLAMA_HF.items() if k != "num_key_value_heads"})
    past = next(i for i in model.graph.input if i.name == "past.0.key")
    assert past.type.tensor_type.shape.dim[1].dim_value == 4
    # No max_seq: the family default, but never longer than the context.
    short = {k: v for k, v in TINY_LLAMA_HF.items() if k != "max_seq"}
    meta = {p.key: p.value for p in zoo.build_from_config("llama", short).metadata_props}
    assert json.loads(meta["splitup.dim_max"]) == {"past": 128, "seq": 128}
    assert zoo.build_from_config("gpt2", {"n_ctx": 64, "n_positions": 64, "n_layer": 1, "n_embd": 16, "n_head": 2,
                                          "vocab_size": 10}).graph.input[0].name == "input_ids"
