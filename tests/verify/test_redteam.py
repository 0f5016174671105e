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

# A flip or steer at a near-tie moves logits by less than the honest arithmetic of a half-precision
# class does, so there it is honest noise by definition; everywhere else the rule must see it.
INSIDE_HONEST_NOISE = {"top-token flip at near-ties", "top-token steer at near-ties"}


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
def test_honest_engines_never_fail(models, sequences, precision):
    pairs = rt.honest_pairs(models, precision, sequences, reference=precision == "fp32")
    assert len(pairs) >= 6
    for key, h in pairs.items():
        assert h.calls and h.failures == 0, (key, h.reasons)
        assert h.logit_gap <= tolerance_for(precision).token_slack / 2, key


@pytest.mark.parametrize("precision", PRECISION_CLASSES)
def test_cheats_are_caught_where_they_change_the_text(models, sequences, precision):
    stats = rt.red_team(models, precision, sequences)
    names = {name.split(" (")[0] for _, name in stats}
    assert {"layer skipped", "attention window 8", "another input's outputs"} <= names
    assert {"top-token flip at near-ties", "top-token steer at near-ties"} <= names
    matter = caught = 0
    for (k, name), s in stats.items():
        if name in INSIDE_HONEST_NOISE and precision != "fp32":
            continue
        matter += s.matter
        caught += s.caught_matter
        # a run below the stated precision is caught on every call, whether or not it shows in the text
        if "weights" in name or "arithmetic" in name or "layer" in name or "another" in name:
            assert s.calls and s.caught == s.calls, (k, name, s)
    assert matter > 50 and caught / matter >= 0.99, (caught, matter)


@pytest.mark.parametrize("kind", ["flip", "steer"])
def test_flips_at_planted_near_ties_are_caught_and_honest_ties_pass(models, sequences, kind):
    rows = {}
    for engine in ("fp32/ort-all-t1", "fp32/ort-disable-t1"):
        e = next(e for e in rt.class_engines("fp32", full=False, reference=False) if e.name == engine)
        run = rt.run_plan(rt.runners_for(models, e), sequences)
        rows[engine] = [r for seq in run.outputs for call in seq for r in call[-1]["logits"].reshape(-1, 512)]
    a, b = rows.values()
    total = rt.PlantedStats()
    for seed in range(40):  # a fresh gap in every row per seed: over a thousand planted near-ties
        st = rt.planted_near_ties(a, b, tolerance_for("fp32").token_slack, kind, np.random.default_rng(seed))
        assert st.rows == len(a) and st.honest_failures == 0
        total.matter, total.caught = total.matter + st.matter, total.caught + st.caught
    assert total.matter >= 1000 and total.caught / total.matter >= 0.99, total
