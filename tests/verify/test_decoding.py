"""The canonical token choice (splitup.decoding) and the validator's check of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitup.client.sampling import decoding_for, generate_tokens, pick_token
from splitup.decoding import GREEDY, Decoding, DecodingError, admissible, choose, scale, uniform
from splitup.verify.compare import compare_tensor, tolerance_for
from splitup.verify.transcript import BadTranscript, Transcript

JOB = "11111111111111111111111111111111"


def test_greedy_is_the_lowest_id_within_the_window():
    row = np.array([0.0, 5.0, 5.0 - 1e-7, 3.0, 5.0], np.float32)
    assert choose(row, Decoding(window=0.0)) == 1
    assert choose(row[::-1].copy(), Decoding(window=0.0)) == 0
    near = np.array([1.0, 4.99, 5.0], np.float64)
    assert choose(near, Decoding(window=0.0)) == 2
    assert choose(near, Decoding(window=0.01 / scale(near) + 1e-12)) == 1
    assert choose(np.array([np.nan, 1.0, np.nan])) == 1  # NaN never wins
    assert choose(np.array([1.0, np.inf, 2.0])) == 1


def test_a_common_shift_changes_no_choice():
    rng = np.random.default_rng(0)
    row = rng.standard_normal(300) * 4
    for d in (GREEDY, Decoding(temperature=0.8, top_k=40, top_p=0.9, seed=3)):
        for pos in range(20):
            assert choose(row, d, pos) == choose(row + 123.0, d, pos)


def test_the_draw_is_keyed_by_seed_position_and_row():
    assert uniform(1, 2, 0) == uniform(1, 2, 0)
    draws = {uniform(1, p, r) for p in range(50) for r in range(2)} | {uniform(2, 0, 0)}
    assert len(draws) == 101 and all(0 <= u < 1 for u in draws)
    # the sampler follows the softmax: 4000 positions of a three-token row
    row = np.log(np.array([0.2, 0.5, 0.3]))
    counts = np.bincount([choose(row, Decoding(temperature=1.0, seed=9), p) for p in range(4000)], minlength=3)
    assert np.allclose(counts / 4000, [0.2, 0.5, 0.3], atol=0.03)


def test_top_k_and_top_p_cut_the_candidates():
    row = np.array([3.0, 2.0, 1.0, 0.0])
    picked = {choose(row, Decoding(temperature=5.0, top_k=2, seed=1), p) for p in range(300)}
    assert picked == {0, 1}
    picked = {choose(row, Decoding(temperature=0.5, top_p=0.5, seed=1), p) for p in range(300)}
    assert picked == {0}
    assert {choose(row, Decoding(temperature=100.0, seed=1), p) for p in range(300)} == {0, 1, 2, 3}


def test_bad_parameters_are_refused():
    for kw in ({"temperature": -1.0}, {"temperature": float("nan")}, {"top_k": -1}, {"top_p": 0.0},
               {"top_p": 1.5}, {"seed": -1}, {"seed": 2**64}, {"window": 1.0}):
        with pytest.raises(DecodingError):
            Decoding(**kw)
    with pytest.raises(DecodingError):
        Decoding.from_json({"temperature": "hot"})


_decodings = st.one_of(
    st.just(GREEDY),
    st.builds(Decoding, temperature=st.floats(0.05, 3.0), top_k=st.integers(0, 20),
              top_p=st.floats(0.05, 1.0), seed=st.integers(0, 2**64 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), decoding=_decodings, position=st.integers(0, 10_000),
       ties=st.integers(0, 5), slack=st.sampled_from([5e-6, 1e-4, 3e-3]))
def test_an_honest_engine_within_the_slack_is_always_admitted(seed, decoding, position, ties, slack):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(64) * rng.uniform(0.5, 20)
    # exact and near ties, the cases an honest engine may break differently
    for i in rng.choice(64, ties, replace=False):
        v[i] = v.max() - rng.uniform(0, 3) * slack * scale(v)
    a = v + rng.uniform(-0.5, 0.5, v.shape) * slack * scale(v) + rng.uniform(-5, 5)
    assert admissible(v, choose(a, decoding, position), slack, decoding, position)
    assert admissible(v, choose(v, decoding, position), slack, decoding, position)


def test_a_token_beyond_the_slack_is_refused():
    v = np.array([1.0, 4.0, 5.0, 2.0])
    assert not admissible(v, 1, 1e-3)  # 1 logit below the maximum
    assert not admissible(v, 0, 1e-3) and not admissible(v, 7, 1e-3) and not admissible(v, -1, 1e-3)
    assert admissible(v, 2, 1e-3)
    d = Decoding(temperature=1.0, seed=4)
    for p in range(50):
        t = choose(v, d, p)
        assert admissible(v, t, 1e-6, d, p)
        assert sum(admissible(v, x, 1e-6, d, p) for x in range(4)) == 1


def test_a_sampled_flip_is_caught_by_the_logits_rule():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((1, 1, 500)).astype(np.float32) * 3
    d = Decoding(temperature=1.0, seed=11)
    tol = tolerance_for("fp32")
    assert compare_tensor("logits", ref.copy(), ref, tol, is_logits=True, decoding=d, position=7).match
    honest = choose(ref[0, 0], d, 7)
    # steer the draw: lift the token just after the honest one, by the least that changes the choice
    cheat = ref.copy()
    for lift in np.linspace(0.01, 30, 3000):
        cheat[0, 0, (honest + 1) % 500] = ref[0, 0, (honest + 1) % 500] + lift
        if choose(cheat[0, 0], d, 7) != honest:
            break
    assert choose(cheat[0, 0], d, 7) != honest
    v = compare_tensor("logits", cheat, ref, tol, is_logits=True, decoding=d, position=7)
    assert not v.match and "token differs" in v.reason


def test_the_transcript_carries_the_decoding_rule():
    t = Transcript(JOB, 2, "ab" * 32, decoding=Decoding(temperature=0.7, top_k=5, top_p=0.9, seed=42))
    t.add({"x": np.zeros((1, 2), np.float32)}, {"logits": np.ones((1, 1, 4), np.float32)})
    back = Transcript.from_bytes(t.to_bytes())
    assert back.decoding == t.decoding and back.commitment() == t.commitment()
    plain = Transcript(JOB, 2, "ab" * 32)
    plain.add({"x": np.zeros((1, 2), np.float32)}, {"logits": np.ones((1, 1, 4), np.float32)})
    assert Transcript.from_bytes(plain.to_bytes()).decoding == GREEDY
    bad = t.to_bytes().replace(b'\\"seed\\": 42', b'\\"seed\\": -42')
    assert bad != t.to_bytes()
    with pytest.raises(BadTranscript, match="metadata"):
        Transcript.from_bytes(bad)


def test_generation_uses_the_canonical_choice():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((16, 16)).astype(np.float32)

    def step(ids):
        return table[np.asarray(ids)[0, -1]][None, None, :].repeat(1, axis=1)

    greedy = generate_tokens(step, [1, 2], 8)
    assert greedy == generate_tokens(step, [1, 2], 8, decoding=GREEDY)
    d = decoding_for(0.9, None, 5)
    sampled = generate_tokens(step, [1, 2], 8, decoding=d)
    assert sampled == generate_tokens(step, [1, 2], 8, temperature=0.9, seed=5)
    # the n-th new token is drawn at position len(prompt) + n, whatever produced the logits
    prev = 2
    for n, tok in enumerate(sampled):
        assert tok == pick_token(table[prev], d, 2 + n)
        prev = tok


def test_a_node_records_the_rule_the_client_sent(tmp_path):
    import json

    from splitup.client.pipeline import plan_sends
    from splitup.node.agent import RecordingNode
    from splitup.node.node import NodeConfig
    from splitup.node.wire import DECODING_META, Envelope, Hop, WireError
    from splitup.partition.task import Plan, task_dir
    from splitup.verify.sandbox import write_plan

    plan_dir = tmp_path / "plan"
    write_plan(plan_dir)
    tasks = Plan.load(plan_dir).tasks
    node = RecordingNode(NodeConfig(cache_dir=tmp_path / "cache", max_session_bytes=1 << 30))
    for t in tasks:
        node.load_bundle(task_dir(plan_dir, t), t.task_id)
    _, sends = plan_sends(tasks, ["logits"])
    route = [Hop(["http://127.0.0.1:9"], t.task_id, sends[k]) for k, t in enumerate(tasks)]

    def run(job: str, meta: dict) -> None:
        tensors = {"input_ids": np.array([[1, 2, 3]], np.int64)}
        for k in range(len(route)):
            tensors = node.compute(Envelope(job, k, route, meta=meta), tensors)

    last = tasks[-1].task_id
    d = Decoding(temperature=0.7, top_k=3, seed=9)
    run("sampled", {DECODING_META: json.dumps(d.to_json())})
    run("greedy", {})
    assert node.transcript("sampled", 2, last).decoding == d
    assert node.transcript("greedy", 2, last).decoding == GREEDY
    with pytest.raises(WireError, match="decoding"):
        run("bad", {DECODING_META: json.dumps({**d.to_json(), "temperature": -1})})
