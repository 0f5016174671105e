"""Red-team of the comparison rule, short form (bench/redteam.py runs the full one): cheats built from
the task graphs of a 3-task tiny LLaMA, honest engines of every precision class against each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splitup.verify import redteam as rt
from splitup.verify.compare import PRECISION_CLASSES, tolerance_for
from splitup.verify.precision import emulate, round_mantissa
from splitup.verify.sandbox import write_plan

# A flip or steer at a near-tie moves logits by less than half-precision arithmetic does, so the task that
# chooses tokens computes in float32 in every plan (fp16 and bf16 plans included): there the rule must see it.


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("plan")
    write_plan(out)
    return rt.load_plan_models(Path(out))


@pytest.fixture(scope="module")
def sequences(models) -> list:
    rng = np.random.default_rng(5)
    prompts = [list(rng.integers(0, 512, 6)) for _ in range(2)]
    return rt.greedy_sequences([rt.ModelRunner(t, m) for t, m in models], prompts, 10)


@pytest.fixture(scope="module")
def runs(models, sequences):
    """The plan on every honest engine of a class, made once per class for the tests that read it."""
    cache: dict[str, dict[str, rt.Run]] = {}

    def get(precision: str) -> dict[str, rt.Run]:
        if precision not in cache:
            cache[precision] = rt.honest_runs(models, precision, sequences, reference=precision == "fp32")
        return cache[precision]

    return get


def test_rounding_emulation_is_exact_half_precision():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 50
    assert np.array_equal(round_mantissa(x, 11), x.astype(np.float16).astype(np.float32))
    bf = (x.view(np.uint32) + 0x7FFF + ((x.view(np.uint32) >> 16) & 1)) & 0xFFFF0000  # round-to-nearest-even
    assert np.array_equal(round_mantissa(x, 8), bf.view(np.float32))
    huge = np.array([np.inf, -3.4e38], np.float32)  # mask fills pass through
    assert np.array_equal(round_mantissa(huge, 11), huge)


def test_emulated_graph_rounds_every_activation(models, sequences):
    task, model = models[1]
    exact = rt.run_plan([rt.ModelRunner(task, model)], [[rt.run_plan(
        [rt.ModelRunner(t, m) for t, m in models[:1]], [sequences[0][:1]]).outputs[0][0][0]]])
    half = rt.run_plan([rt.ModelRunner(task, emulate(model, weights="fp16", activations="fp16"))],
                       [[exact.inputs[0][0][0]]])
    out = half.outputs[0][0][0]
    for v in out.values():
        assert np.array_equal(v, round_mantissa(v, 11))  # outputs are fp16 values
    a, b = exact.outputs[0][0][0], out
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision", PRECISION_CLASSES)
def test_honest_engines_never_fail(models, sequences, runs, precision):
    pairs = rt.honest_pairs(models, precision, sequences, reference=precision == "fp32", runs=runs(precision))
    assert len(pairs) >= 6
    for key, h in pairs.items():
        assert h.calls and h.failures == 0, (key, h.reasons)
        assert h.logit_gap <= tolerance_for(rt.task_class(precision, models[-1][0])).token_slack / 2, key


@pytest.mark.parametrize("precision", PRECISION_CLASSES)
def test_cheats_are_caught_where_they_change_the_text(models, sequences, precision):
    stats = rt.red_team(models, precision, sequences)
    names = {name.split(" (")[0] for _, name in stats}
    assert {"layer skipped", "attention window 8", "another input's outputs"} <= names
    assert {"top-token flip at near-ties", "top-token steer at near-ties"} <= names
    matter = caught = 0
    for (k, name), s in stats.items():
        matter += s.matter
        caught += s.caught_matter
        # a run below the stated precision is caught on every call, whether or not it shows in the text
        if "weights" in name or "arithmetic" in name or "layer" in name or "another" in name:
            assert s.calls and s.caught == s.calls, (k, name, s)
    assert matter > 50 and caught / matter >= 0.99, (caught, matter)


@pytest.mark.parametrize("precision", PRECISION_CLASSES)
def test_flips_at_planted_near_ties_are_caught_in_every_plan(models, runs, precision):
    # The executor's own rows against the other honest engines' re-execution of the last task from the
    # executor's committed inputs (a validator's view); in fp16 / bf16 plans that task computes in float32.
    honest = runs(precision)
    *engines, coarsest = rt.class_engines(precision, full=False, reference=precision == "fp32")
    executor = rt.logit_rows(honest[coarsest.name])
    *others, validator = rt.replayed_rows(models, precision, honest[coarsest.name], engines)
    slack = tolerance_for(rt.task_class(precision, models[-1][0])).token_slack
    assert slack == tolerance_for("fp32").token_slack
    for kind in ("flip", "steer"):
        total = rt.PlantedStats()
        for seed in range(40):  # a fresh gap in every row per seed
            st = rt.planted_near_ties(executor, validator, slack, kind, np.random.default_rng(seed), others)
            assert st.rows == len(executor) and st.honest_failures == 0
            total.add(st)
        assert total.matter >= 1000 and total.detection >= 0.99 and total.bound >= 0.99, (kind, total)


def test_ambiguity_counts_where_engines_differ_and_where_the_rule_leaves_a_choice():
    a = np.zeros(8)
    a[3], a[5] = 10.0, 10.0 - 1e-4  # 1e-5 of the range apart: beyond float32's slack, inside fp16's
    b = a.copy()
    b[5] = 10.0 + 1e-4
    fp32, fp16 = tolerance_for("fp32").token_slack, tolerance_for("fp16").token_slack
    assert rt.admissible_tokens(a, fp32) == [3] and rt.admissible_tokens(b, fp32) == [5]
    assert rt.admissible_tokens(a, fp16) == rt.admissible_tokens(b, fp16) == [3, 5]
    tight, loose = rt.ambiguity({"x": [a, a], "y": [b, a]}, fp32), rt.ambiguity({"x": [a, a], "y": [b, a]}, fp16)
    assert (tight.rows, tight.split, tight.admits_two, tight.checks) == (2, 1, 0, 4)
    assert (loose.split, loose.admits_two) == (1, 4) and loose.choice_rate == 1.0
