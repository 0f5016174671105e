"""SmolLM2-135M from its GGUF package: our graph computes what transformers computes on the same weights."""

import numpy as np
import pytest

from splitup.chat import SPECIAL_TOKENS
from splitup.graph import zoo
from splitup.models.generate import generate, pipeline_step
from splitup.models.registry import spec
from splitup.runtime.local import LocalPipeline

from .conftest import CONTINUATION, PROMPT, PROMPT_IDS
from .splits import plan_with_tasks

torch = pytest.importorskip("torch", reason="the reference needs the torch extra")


def test_imported_config_is_the_zoo_entry(smollm):
    assert smollm.config == zoo.entry("smollm2-135m").config.__class__(
        **{**zoo.entry("smollm2-135m").config.__dict__, "max_seq": 64})
    assert sum(v.size for v in smollm.hf_weights.values()) == spec("smollm2-135m").params
    assert "lm_head.weight" not in smollm.hf_weights  # tied: the graph's lm_head is the embedding
    assert smollm.eos_ids == (2,) and smollm.bos_id == 1


def test_second_import_comes_from_the_hashed_cache(smollm, model_cache):
    from splitup.models.real import import_weights

    entries = list((model_cache / "smollm2-135m").iterdir())
    assert len(entries) == 1 and (entries[0] / "weights.safetensors").is_file()
    again = import_weights("smollm2-135m")
    for name in ("model.embed_tokens.weight", "model.layers.7.self_attn.q_proj.weight"):
        np.testing.assert_array_equal(again.hf_weights[name], smollm.hf_weights[name])
    assert again.tokenizer_json and again.config == zoo.entry("smollm2-135m").config


def test_logits_match_transformers(decoder, hf_llama):
    ids = np.array([PROMPT_IDS + CONTINUATION], np.int64)
    feeds = decoder.layout.ensure_capacity({"input_ids": ids, **decoder._empty}, "growing")  # room for all of ids
    ours = decoder.session.run(["logits"], feeds)[0]
    with torch.no_grad():
        ref = hf_llama(torch.from_numpy(ids)).logits.numpy()
    diff = float(np.abs(ours - ref).max())
    assert diff <= 1e-4, diff
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_greedy_continuation_matches_transformers(smollm, decoder, hf_llama):
    assert smollm.encode(PROMPT) == PROMPT_IDS
    with torch.no_grad():
        ref = hf_llama.generate(torch.tensor([PROMPT_IDS]), max_new_tokens=32, do_sample=False)[0, 9:].tolist()
    assert ref == CONTINUATION
    # Prefill in chunks of 4 tokens, then one token per step through the KV cache.
    assert generate(decoder, PROMPT_IDS, 32, smollm.eos_ids, chunk=4) == CONTINUATION
    assert decoder.length == len(PROMPT_IDS) + 31
    assert smollm.decode(CONTINUATION).startswith(" girl named Emma who loved to play")


def test_greedy_continuation_after_splitting_into_three_tasks(smollm, decoder, tmp_path):
    result = plan_with_tasks(smollm.model, "smollm2-135m", 3, tmp_path)
    assert sum(len(t.state) for t in result.plan.tasks) == 3 * smollm.config.layers  # key, value, length
    pipe = LocalPipeline(tmp_path)
    assert generate(pipeline_step(pipe), PROMPT_IDS, 32, smollm.eos_ids, chunk=smollm.config.max_seq) == CONTINUATION
    # The split graph's logits equal the whole graph's, not just their argmax.
    pipe.reset()
    ids = np.array(PROMPT_IDS, np.int64)
    np.testing.assert_allclose(pipeline_step(pipe)(ids), decoder(ids), atol=1e-5, rtol=0)


def test_chat_template_and_eos(smollm, decoder):
    prompt = smollm.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = smollm.encode(prompt)
    assert ids[0] == 1 and ids.count(2) == 2  # control tokens are single ids, never split by BPE
    out = generate(decoder, ids, 40, smollm.eos_ids, chunk=smollm.config.max_seq)
    assert out[-1] == 2 and len(out) < 40
    assert smollm.decode(out) == "The capital of France is Paris."


def test_tokenizer_matches_transformers(smollm):
    transformers = pytest.importorskip("transformers")
    path = spec("smollm2-135m").path()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = [PROMPT, "Héllo wörld! 12345 3.14159", "def f(x):\n    return x**2  # 🚀\n\n\ttabs  spaces",
             "<|im_start|>user\nhi<|im_end|>\n", "日本語のテキストと emoji 👩‍👩‍👧"]
    for text in texts:
        ids = smollm.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert smollm.decode(ids, skip_special_tokens=False) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert smollm.chat_prompt(messages) == ref.apply_chat_template(messages, tokenize=False,
                                                                    add_generation_prompt=True)
    # The special tokens a template may write are the ones transformers reads from the file; a chat is
    # encoded as apply_chat_template encodes it (without adding special tokens: the template wrote them).
    assert smollm.special_tokens == {k: v for k, v in ref.special_tokens_map.items() if k in SPECIAL_TOKENS}
    assert smollm.special_tokens["bos_token"] == "<|im_start|>"
    expected = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert smollm.encode(smollm.chat_prompt(messages), add_special_tokens=False) == list(expected)


def test_cli_generates_the_greedy_continuation(smollm, monkeypatch, capsys):
    from splitup.cli import main
    from splitup.models import real

    monkeypatch.setattr(real, "load_real_model", lambda name, dtype="fp32": smollm)  # the session's model, not a second load
    assert main(["models", "generate", PROMPT, "--max-new-tokens", "32"]) == 0
    assert capsys.readouterr().out == smollm.decode(CONTINUATION) + "\n"
