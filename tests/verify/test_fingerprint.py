"""TOPLOC-style fingerprints: compact, tolerant of engine noise, not fooled by a different tensor."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from verify_models import build, input_for, skip_one_layer

from splitup.verify import calib_models as cm
from splitup.verify.engines import run_float64, run_onnxruntime
from splitup.verify.errors import BadFingerprint
from splitup.verify.fingerprint import MAGIC, fingerprint, fingerprint_matches, parse_fingerprint


def test_layout_and_roundtrip() -> None:
    x = np.random.default_rng(0).standard_normal((4, 8, 16)).astype(np.float32)
    fp = fingerprint(x, k=32)
    assert fp[:4] == MAGIC and len(fp) == 4 + 3 + 3 * 8 + 4 + 32 * (4 + 4)
    parsed = parse_fingerprint(fp)
    assert parsed.shape == (4, 8, 16) and parsed.k == 32
    top = np.sort(np.argsort(-np.abs(x.reshape(-1)), kind="stable")[:32])
    assert parsed.positions.tolist() == top.tolist()
    assert np.array_equal(parsed.values, x.reshape(-1)[top])
    assert fingerprint_matches(fp, x)


def test_k_is_capped_by_size_and_ties_break_by_position() -> None:
    x = np.ones(5, np.float32)
    assert parse_fingerprint(fingerprint(x, k=64)).k == 5
    assert parse_fingerprint(fingerprint(x, k=2)).positions.tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["mlp", "attention"])
def test_honest_engines_match_cheats_do_not(kind: str) -> None:
    for seed in range(5):
        model = build(kind, seed)
        feeds = {"x": input_for(model, seed + 100)}
        (y,) = run_onnxruntime(model, feeds).values()
        fp = fingerprint(y, k=16)
        (y64,) = run_float64(model, feeds).values()
        (y_opt,) = run_onnxruntime(model, feeds, level="disable", threads=2).values()
        assert fingerprint_matches(fp, y64) and fingerprint_matches(fp, y_opt)
        (truncated,) = run_onnxruntime(build(kind, seed, **skip_one_layer(kind)), feeds).values()
        (stale,) = run_onnxruntime(model, {"x": input_for(model, seed + 999)}).values()
        (int8,) = run_onnxruntime(cm.quantize_int8(model), feeds).values()
        for cheat in (truncated, stale, np.zeros_like(y), int8):
            assert not fingerprint_matches(fp, cheat)


def test_a_hidden_larger_value_is_caught() -> None:
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    fp = fingerprint(x, k=8)
    forged = x.copy()
    # Recorded positions untouched, but a non-recorded element now beats the recorded top-k.
    free = np.setdiff1d(np.arange(1000), parse_fingerprint(fp).positions.astype(np.intp))[0]
    forged[free] = 100.0
    assert not fingerprint_matches(fp, forged)
    assert not fingerprint_matches(fp, x.reshape(10, 100))


def test_nonfinite_values_are_recorded() -> None:
    x = np.array([1.0, np.nan, 3.0, -np.inf], np.float32)
    fp = fingerprint(x, k=2)
    assert set(parse_fingerprint(fp).positions.tolist()) == {1, 3}
    assert fingerprint_matches(fp, x)
    y = x.copy()
    y[1] = 0.0
    assert not fingerprint_matches(fp, y)


@pytest.mark.parametrize(
    "data",
    [b"", b"XXXX\x01\x04\x01", MAGIC + b"\x02\x04\x00" + struct.pack("<I", 1),
     MAGIC + b"\x01\x05\x00" + struct.pack("<I", 1)],
)
def test_malformed_bytes(data: bytes) -> None:
    with pytest.raises(BadFingerprint):
        parse_fingerprint(data)


def test_inconsistent_fingerprints_are_refused() -> None:
    fp = bytearray(fingerprint(np.arange(10, dtype=np.float32), k=3))
    with pytest.raises(BadFingerprint, match="length"):
        parse_fingerprint(bytes(fp[:-1]))
    head = 4 + 3 + 8
    # Positions out of order.
    bad = fp.copy()
    bad[head + 4: head + 8], bad[head + 8: head + 12] = fp[head + 8: head + 12], fp[head + 4: head + 8]
    with pytest.raises(BadFingerprint, match="ascending"):
        parse_fingerprint(bytes(bad))
    with pytest.raises(BadFingerprint):
        fingerprint(np.zeros(0, np.float32))
    with pytest.raises(BadFingerprint):
        fingerprint(np.ones(3), k=0)


def test_top_k_selection_equals_a_full_sort() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        # Few distinct values, so ties at the k-th magnitude are common.
        x = rng.integers(-4, 5, size=int(rng.integers(1, 300))).astype(np.float32)
        x[rng.random(x.size) < 0.05] = np.nan
        k = int(rng.integers(1, 80))
        key = np.where(np.isnan(x), np.inf, np.abs(x))
        expected = np.sort(np.lexsort((np.arange(x.size), -key))[:k])
        assert parse_fingerprint(fingerprint(x, k)).positions.tolist() == expected.tolist()
