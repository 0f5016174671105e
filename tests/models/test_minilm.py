"""all-MiniLM-L6-v2 from its package: sentence embeddings equal transformers + mean pooling + L2 norm."""

import numpy as np
import onnxruntime as ort
import pytest

from splitup.models.real import build_real
from splitup.models.registry import spec
from splitup.runtime.local import LocalPipeline

from .conftest import need
from .splits import plan_with_tasks

torch = pytest.importorskip("torch", reason="the reference needs the torch extra")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The capital of France is Paris.",
    "A man is playing a guitar.",
    "Ünïcödé, numbers 12345 and punctuation!?",
    "short",
]


@pytest.fixture(scope="module")
def reference(minilm):
    """transformers' BertModel from the package directory, pooled as sentence-transformers does."""
    directory = str(spec("minilm").path().parent)
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    hf = transformers.AutoModel.from_pretrained(directory).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
    return tok, batch, emb.numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_tokenizer_matches_transformers(minilm, reference):
    tok, batch, _ = reference
    feeds = minilm.encode_batch(SENTENCES)
    np.testing.assert_array_equal(feeds["input_ids"], batch["input_ids"].numpy())
    np.testing.assert_array_equal(feeds["attention_mask"], batch["attention_mask"].numpy())
    long = " ".join(["word"] * 400)
    assert minilm.encode(long) == tok(long, truncation=True, max_length=256)["input_ids"]
    assert len(minilm.encode(long)) == 256


def test_sentence_embeddings_match_transformers(minilm, reference):
    feeds = minilm.encode_batch(SENTENCES)
    emb = ort.InferenceSession(minilm.model.SerializeToString()).run(["sentence_embedding"], feeds)[0]
    cos = _cosines(emb, reference[2])
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(emb, reference[2], atol=1e-5)
    # Meaning, not just numbers: the two unrelated sentences are far apart, a sentence is near itself.
    assert float(emb[0] @ emb[1]) < 0.3


def test_sentence_embeddings_after_splitting_into_two_tasks(minilm, reference, tmp_path):
    plan_with_tasks(minilm.model, "minilm", 2, tmp_path)
    emb = LocalPipeline(tmp_path).run(minilm.encode_batch(SENTENCES))["sentence_embedding"]
    assert _cosines(emb, reference[2]).min() >= 0.9999


def test_zoo_name_resolves_to_the_real_weights(minilm):
    need("minilm")
    model = build_real("minilm")
    assert [i.name for i in model.graph.initializer] == [i.name for i in minilm.model.graph.initializer]
    assert all(a.raw_data == b.raw_data for a, b in zip(model.graph.initializer, minilm.model.graph.initializer,
                                                        strict=True))
