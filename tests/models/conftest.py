"""Each real model is imported and built once per test session (it is the slow part)."""

import os

import numpy as np
import pytest

from splitup.models.registry import spec

# Everything here is read from installed packages; a reference must never try a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Recorded once with transformers' own GGUF loader (AutoModelForCausalLM.from_pretrained(gguf_file=...)),
# greedy, float32: the prompt's ids and its 32-token continuation.
PROMPT = "Once upon a time, there was a little"
PROMPT_IDS = [6403, 1980, 253, 655, 28, 665, 436, 253, 1838]
CONTINUATION = [8180, 3365, 20391, 617, 5732, 288, 1238, 281, 260, 2388, 30, 2306, 736, 1129, 685, 288, 260,
                10724, 284, 1238, 351, 874, 2428, 30, 1963, 1194, 28, 1041, 4041, 288, 685, 288]


def need(name: str) -> None:
    if spec(name).path() is None:
        pytest.skip(f"{spec(name).package} is not installed (make venv installs it)")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """A private cache, so the suite also exercises the first-time import and never touches ~/.cache."""
    old = os.environ.get("SPLITUP_CACHE")
    path = tmp_path_factory.mktemp("splitup-cache")
    os.environ["SPLITUP_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPLITUP_CACHE", None)
    else:
        os.environ["SPLITUP_CACHE"] = old


@pytest.fixture(scope="session")
def smollm(model_cache):
    need("smollm2-135m")
    from splitup.models.real import load_real_model

    # max_seq 64: the reference logits are compared over prompt + continuation (41 tokens) in one call.
    return load_real_model("smollm2-135m", max_seq=64)


@pytest.fixture
def decoder(smollm):
    """One onnxruntime session of the whole graph for the session (creating one takes seconds), reset per test."""
    global _DECODER
    from splitup.models.generate import OrtDecoder

    if _DECODER is None:
        _DECODER = OrtDecoder(smollm.model)
    _DECODER.reset()
    return _DECODER


_DECODER = None


@pytest.fixture(scope="session")
def minilm(model_cache):
    need("minilm")
    from splitup.models.real import load_real_model

    return load_real_model("minilm")


@pytest.fixture(scope="session")
def hf_llama(smollm):
    """transformers' LlamaForCausalLM on the same dequantised float32 weights.

    Built on the meta device and filled from our import: transformers' own GGUF loader takes ~13 s
    and gives the same numbers (checked when the importer was written; the greedy continuation
    above is its output).
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    c = smollm.config
    hc = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden, intermediate_size=c.intermediate,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
        max_position_embeddings=c.context, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hc)
    result = hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in smollm.hf_weights.items()},
                                strict=False, assign=True)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys
    # Buffers are not in the state dict: make the rotary tables for real, then tie lm_head again.
    hf.model.rotary_emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config=hc)
    hf.tie_weights()
    torch.set_num_threads(2)
    return hf.eval()
