import numpy as np
import onnxruntime as ort
import pytest

from splitup.graph import BuilderError, zoo


def session(model):
    return ort.InferenceSession(model.SerializeToString())


def empty_cache(cfg, capacity: int) -> dict[str, np.ndarray]:
    kvh = getattr(cfg, "kv_heads", cfg.heads)
    cache = {f"past.{i}.{kind}": np.zeros((1, kvh, capacity, cfg.head_dim), np.float32)
             for i in range(cfg.layers) for kind in ("key", "value")}
    return cache | {f"past.{i}.length": np.zeros(1, np.int64) for i in range(cfg.layers)}


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_kv_cache_steps_reproduce_the_full_pass(name):
    cfg = zoo.entry(name).config
    sess = session(zoo.build(name, seed=0))
    names = [o.name for o in sess.get_outputs()]
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 10))
    full = sess.run(None, {"input_ids": ids, **empty_cache(cfg, 10)})[0]
    for capacity in (None, cfg.context):  # the growing form, then the fixed one (the whole context)
        out = sess.run(None, {"input_ids": ids[:, :6], **empty_cache(cfg, capacity or 6)})
        steps = [out[0]]
        for t in range(6, 10):
            past = {n.replace("present", "past"): v for n, v in zip(names[1:], out[1:], strict=True)}
            if capacity is None:  # one more slot for the token this step writes
                past = {k: np.pad(v, ((0, 0), (0, 0), (0, 1), (0, 0))) if v.ndim == 4 else v for k, v in past.items()}
            out = sess.run(None, {"input_ids": ids[:, t : t + 1], **past})
            steps.append(out[0])
        np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
        by = dict(zip(names, out, strict=True))
        assert by["present.0.key"].shape == (1, getattr(cfg, "kv_heads", cfg.heads), capacity or 10, cfg.head_dim)
        assert by["present.0.length"].tolist() == [10]


def test_small_models_run_with_declared_shapes():
    mlp = session(zoo.build("mlp", seed=0))
    assert mlp.run(None, {"x": np.ones((5, 64), np.float32)})[0].shape == (5, 10)
    cnn = session(zoo.build("cnn", seed=0))
    assert cnn.run(None, {"image": np.ones((2, 3, 32, 32), np.float32)})[0].shape == (2, 10)
    bert = session(zoo.build("tiny-bert", seed=0))
    ids = np.array([[1, 5, 7, 0], [3, 2, 0, 0]])
    hidden, emb = bert.run(None, {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)})
    assert hidden.shape == (2, 4, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)


def test_llama_70b_shape_only_graph_is_complete():
    model = zoo.build("llama-70b")
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if not t.name.startswith("rope."))
    assert 68.5e9 < params < 69.5e9, params  # LLaMA-2-70B has 68.98B parameters
    assert model.ByteSize() < 20_000_000


def test_weights_must_match_the_graph():
    w = {"layers.0.weight": np.zeros((64, 256), np.float32)}
    with pytest.raises(BuilderError, match="no entry for parameter"):
        zoo.build("mlp", weights=w)
    with pytest.raises(BuilderError, match="unknown zoo model"):
        zoo.build("gpt-5")
