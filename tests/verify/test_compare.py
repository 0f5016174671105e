"""The comparison rule: honest engines always agree with each other, realistic cheats never do."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from verify_models import build, input_for, skip_one_layer

from splitup.verify import calib_models as cm
from splitup.verify.compare import (
    DEFAULT_TOLERANCE,
    Tolerance,
    compare_outputs,
    compare_tensor,
    precision_class,
    tolerance_for,
)
from splitup.verify.engines import honest_engines, run_onnxruntime

SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _logits(kind: str) -> list[str]:
    return ["logits"] if kind == "mlp" else []


@SLOW
@given(kind=st.sampled_from(["mlp", "attention"]), model_seed=st.integers(0, 2**31 - 1),
       input_seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_honest_engines_never_fail(kind: str, model_seed: int, input_seed: int, scale: float) -> None:
    model = build(kind, model_seed)
    feeds = {"x": input_for(model, input_seed, scale)}
    outs = {name: run(model, feeds) for name, run in honest_engines().items()}
    for a, b in itertools.permutations(outs, 2):
        verdict = compare_outputs(outs[a], outs[b], logits=_logits(kind))
        assert verdict.match, (a, b, verdict)
        assert all(t.bad_fraction == 0 for t in verdict.tensors)


def _cheats(kind: str, model_seed: int, x: np.ndarray, honest: dict) -> dict[str, dict]:
    model = build(kind, model_seed)
    rng = np.random.default_rng(model_seed ^ 0x5EED)
    (name, y), = honest.items()
    rms = float(np.sqrt(np.mean(np.square(y))))
    other = rng.standard_normal(x.shape).astype(np.float32) * float(np.std(x))
    return {
        "truncated": run_onnxruntime(build(kind, model_seed, **skip_one_layer(kind)), {"x": x}),
        "int8": run_onnxruntime(cm.quantize_int8(model), {"x": x}),
        "noise": {name: (rms * rng.standard_normal(y.shape)).astype(np.float32)},
        "zeros": {name: np.zeros_like(y)},
        "stale": run_onnxruntime(model, {"x": other}),
        "subtle": {name: (y + 0.01 * rms * rng.standard_normal(y.shape)).astype(np.float32)},
    }


@SLOW
@given(kind=st.sampled_from(["mlp", "attention"]), model_seed=st.integers(0, 2**31 - 1),
       input_seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_realistic_cheats_always_fail(kind: str, model_seed: int, input_seed: int, scale: float) -> None:
    model = build(kind, model_seed)
    x = input_for(model, input_seed, scale)
    validator = run_onnxruntime(model, {"x": x}, level="disable", threads=2)
    for cheat, out in _cheats(kind, model_seed, x, run_onnxruntime(model, {"x": x})).items():
        verdict = compare_outputs(out, validator, logits=_logits(kind))
        assert not verdict.match, (cheat, verdict)
        assert verdict.reason


def test_names_shapes_dtypes_must_match() -> None:
    a = np.ones((2, 3), np.float32)
    assert not compare_outputs({"y": a}, {"z": a}).match
    assert "names" in compare_outputs({"y": a, "z": a}, {"y": a}).reason
    assert "shape" in compare_outputs({"y": a.reshape(3, 2)}, {"y": a}).reason
    assert "dtype" in compare_outputs({"y": a.astype(np.float64)}, {"y": a}).reason
    with pytest.raises(KeyError):
        compare_outputs({"y": a}, {"y": a}, logits=["nope"])


def test_integer_tensors_are_exact() -> None:
    tokens = np.array([[3, 1, 4, 1, 5]], np.int64)
    assert compare_outputs({"t": tokens}, {"t": tokens.copy()}).match
    off = tokens.copy()
    off[0, 2] = 5
    v = compare_outputs({"t": off}, {"t": tokens})
    assert not v.match and v.tensors[0].bad_fraction == pytest.approx(0.2)
    assert compare_outputs({"m": np.array([True, False])}, {"m": np.array([True, False])}).match


def test_bad_fraction_bound_allows_rare_outliers_only() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(100_000).astype(np.float32)
    few = ref.copy()
    few[:50] += 1.0  # 0.05% of the elements, far off
    v = compare_tensor("y", few, ref)
    assert v.bad_fraction == pytest.approx(5e-4)
    # Allowed by the fraction bound, yet still caught by the norm bound: 50 large errors are big in L2.
    assert "relative L2" in v.reason
    lenient = Tolerance(max_rel_l2=1.0)
    assert compare_tensor("y", few, ref, lenient).match
    many = ref.copy()
    many[:500] += 1.0
    assert "out of tolerance" in compare_tensor("y", many, ref, lenient).reason


def test_nonfinite_values() -> None:
    ref = np.array([1.0, np.nan, np.inf, -np.inf, 2.0] * 1000, np.float32)
    assert compare_tensor("y", ref.copy(), ref).match
    flipped = ref.copy()
    flipped[2] = -np.inf
    v = compare_tensor("y", flipped, ref)
    assert v.max_abs_diff == np.inf and v.bad_fraction == pytest.approx(1 / 5000)
    # A cheater returning NaN everywhere does not hide behind the finite-only statistics.
    nan = np.full_like(ref, np.nan)
    assert not compare_tensor("y", nan, ref).match
    assert not compare_tensor("y", ref, nan).match


def test_argmax_of_logits_must_agree() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((64, 1000)).astype(np.float32)
    ref[5, 10], ref[5, 20] = 6.0, 5.5
    flipped = ref.copy()
    # Swap the winner with the runner-up: two elements of 64000 move, but the emitted token changes.
    flipped[5, 10], flipped[5, 20] = 5.5, 6.0
    norm_blind = Tolerance(max_rel_l2=1.0)
    assert compare_tensor("l", flipped, ref, norm_blind).match
    v = compare_tensor("l", flipped, ref, norm_blind, is_logits=True)
    assert not v.match and "token differs at 1 position" in v.reason


def test_argmax_near_tie_is_not_a_flip() -> None:
    ref = np.zeros((1, 8), np.float32)
    ref[0, 3] = 5.0
    ref[0, 6] = 5.0 - 1e-7  # an honest near-tie
    asserted = ref.copy()
    asserted[0, 6] = 5.0 + 1e-7
    assert compare_tensor("l", asserted, ref, is_logits=True).match
    far = ref.copy()
    far[0, 6] = 4.0
    far[0, 1] = 6.0
    assert not compare_tensor("l", far, ref, is_logits=True).match


def test_huge_finite_values_do_not_overflow() -> None:
    ref = np.array([1e300, -1e300, 1.0], np.float64)
    assert compare_tensor("y", ref.copy(), ref).match
    assert not compare_tensor("y", ref * 1.1, ref).match


def test_zero_reference_relies_on_atol() -> None:
    z = np.zeros(100, np.float32)
    assert compare_tensor("y", z + 1e-9, z).match
    assert not compare_tensor("y", z + 1e-3, z).match


def test_default_tolerance_is_the_documented_one() -> None:
    assert DEFAULT_TOLERANCE == Tolerance(rtol=1e-3, atol=1e-6, scale_tol=1e-3, max_bad_fraction=1e-3, max_rel_l2=2e-5,
                                          token_slack=3e-6)
    assert tolerance_for("fp32") is DEFAULT_TOLERANCE
    # integer weights are exact: on float32 arithmetic they get float32's room, on float16 arithmetic fp16's
    assert tolerance_for("int8") == tolerance_for("int4") == DEFAULT_TOLERANCE
    # a task's "<weights>/<activations>" maps to its class
    assert tolerance_for("fp32/fp32") is DEFAULT_TOLERANCE
    assert tolerance_for("fp16/fp32") == tolerance_for("fp32/fp16") == tolerance_for("fp16")
    assert precision_class("int8/fp32") == "int8" and precision_class("int4/fp32") == "int4"
    assert precision_class("int4/fp16") == precision_class("int8/fp16") == "fp16"
    for bad in ("fp8", "fp32/int8", "fp32"[:2]):
        with pytest.raises(KeyError, match="precision"):
            tolerance_for(bad)


def test_tinygrad_agrees_with_onnxruntime() -> None:
    pytest.importorskip("tinygrad")
    from splitup.verify.engines import run_tinygrad, tinygrad_available

    if not tinygrad_available():
        pytest.skip("tinygrad has no usable device here")
    for kind in ("mlp", "attention"):
        model = build(kind, 3)
        feeds = {"x": input_for(model, 4)}
        verdict = compare_outputs(run_tinygrad(model, feeds), run_onnxruntime(model, feeds), logits=_logits(kind))
        assert verdict.match, verdict
