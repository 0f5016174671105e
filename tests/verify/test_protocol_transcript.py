"""Transcripts (format, limits, commitment), signed announcements, and what happens when a node's
record is missing, altered or forged, or what it forwarded differs from what it committed."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from solders.keypair import Keypair

from splitup.market import MarketParams, calls
from splitup.verify.blobs import plan_bundles
from splitup.verify.cheats import zeros
from splitup.verify.commitment import commitment, handoff_digest
from splitup.verify.roles import Announcement, Executor, RoleError
from splitup.verify.sandbox import ProtocolWorld, make_world, prompt, write_plan
from splitup.verify.transcript import BadTranscript, Sent, Step, Transcript

ALWAYS = MarketParams.flat(10_000)
JOB = str(Keypair().pubkey())
TASK = "ab" * 32


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan")
    write_plan(out)
    return out


def sample_transcript() -> Transcript:
    rng = np.random.default_rng(0)
    t = Transcript(JOB, 1, TASK)
    t.add({"input_ids": np.array([[1, 2, 3]], np.int64), "past": np.zeros((1, 2, 0, 4), np.float32)},
          {"hidden": rng.standard_normal((1, 3, 8)).astype(np.float32)})
    t.add({"input_ids": np.array([[4]], np.int64)}, {"hidden": rng.standard_normal((1, 1, 8)).astype(np.float32)})
    return t


def test_round_trip_and_commitment_format():
    t = sample_transcript()
    back = Transcript.from_bytes(t.to_bytes())
    assert (back.job, back.index, back.task_id, back.salt) == (t.job, t.index, t.task_id, t.salt)
    assert back.tensors().keys() == t.tensors().keys()
    for k, v in t.tensors().items():
        assert back.tensors()[k].dtype == v.dtype and np.array_equal(back.tensors()[k], v)
    # the call tree over what each call handed on (here: its outputs as recorded) and the salted body
    handed = [handoff_digest(s.outputs) for s in t.steps]
    assert back.commitment() == t.commitment() == calls.commitment(2, calls.root(handed),
                                                                    commitment(t.tensors(), t.salt))
    assert sorted(t.tensors()) == ["step0.in.input_ids", "step0.in.past", "step0.out.hidden",
                                   "step1.in.input_ids", "step1.out.hidden"]
    assert set(t.fingerprints()) == {"step0.out.hidden", "step1.out.hidden"}


def test_what_a_call_sent_on_round_trips_and_is_bound():
    """A node's record says what each call sent (names, those cut to the last position) and holds the
    tensors it only relayed: they rebuild the hand-off, survive the round trip, and change the commitment."""
    t = sample_transcript()
    t.steps[0].sent = Sent(("hidden", "mask"), ("hidden",))
    t.steps[0].relayed["mask"] = np.ones((1, 3), np.int64)
    back = Transcript.from_bytes(t.to_bytes())
    assert back.steps[0].sent == t.steps[0].sent and back.steps[1].sent is None
    assert back.commitment() == t.commitment() != sample_transcript().commitment()
    handed = back.steps[0].handoff()
    assert handed["hidden"].shape == (1, 1, 8) and np.array_equal(handed["mask"], np.ones((1, 3), np.int64))
    t.steps[0].sent = Sent(("hidden",), ())
    assert t.commitment() != back.commitment()
    t.steps[0].sent = Sent(("nowhere",), ())
    with pytest.raises(BadTranscript):
        t.commitment()


def test_commitment_binds_every_input_output_and_the_salt():
    base = sample_transcript()
    c = base.commitment()
    for name in base.tensors():
        t = Transcript.from_bytes(base.to_bytes())
        step = t.steps[int(name[4])]
        side = step.inputs if ".in." in name else step.outputs
        key = name.split(".", 2)[2]
        if side[key].size == 0:
            side[key] = np.zeros((1, 2, 1, 4), np.float32)
        else:
            flat = side[key].reshape(-1).copy()
            flat[0] = np.nextafter(flat[0], np.inf) if flat.dtype.kind == "f" else flat[0] + 1
            side[key] = flat.reshape(side[key].shape)
        assert t.commitment() != c, name
    other = Transcript.from_bytes(base.to_bytes())
    other.salt = bytes(32)
    assert other.commitment() != c


def test_limits_and_malformed_transcripts_are_refused():
    t = sample_transcript()
    data = t.to_bytes()
    with pytest.raises(BadTranscript, match="exceeds"):
        Transcript.from_bytes(data, max_bytes=len(data) - 1)
    small = Transcript(JOB, 0, TASK, max_bytes=100)
    with pytest.raises(BadTranscript, match="exceed 100 bytes"):
        small.add({}, {"x": np.zeros(100, np.float32)})
    with pytest.raises(BadTranscript, match="at least one output"):
        small.add({"x": np.zeros(1)}, {})
    with pytest.raises(BadTranscript, match="nothing recorded"):
        Transcript(JOB, 0, TASK).commitment()
    for garbage in (b"", b"\xff" * 8 + b"{}", struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 2) + b"{}"):
        with pytest.raises(BadTranscript):
            Transcript.from_bytes(garbage)

    from safetensors.numpy import save

    def forged(tensors, **meta):
        base = {"format": "splitup.transcript", "version": "2", "job": JOB, "index": "0", "task_id": TASK,
                "steps": "1", "salt": "00" * 32}
        return save(tensors, metadata={**base, **meta})

    one = {"step0.out.x": np.zeros(2, np.float32)}
    assert Transcript.from_bytes(forged(one)).steps[0].outputs["x"].shape == (2,)
    for tensors, meta, match in [
        ({"step0.sideways.x": np.zeros(2, np.float32)}, {}, "unexpected tensor"),
        ({"step1.out.x": np.zeros(2, np.float32)}, {}, "unexpected tensor"),
        ({"step0.in.x": np.zeros(2, np.float32), "step1.out.x": np.zeros(2, np.float32)}, {"steps": "2"}, "no outputs"),
        (one, {"version": "1"}, "version"),  # before the call tree
        (one, {"handoff": "[null, null]"}, "one entry per call"),
        (one, {"handoff": '[["x"]]'}, "malformed hand-off"),
        (one, {"steps": "0"}, "steps"),
        (one, {"salt": "zz"}, "malformed"),
        (one, {"salt": "00" * 8}, "salt of 8 bytes"),
        (one, {"index": "x"}, "malformed"),
    ]:
        with pytest.raises(BadTranscript, match=match):
            Transcript.from_bytes(forged(tensors, **meta))


def world(plan_dir: Path, tmp_path: Path) -> ProtocolWorld:
    return make_world(plan_dir, tmp_path / "store", ALWAYS, n_nodes=4)


def committed_task(w: ProtocolWorld, node: int = 0) -> tuple:
    job = w.m.post_job(w.client, w.model, b"\2" * 32).address
    ex = w.executors[node]
    ex.accept(job, 0)
    ex.call(job, 0, prompt(7))
    ex.call(job, 0, {"input_ids": np.array([[3]], np.int64)})
    ann = ex.commit(job, 0)
    w.t.advance(1)
    assert w.m.sample(job, 0)
    return job, ex, ann


def test_executor_transcript_fits_its_task_and_bad_ones_do_not(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path)
    job, ex, ann = committed_task(w)
    t = ex.transcript(job, 0)
    task = ex.task(job, 0)
    t.check_against(task)
    # Only the boundary outputs are recorded, never the KV cache the node keeps.
    boundary = {o.name for o in task.outputs} - set(task.state.values())
    assert boundary and not any(name.startswith("present.") for name in boundary)
    assert {n.split(".", 2)[2] for n in t.tensors() if ".out." in n} == boundary
    wrong_dtype = Transcript.from_bytes(t.to_bytes())
    name = next(iter(wrong_dtype.steps[0].outputs))
    wrong_dtype.steps[0].outputs[name] = wrong_dtype.steps[0].outputs[name].astype(np.float64)
    too_long = Transcript.from_bytes(t.to_bytes())
    too_long.steps[0].inputs["input_ids"] = np.zeros((1, 65), np.int64)
    held = Transcript.from_bytes(t.to_bytes())
    held.steps[1].outputs["present.0.key"] = np.zeros((1, 2, 6, 16), np.float32)
    for bad, match in [(wrong_dtype, "outputs"), (too_long, "exceeds the maximum"), (held, "outputs")]:
        with pytest.raises(BadTranscript, match=match):
            bad.check_against(task)
    assert ann.signed_by(w.nodes[0].pubkey()) and not ann.signed_by(w.nodes[1].pubkey())
    from dataclasses import replace

    for changed in (replace(ann, job="not-a-key"), replace(ann, transcript_sha="00" * 32),
                    replace(ann, fingerprints={}), replace(ann, signature=b"\0" * 64), replace(ann, index=1)):
        assert not changed.signed_by(w.nodes[0].pubkey())


def test_transcript_that_does_not_open_the_commitment_loses(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path)
    job, ex, ann = committed_task(w)
    # the node uploads a different (here: honest-looking but altered) transcript than it committed to
    altered = Transcript.from_bytes(ex.transcript(job, 0).to_bytes())
    altered.steps[1].inputs["input_ids"] = np.array([[4]], np.int64)
    sha = w.blobs.put(altered.to_bytes())
    lie = Announcement(ann.job, 0, ann.task_id, sha, ann.commitment, ann.fingerprints).signed(w.nodes[0])
    check = w.validators[1].validate(job, 0, lie)
    assert not check.agree and "does not open" in check.reason and check.flops == 0
    ruling = w.arbiter.arbitrate(job, 0, lie, w.validators[2:])
    assert not ruling.node_honest and ruling.basis == "opening"


def test_withheld_or_unannounced_transcript_loses(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path)
    job, ex, ann = committed_task(w)
    missing = Announcement(ann.job, 0, ann.task_id, "0" * 64, ann.commitment, ann.fingerprints).signed(w.nodes[0])
    check = w.validators[1].validate(job, 0, missing)
    assert not check.agree and "unavailable" in check.reason
    assert not w.arbiter.decide(job, 0, missing).node_honest
    assert not w.arbiter.decide(job, 0, None).node_honest
    # an announcement forged by someone else is not the node's: with the node's real one the node wins
    forged = Announcement(ann.job, 0, ann.task_id, "0" * 64, ann.commitment, {}).signed(w.nodes[3])
    assert "no announcement signed" in w.validators[2].check(forged, ann.commitment, w.nodes[0].pubkey()).reason
    ruling = w.arbiter.arbitrate(job, 0, ann, w.validators[2:])
    assert ruling.node_honest and ruling.basis == "reference"
    assert w.m.job(job).tasks[0].arbitration == 1


class TwoFaced(Executor):
    """Records (and commits) its honest outputs but forwards perturbed ones to the next node."""

    def call(self, job, index, feeds):  # noqa: ANN001, ANN201
        out = super().call(job, index, feeds)
        return {k: v + np.float32(0.1) * np.abs(v).max() for k, v in out.items()}


def test_forwarding_something_else_than_committed_shows_in_the_fingerprints(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path)
    honest = w.runner().run(prompt(8), new_tokens=1, nodes=[0, 1, 2])
    assert all(not t.handoff_mismatches for t in honest.tasks)
    w.executors[1] = TwoFaced(w.m, w.nodes[1], w.engine, plan_bundles(plan_dir), w.blobs)
    report = w.runner().run(prompt(8), new_tokens=1, nodes=[0, 1, 2])
    task2 = w.executors[2].task(report.job, 2)
    handed_over = {i.name for i in task2.inputs} - set(task2.state)  # the hidden state, not the KV cache
    mismatches = report.tasks[2].handoff_mismatches
    assert {m.split(".", 2)[0] for m in mismatches} == {"step0", "step1"}
    assert {m.split(".", 2)[2] for m in mismatches} == handed_over and len(handed_over) == 1
    assert not report.tasks[1].handoff_mismatches
    assert all(t.verdict == "agree" for t in report.tasks)


def test_roles_work_over_a_store_server(plan_dir, tmp_path):
    """Transcripts uploaded to and fetched from the HTTP blob store (PUT verified by hash)."""
    from fastapi.testclient import TestClient

    from splitup.storage import BlobStore
    from splitup.storage.server import create_app
    from splitup.verify.blobs import HttpBlobs

    w = make_world(plan_dir, "http://testserver", ALWAYS, n_nodes=4)
    assert isinstance(w.blobs, HttpBlobs)
    store = BlobStore(tmp_path / "served")
    w.blobs.client._http = TestClient(create_app(store, writable=True))
    w.executors[2] = w.executor(2, cheat=zeros())
    report = w.runner().run(prompt(10), new_tokens=1, nodes=[0, 1, 2])
    assert [t.verdict for t in report.tasks] == ["agree", "agree", "disagree"]
    assert report.tasks[2].arbitration == "node cheated"
    assert len(list((tmp_path / "served" / "blobs").rglob("*"))) >= 3


def test_executor_commits_a_transcript_recorded_elsewhere(plan_dir, tmp_path):
    """The node daemon records calls in its own sessions; the executor only commits that record."""
    from splitup.runtime import run_stateful

    w = world(plan_dir, tmp_path)
    job = w.m.post_job(w.client, w.model, b"\4" * 32).address
    ex = w.executors[0]
    ex.accept(job, 0)
    task = ex.task(job, 0)
    runner = w.engine.load(plan_bundles(plan_dir)(task.task_id), task_id=task.task_id)
    t = Transcript(str(job), 0, task.task_id)
    state: dict = {}
    held = set(task.state.values())
    for feeds in (prompt(13), {"input_ids": np.array([[5]], np.int64)}):
        outs, state = run_stateful(runner, feeds, state)
        t.add(feeds, {k: v for k, v in outs.items() if k not in held})
    with pytest.raises(RoleError, match="another"):
        ex.record(job, 0, Transcript(str(job), 1, task.task_id, t.salt, t.steps))
    with pytest.raises(BadTranscript):
        ex.record(job, 0, Transcript(str(job), 0, task.task_id, t.salt, [Step(t.steps[1].inputs, {})]))
    ex.record(job, 0, t)
    ann = ex.commit(job, 0)
    assert ann.commitment == t.commitment() == bytes(w.m.job(job).tasks[0].commitment)
    w.t.advance(1)
    assert w.m.sample(job, 0)
    check = w.validators[1].validate(job, 0, ann)
    assert check.agree and check.calls == 2


def test_executor_forgets_a_committed_task(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path)
    job, ex, ann = committed_task(w)
    assert ex.transcript(job, 0).commitment() == ann.commitment
    ex.forget(job, 0)
    with pytest.raises(RoleError, match="was not accepted"):
        ex.transcript(job, 0)
    assert Transcript.from_bytes(w.blobs.get(ann.transcript_sha, 1 << 24)).commitment() == ann.commitment


def test_a_commit_whose_answer_is_lost_still_has_its_announcement(plan_dir, tmp_path, monkeypatch):
    """The ledger applies the commit and dies before answering: the executor hears an error, but the
    announcement was handed to ``keep`` before the send, so the node can still show the validator the
    transcript that opens its on-chain commitment (without it an honest node loses the dispute)."""
    from splitup.market.errors import TransactionFailed

    w = world(plan_dir, tmp_path)
    job = w.m.post_job(w.client, w.model, b"\3" * 32).address
    ex = w.executors[0]
    ex.accept(job, 0)
    ex.call(job, 0, prompt(7))
    sent = w.m.commit_result

    def lands_then_fails(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        sent(*args, **kw)
        raise TransactionFailed("the ledger died before answering")

    monkeypatch.setattr(w.m, "commit_result", lands_then_fails)
    kept: list[Announcement] = []
    with pytest.raises(TransactionFailed):
        ex.commit(job, 0, keep=kept.append)
    assert len(kept) == 1 and kept[0].commitment == bytes(w.m.job(job).tasks[0].commitment)
    w.t.advance(1)
    assert w.m.sample(job, 0)
    check = w.validators[1].validate(job, 0, kept[0])
    assert check.agree, check.reason


def test_a_validator_whose_verdict_did_not_land_checks_again(plan_dir, tmp_path, monkeypatch):
    """The ledger dies as the verdict is sent: the task stays taken up by this validator, who checks and
    submits again (the node agent does so on its next look), instead of staying silent into a slash."""
    from splitup.market.constants import TaskStatus
    from splitup.market.errors import TransactionFailed

    w = world(plan_dir, tmp_path)
    job, _ex, ann = committed_task(w)
    v = w.validators[1]
    sent = v.market.submit_verdict

    def down(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise TransactionFailed("the ledger is down")

    monkeypatch.setattr(v.market, "submit_verdict", down)
    with pytest.raises(TransactionFailed):
        v.validate(job, 0, ann)
    assert w.m.job(job).tasks[0].status == TaskStatus.VALIDATING
    monkeypatch.setattr(v.market, "submit_verdict", sent)
    check = v.validate(job, 0, ann, assigned=True)
    assert check.agree, check.reason
    assert w.m.job(job).tasks[0].status == TaskStatus.READY
