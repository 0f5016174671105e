"""The rule a validator applies to decide whether an asserted output matches its own re-execution.

Engines and GPUs differ in the last bits (summation order, fused kernels, threads), so equality is
the wrong test. Per tensor, with ``a`` the asserted value and ``b`` the validator's:

1. names, shapes and dtypes must agree exactly;
2. integer and boolean tensors (token ids, indices, masks) must be equal element for element;
3. for floats, an element is *out of tolerance* when
       |a - b| > atol + scale_tol * rms(b) + rtol * max(|a|, |b|)
   or when its non-finite pattern differs (NaN vs number, +inf vs -inf); both-NaN and equal infinities
   agree. At most ``max_bad_fraction`` of the elements may be out of tolerance;
4. the relative L2 error ||a - b|| / ||b|| over the elements finite in both must not exceed
   ``max_rel_l2``: element-wise bounds let a diffuse shortcut (int8 weights, a low-precision kernel)
   through, the norm does not;
5. where a tensor is logits, the argmax along the last axis must be identical, except at positions
   where the validator's own top two logits are within tolerance of each other (a tie an honest engine
   may break either way) and the asserted token's logit is itself within tolerance of the maximum.

The defaults are calibrated in docs/posp.md (bench/calibrate_tolerance.py): honest float32 engines
differ by under 1e-6 relative; the mildest realistic cheat measured (int8 weights) puts 4 % to 85 % of
the elements out of tolerance.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-3
    atol: float = 1e-6
    scale_tol: float = 1e-3
    max_bad_fraction: float = 1e-3
    max_rel_l2: float = 1e-3


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class TensorVerdict:
    name: str
    match: bool
    max_abs_diff: float
    bad_fraction: float
    rel_l2: float
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    match: bool
    tensors: tuple[TensorVerdict, ...]
    reason: str = ""

    @property
    def max_abs_diff(self) -> dict[str, float]:
        return {t.name: t.max_abs_diff for t in self.tensors}

    @property
    def bad_fraction(self) -> dict[str, float]:
        return {t.name: t.bad_fraction for t in self.tensors}


def compare_outputs(
    asserted: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    tol: Tolerance = DEFAULT_TOLERANCE,
    logits: Collection[str] = (),
) -> Verdict:
    """Compare every named output; the verdict matches only if every tensor does."""
    missing = sorted(set(reference) - set(asserted))
    extra = sorted(set(asserted) - set(reference))
    if missing or extra:
        return Verdict(False, (), f"output names differ: missing {missing}, unexpected {extra}")
    unknown = sorted(set(logits) - set(reference))
    if unknown:
        # A typo here would silently drop the argmax check, so refuse rather than guess.
        raise KeyError(f"logits names not among the outputs: {unknown}")
    verdicts = tuple(
        compare_tensor(name, asserted[name], reference[name], tol, is_logits=name in logits)
        for name in sorted(reference)
    )
    failed = [v for v in verdicts if not v.match]
    reason = "; ".join(f"{v.name}: {v.reason}" for v in failed)
    return Verdict(not failed, verdicts, reason)


def compare_tensor(
    name: str, asserted: np.ndarray, reference: np.ndarray, tol: Tolerance = DEFAULT_TOLERANCE,
    *, is_logits: bool = False,
) -> TensorVerdict:
    a = np.asarray(asserted)
    b = np.asarray(reference)
    if a.shape != b.shape:
        return TensorVerdict(name, False, np.inf, 1.0, np.inf, f"shape {a.shape} != {b.shape}")
    if a.dtype != b.dtype:
        return TensorVerdict(name, False, np.inf, 1.0, np.inf, f"dtype {a.dtype} != {b.dtype}")
    if a.dtype.kind in "biu":
        return _compare_exact(name, a, b)
    if a.dtype.kind != "f":
        return TensorVerdict(name, False, np.inf, 1.0, np.inf, f"unsupported dtype {a.dtype}")
    if a.size == 0:
        return TensorVerdict(name, True, 0.0, 0.0, 0.0)

    # Compare in float64 so the check itself adds no rounding of its own.
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    both = fa & fb
    # Non-finite values agree only with the identical non-finite value.
    nonfinite_same = ~fa & ~fb & ((np.isnan(a64) & np.isnan(b64)) | (a64 == b64))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both, np.abs(a64 - b64), 0.0)
    rms = _rms(b64[fb])
    bound = tol.atol + tol.scale_tol * rms + tol.rtol * np.maximum(np.abs(np.where(both, a64, 0.0)),
                                                                   np.abs(np.where(both, b64, 0.0)))
    bad = (both & (diff > bound)) | (~both & ~nonfinite_same)
    bad_fraction = float(bad.mean())
    max_abs = float(diff.max()) if not (~both & ~nonfinite_same).any() else float("inf")
    ref_norm = _norm(b64[both])
    err_norm = _norm(diff[both])
    rel_l2 = err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else float("inf"))

    reasons = []
    if bad_fraction > tol.max_bad_fraction:
        reasons.append(f"{bad_fraction:.3g} of elements out of tolerance (max {tol.max_bad_fraction:g})")
    # The norm test is scaled by the reference, so skip it where the reference is all zeros and the
    # element-wise atol already decides.
    if rel_l2 > tol.max_rel_l2 and ref_norm > tol.atol * np.sqrt(max(1, int(both.sum()))):
        reasons.append(f"relative L2 error {rel_l2:.3g} > {tol.max_rel_l2:g}")
    if is_logits and a.ndim >= 1 and a.shape[-1] > 0:
        flips = _argmax_flips(a64, b64, tol, rms)
        if flips:
            reasons.append(f"argmax differs at {flips} position(s)")
    return TensorVerdict(name, not reasons, max_abs, bad_fraction, rel_l2, "; ".join(reasons))


def _norm(x: np.ndarray) -> float:
    # Scaled first so that float64-range values do not overflow when squared.
    peak = float(np.abs(x).max()) if x.size else 0.0
    return peak * float(np.linalg.norm(x / peak)) if peak > 0 and np.isfinite(peak) else peak


def _rms(x: np.ndarray) -> float:
    if not x.size:
        return 0.0
    # Scaled first so that float64-range values do not overflow when squared.
    peak = float(np.abs(x).max())
    return peak * float(np.sqrt(np.mean(np.square(x / peak)))) if peak > 0 else 0.0


def _compare_exact(name: str, a: np.ndarray, b: np.ndarray) -> TensorVerdict:
    neq = a != b
    frac = float(neq.mean()) if a.size else 0.0
    max_abs = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
    reason = f"{int(neq.sum())} element(s) differ in an exact tensor" if neq.any() else ""
    return TensorVerdict(name, not neq.any(), max_abs, frac, 0.0 if not neq.any() else float("inf"), reason)


def _argmax_flips(a: np.ndarray, b: np.ndarray, tol: Tolerance, rms: float) -> int:
    """Positions where the asserted token differs and the validator's logits do not excuse it."""
    # NaN never wins an argmax here, so a NaN row cannot hide a flipped token.
    a_clean = np.where(np.isnan(a), -np.inf, a)
    b_clean = np.where(np.isnan(b), -np.inf, b)
    ta = np.argmax(a_clean, axis=-1)
    tb = np.argmax(b_clean, axis=-1)
    differ = ta != tb
    if not differ.any():
        return 0
    b_max = np.take_along_axis(b_clean, tb[..., None], axis=-1)[..., 0]
    b_at_a = np.take_along_axis(b_clean, ta[..., None], axis=-1)[..., 0]
    slack = tol.atol + tol.scale_tol * rms + tol.rtol * np.abs(b_max)
    with np.errstate(invalid="ignore"):
        near_tie = np.isfinite(b_max) & (b_max - b_at_a <= slack)
    return int((differ & ~near_tie).sum())
