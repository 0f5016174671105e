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
5. where a tensor is logits, the token each row stands for under the job's canonical choice
   (:mod:`splitup.decoding`) must be one the validator's own logits admit within ``token_slack``: the
   measured honest logit difference, not the element tolerance, so a near-tie gives a cheater no room
   to flip or steer the token the user reads.

The thresholds depend on the precision the task states (``tolerance_for``), calibrated in docs/posp.md
(bench/calibrate_tolerance.py, bench/redteam.py): each class admits its honest engines (float32 engines
differ by under 1e-6 relative; float16/TF32 and bfloat16 arithmetic by what their rounding gives) and
rejects a run at a lower precision than stated.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from splitup.decoding import GREEDY, Decoding, admissible, choose
from splitup.graph.precision import TOKEN_OUTPUT, split_precision
from splitup.verify.errors import VerifyError


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-3
    atol: float = 1e-6
    scale_tol: float = 1e-3
    max_bad_fraction: float = 1e-3
    max_rel_l2: float = 2e-5
    # Largest difference between two honest engines of a logit taken relative to its row's maximum, as a
    # fraction of the row's range (splitup.decoding.scale).
    token_slack: float = 3e-6


DEFAULT_TOLERANCE = Tolerance()

#: Per precision a task may state (TaskDefinition.precision): the honest engines of that class pass, a run
#: below the stated precision fails. Figures and margins: docs/posp.md, "Calibration".
TOLERANCES: dict[str, Tolerance] = {
    "fp32": DEFAULT_TOLERANCE,
    "fp16": Tolerance(rtol=1e-2, atol=1e-4, scale_tol=1e-2, max_rel_l2=1.7e-3, token_slack=3e-3),
    "bf16": Tolerance(rtol=4e-2, atol=1e-3, scale_tol=4e-2, max_rel_l2=3.5e-2, token_slack=2.5e-2),
}
# Stored integer weights are exact values, so with float32 arithmetic honest engines differ only as float32
# engines do: the arithmetic, not the weights, sets the room (and the room decides whether a near-tie flip
# can be seen at all). Integer weights with float16 arithmetic are the fp16 class.
TOLERANCES["int8"] = TOLERANCES["int4"] = DEFAULT_TOLERANCE


PRECISION_CLASSES = tuple(TOLERANCES)


def precision_class(precision: str) -> str:
    """A task's ``"<weights>/<activations>"`` precision (splitup.graph.precision) as one of the classes:
    float16 activations make it fp16 (whatever the weights: the arithmetic decides), integer weights on
    float32 activations name their class, float16 weights make it fp16 (a graph may keep float32 at its
    interface and compute in float16 inside), else fp32. Class names pass through."""
    if precision in TOLERANCES:
        return precision
    try:
        weights, acts = split_precision(precision)
    except ValueError:
        raise KeyError(f"no tolerance for precision {precision!r} (classes: {', '.join(TOLERANCES)})") from None
    if acts == "fp16":
        return "fp16"
    if weights in ("int8", "int4"):
        return weights
    return "fp16" if weights == "fp16" else "fp32"


#: Classes whose honest engines compute in float32: the only ones a task choosing tokens is judged under
#: (docs/posp.md, "Precision of the token-choosing task": in half precision honest engines themselves
#: emit a flipped token on 17-20 % (fp16) to 43-58 % (bf16) of near-ties, so no rule could catch it).
FLOAT32_CLASSES = frozenset({"fp32", "int8", "int4"})
ARITHMETICS = ("fp32", "fp16")


class CoarseClassRefused(VerifyError):
    """A task that chooses tokens would be judged under a class whose honest engines compute in half
    precision, or a validator computing in half precision would judge a float32 task."""


class ArithmeticBelowStated(VerifyError):
    """The executor declares half-precision arithmetic for a task that states float32: a run below the
    stated precision, which the validator rules against whatever the outputs."""


def chooses_tokens(output_names: Collection[str]) -> bool:
    """Whether a task with these outputs emits logits, from which the canonical token is chosen."""
    return TOKEN_OUTPUT in output_names


def judged_class(precision: str, *, tokens: bool, executor: str = "fp32", validator: str = "fp32") -> str:
    """The class a validator judges a task under, from the precision the task states and the arithmetic
    the executor declared (in its transcript) and the validator's own engine ran.

    A task stating fp16 / bf16 allows half precision: it is judged under its class whoever ran what (an
    fp32 validator judges an fp16 executor with the fp16 rule). A task stating a float32 class is judged
    under it, and only engines computing in float32 may take part: an executor declaring fp16 ran below
    the stated precision (``ArithmeticBelowStated``), a validator computing in fp16 cannot judge it
    (``CoarseClassRefused``). A task that chooses tokens (``tokens``) must state a float32 class."""
    for who, arith in (("executor", executor), ("validator", validator)):
        if arith not in ARITHMETICS:
            raise KeyError(f"{who} arithmetic {arith!r} is not one of {', '.join(ARITHMETICS)}")
    cls = precision_class(precision)
    if cls in FLOAT32_CLASSES:
        if executor != "fp32":
            raise ArithmeticBelowStated(f"the executor computed in {executor}, the task states {precision} "
                                        "(float32 arithmetic)")
        if validator != "fp32":
            raise CoarseClassRefused(f"a validator computing in {validator} cannot judge a task stating "
                                     f"{precision} (float32 arithmetic)")
        return cls
    if tokens:
        raise CoarseClassRefused(f"a task that chooses tokens is judged only under a float32 class "
                                 f"({', '.join(sorted(FLOAT32_CLASSES))}); this one states {precision}")
    return cls


def check_token_tolerance(tol: Tolerance) -> None:
    """Refuse thresholds coarser than float32's for a task that chooses tokens (an explicit override)."""
    fp32 = TOLERANCES["fp32"]
    if tol.token_slack > fp32.token_slack or tol.max_rel_l2 > fp32.max_rel_l2:
        raise CoarseClassRefused(f"a task that chooses tokens is judged only with float32 thresholds "
                                 f"(token_slack {fp32.token_slack:g}, max_rel_l2 {fp32.max_rel_l2:g}); "
                                 f"got token_slack {tol.token_slack:g}, max_rel_l2 {tol.max_rel_l2:g}")


def tolerance_for(precision: str) -> Tolerance:
    """The thresholds for a task that states ``precision`` (a class name or ``"<weights>/<activations>"``)."""
    return TOLERANCES[precision_class(precision)]


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
    decoding: Decoding = GREEDY,
    position: int = 0,
) -> Verdict:
    """Compare every named output; the verdict matches only if every tensor does.

    ``decoding`` is the job's token rule and ``position`` the number of tokens in the sequence once this
    call's inputs are in (where the sampled draw of its last row is keyed)."""
    missing = sorted(set(reference) - set(asserted))
    extra = sorted(set(asserted) - set(reference))
    if missing or extra:
        return Verdict(False, (), f"output names differ: missing {missing}, unexpected {extra}")
    unknown = sorted(set(logits) - set(reference))
    if unknown:
        # A typo here would silently drop the argmax check, so refuse rather than guess.
        raise KeyError(f"logits names not among the outputs: {unknown}")
    verdicts = tuple(
        compare_tensor(name, asserted[name], reference[name], tol, is_logits=name in logits, decoding=decoding,
                       position=position)
        for name in sorted(reference)
    )
    failed = [v for v in verdicts if not v.match]
    reason = "; ".join(f"{v.name}: {v.reason}" for v in failed)
    return Verdict(not failed, verdicts, reason)


def compare_tensor(
    name: str, asserted: np.ndarray, reference: np.ndarray, tol: Tolerance = DEFAULT_TOLERANCE,
    *, is_logits: bool = False, decoding: Decoding = GREEDY, position: int = 0,
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
        flips = token_flips(a64, b64, tol.token_slack, decoding, position)
        if flips:
            reasons.append(f"token differs at {flips} position(s)")
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


def token_flips(asserted: np.ndarray, reference: np.ndarray, slack: float, decoding: Decoding = GREEDY,
                position: int = 0) -> int:
    """Rows whose canonical token under the asserted logits is one the reference does not admit.

    Every row is checked under the greedy rule (whatever is read from it, an honest engine's greedy
    token is admitted); under sampled decoding the last row of each sequence, the one the sampler reads,
    is also checked with its draw. Logits are ``(..., seq, vocab)``; rows of one sequence share a batch row.
    """
    a = asserted.reshape(-1, asserted.shape[-1])
    b = reference.reshape(-1, reference.shape[-1])
    seq = asserted.shape[-2] if asserted.ndim >= 2 else 1
    flips = 0
    for i in range(a.shape[0]):
        bad = not admissible(b[i], choose(a[i]), slack)
        if not bad and not decoding.greedy and i % seq == seq - 1:
            batch_row = i // seq
            token = choose(a[i], decoding, position, batch_row)
            bad = not admissible(b[i], token, slack, decoding, position, batch_row)
        flips += bad
    return flips

