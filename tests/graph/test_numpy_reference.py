"""The zoo's Llama and GPT-2 graphs, run by onnxruntime, against an independent numpy implementation.

Weights are random with O(1) activations (unit-variance embeddings, 1/sqrt(fan_in) matrices, norm
gains and biases away from 1 and 0), so a max abs diff <= 1e-4 in float32 is a real check.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy_reference import Hyper, gpt2_forward, llama_forward
from onnx import numpy_helper

from splitup.graph import zoo

TOL = 1e-4
FORWARD = {"llama": llama_forward, "gpt2": gpt2_forward}


def _random_weights(name: str, seed: int) -> dict[str, np.ndarray]:
    """Every parameter of the seeded zoo graph (read from its initializers), redrawn at O(1) scale."""
    shapes = {t.name: tuple(t.dims) for t in zoo.build(name, seed=seed).graph.initializer
              if not t.name.startswith("rope.")}
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        if len(shape) == 2 and ("wte" in key or "wpe" in key or "embed" in key):
            arr = rng.normal(0.0, 1.0, shape)
        elif len(shape) == 2:
            arr = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        elif key.endswith("bias"):
            arr = rng.normal(0.0, 0.1, shape)
        else:  # norm gains
            arr = 1.0 + rng.normal(0.0, 0.2, shape)
        out[key] = arr.astype(np.float32)
    return out


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def case(request: pytest.FixtureRequest):
    name = request.param
    entry = zoo.entry(name)
    model = zoo.build(name, weights=_random_weights(name, seed=3))
    # The reference gets the graph's own initializers: what onnxruntime runs is what numpy checks.
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if not t.name.startswith("rope.")}
    cfg = entry.config
    hyper = Hyper(layers=cfg.layers, heads=cfg.heads, kv_heads=getattr(cfg, "kv_heads", cfg.heads),
                  head_dim=cfg.head_dim, norm_eps=cfg.norm_eps, rope_theta=getattr(cfg, "rope_theta", 10000.0))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return name, cfg, hyper, weights, sess, FORWARD[entry.family]


def _feeds(cfg, hyper: Hyper, ids: np.ndarray, cache) -> dict[str, np.ndarray]:
    """The growing form: caches hold the tokens so far plus room for this call's, written at the length."""
    feeds = {"input_ids": ids.astype(np.int64)}
    room = ((0, 0), (0, 0), (0, ids.shape[1]), (0, 0))
    for i, (k, v) in enumerate(cache):
        feeds[f"past.{i}.key"] = np.pad(k.astype(np.float32), room)
        feeds[f"past.{i}.value"] = np.pad(v.astype(np.float32), room)
        feeds[f"past.{i}.length"] = np.array([k.shape[2]], np.int64)
    return feeds


def _empty(hyper: Hyper) -> list[tuple[np.ndarray, np.ndarray]]:
    z = np.zeros((1, hyper.kv_heads, 0, hyper.head_dim), np.float32)
    return [(z, z)] * hyper.layers


def _split(sess: ort.InferenceSession, outs: list[np.ndarray]):
    names = [o.name for o in sess.get_outputs()]
    by = dict(zip(names, outs, strict=True))
    layers = sum(n.endswith(".key") for n in names)
    return by["logits"], [(by[f"present.{i}.key"], by[f"present.{i}.value"]) for i in range(layers)]


def _close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, what
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert diff <= TOL, f"{what}: max abs diff {diff:.2e}"


def test_full_pass_matches_numpy(case) -> None:
    name, cfg, hyper, weights, sess, forward = case
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 12))
    logits, present = _split(sess, sess.run(None, _feeds(cfg, hyper, ids, _empty(hyper))))
    ref_logits, ref_cache = forward(weights, hyper, ids)
    assert np.abs(ref_logits).max() > 1.0  # activations are O(1): the tolerance means something
    _close(logits, ref_logits, f"{name} logits")
    for i, ((k, v), (rk, rv)) in enumerate(zip(present, ref_cache, strict=True)):
        _close(k, rk, f"{name} present.{i}.key")
        _close(v, rv, f"{name} present.{i}.value")


def test_kv_cache_prefill_and_three_steps_match_numpy(case) -> None:
    name, cfg, hyper, weights, sess, forward = case
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 8))
    cache, ref_cache = _empty(hyper), None
    for step, (lo, hi) in enumerate([(0, 5), (5, 6), (6, 7), (7, 8)]):
        chunk = ids[:, lo:hi]
        logits, cache = _split(sess, sess.run(None, _feeds(cfg, hyper, chunk, cache)))
        ref_logits, ref_cache = forward(weights, hyper, chunk, ref_cache)
        _close(logits, ref_logits, f"{name} step {step} logits")
        assert cache[0][0].shape[2] == hi
        for i, ((k, v), (rk, rv)) in enumerate(zip(cache, ref_cache, strict=True)):
            _close(k, rk, f"{name} step {step} present.{i}.key")
            _close(v, rv, f"{name} step {step} present.{i}.value")
    # The cached steps give the same last-token logits as numpy's full pass over all 8 tokens.
    full, _ = forward(weights, hyper, ids)
    _close(logits[:, -1], full[:, -1], f"{name} cached vs full")


def test_reference_is_sensitive_to_the_details(case) -> None:
    """Guards against a reference that agrees by accident: a wrong mask or rotary offset would differ."""
    name, cfg, hyper, weights, sess, forward = case
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 6))
    logits, _ = _split(sess, sess.run(None, _feeds(cfg, hyper, ids, _empty(hyper))))
    shifted = [(np.zeros((1, hyper.kv_heads, 1, hyper.head_dim)),) * 2] * hyper.layers
    wrong, _ = forward(weights, hyper, ids, shifted)  # an extra zero key/value at position 0
    assert np.max(np.abs(logits - wrong)) > 100 * TOL


def test_models_are_valid_onnx(case) -> None:
    name, *_ = case
    onnx.checker.check_model(zoo.build(name, seed=0), full_check=True)
