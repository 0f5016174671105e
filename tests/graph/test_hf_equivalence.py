"""Our zoo graphs against Hugging Face's own implementations on the same random weights."""

import numpy as np
import onnxruntime as ort
import pytest

from splitup.graph import zoo
from splitup.models.convert import bert_from_hf, gpt2_from_hf, llama_from_hf

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install -e '.[torch]'")
transformers = pytest.importorskip("transformers", reason="transformers comes with the torch extra")


def state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def ours(model, **feeds):
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def test_llama_matches_transformers():
    cfg = zoo.entry("tiny-llama").config
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.context, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False)).eval()
    model = zoo.build("tiny-llama", weights=llama_from_hf(state_dict(hf), cfg.layers), kv_cache=False)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours(model, input_ids=ids)[0], ref, atol=1e-4)


def test_gpt2_matches_transformers():
    cfg = zoo.entry("tiny-gpt2").config
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_embd=cfg.hidden, n_layer=cfg.layers, n_head=cfg.heads,
        n_positions=cfg.context)).eval()
    model = zoo.build("tiny-gpt2", weights=gpt2_from_hf(state_dict(hf), cfg.layers), kv_cache=False)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours(model, input_ids=ids)[0], ref, atol=1e-4)


def test_bert_matches_transformers():
    cfg = zoo.entry("tiny-bert").config
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.max_positions, layer_norm_eps=cfg.norm_eps), add_pooling_layer=False).eval()
    model = zoo.build("tiny-bert", weights=bert_from_hf(state_dict(hf), cfg.layers))
    ids = np.array([[2, 40, 9, 17, 0, 0], [5, 6, 7, 8, 9, 10]])
    mask = (ids > 0).astype(np.int64)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hidden, _ = ours(model, input_ids=ids, attention_mask=mask)
    np.testing.assert_allclose(hidden * mask[..., None], ref * mask[..., None], atol=1e-4)
