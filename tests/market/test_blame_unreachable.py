"""Blame needs evidence, and hiding is not a way out of it.

An executor publishes its signed announcement in the market's blob store, under its owner's key, before
it commits (``MarketAgent._keep``); validators and the arbiter read it there first
(``fetch_announcement``), so a sampled cheat that stops answering once the chain shows its task drawn is
checked all the same, and one that committed without publishing and will not show its announcement is
voted and ruled against: before, both were paid unverified once the windows passed.

What is still not evidence: the market's own outage. With the store and the executor both out of reach
(killed and restarting, overloaded) the validator does not take the task up, the arbiter does not rule,
and if that lasts past the arbiter's window the dispute expires with nobody slashed.

The committed program on LiteSVM; the store a real ``splitup store serve`` process."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.demo.procs import free_port
from splitup.market import calls
from splitup.market.accounts import node_endpoint
from splitup.market.constants import BPS, TaskStatus
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams, seal_of
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport
from splitup.node.agent import (
    DisputeJudge,
    MarketAgent,
    NodeUnreachable,
    RecordingNode,
    announcement_json,
    announcement_topic,
    fetch_announcement,
)
from splitup.node.node import NodeConfig
from splitup.storage import BlobStore
from splitup.storage.records import Record
from splitup.verify.blobs import HttpBlobs
from splitup.verify.roles import Announcement

PRICE = 10_000_000
DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port


def _sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _closed_port_url() -> str:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A writable ``splitup store serve`` process: its URL and directory. Stopped by its own pid."""
    root = tmp_path_factory.mktemp("store")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(root.parent / f"{root.name}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "splitup", "store", "serve", "--dir", str(root), "--port",
                                 str(port), "--writable"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the store did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, root
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class World:
    t: LiteSvmTransport
    m: Market
    authority: Keypair
    client: Keypair
    executor: Keypair
    validator: Keypair
    job: Pubkey
    task_id: bytes


def _world() -> World:
    """Every task drawn; the executor's node registered at a port nobody listens on (it hides), and task 0
    of a posted job accepted by it."""
    t = LiteSvmTransport()
    authority, client, executor, validator, payer = (Keypair() for _ in range(5))
    for k in (authority, client, executor, validator, payer):
        t.airdrop(k.pubkey(), 100 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority, MarketParams.flat(10_000))  # every task drawn for a check
    task = ModelTask(task_id=_sha(b"task"), vram=1, price=PRICE)
    model = m.register_model(client, _sha(b"model"), [task]).address
    m.register_node(executor, 2 * LAMPORTS_PER_SOL, vram=1 << 30, endpoint=_closed_port_url())
    m.register_node(validator, 2 * LAMPORTS_PER_SOL, vram=1 << 30, endpoint=DOWN)
    m.specialize(validator, [task.task_id])
    assert model is not None
    job = m.post_job(client, model, _sha(b"input")).address
    assert job is not None
    m.accept_task(executor, job, 0)
    return World(t, m, authority, client, executor, validator, job, task.task_id)


def _announcement(w: World, owner: Keypair, salt: bytes = b"body") -> Announcement:
    """A signed announcement whose call tree opens to its ``commitment`` (no transcript behind it)."""
    digests = (_sha(b"call 0"), _sha(b"call 1"))
    body = _sha(salt)
    return Announcement(str(w.job), 0, w.task_id.hex(), _sha(b"transcript").hex(),
                        calls.commitment(len(digests), calls.root(digests), body), calls=digests,
                        body=body).signed(owner)


def _commit_and_draw(w: World, commitment: bytes) -> None:
    w.m.commit_result(w.executor, w.job, 0, commitment, seal_of(_sha(b"work")))
    w.t.advance(1)
    assert w.m.sample(w.job, 0)
    w.t.advance(w.m.config().validator_ramp_slots + 2)  # the validator's turn in the lottery has come


def _validator_agent(w: World, store_url: str, cache: Path) -> MarketAgent:
    return MarketAgent(w.m, w.validator, RecordingNode(NodeConfig(cache_dir=cache)), store_url)


def _run_out_the_clock(w: World) -> None:
    """Let every window pass: expire what is still waiting (a sampled task nobody took up, a dispute nobody
    ruled on), then settle. What the task earned its node shows in the lamports."""
    cfg = w.m.config()
    while w.m.job(w.job).tasks[0].status in (TaskStatus.SAMPLED, TaskStatus.VALIDATING, TaskStatus.DISPUTED):
        w.t.advance(max(cfg.validator_timeout_slots, cfg.arbiter_timeout_slots) + 1)
        w.m.expire(w.job, 0)
    w.m.settle(w.job, 0)


def test_an_executor_and_a_store_both_unreachable_are_neither_voted_nor_ruled_against(tmp_path) -> None:
    """The market's own outage is not evidence: with the store away as well as the executor, nobody can
    tell hiding from being away."""
    w = _world()
    t, m, job = w.t, w.m, w.job
    _commit_and_draw(w, _sha(b"output"))
    stakes = {k: m.node(k.pubkey()).stake for k in (w.executor, w.validator)}

    with pytest.raises(NodeUnreachable):
        fetch_announcement(m, job, 0, timeout=5, store=HttpBlobs(DOWN))
    agent = _validator_agent(w, DOWN, tmp_path / "node")
    agent._validate(job, 0)  # can ask neither: does not take the task up, does not vote
    assert m.job(job).tasks[0].status == TaskStatus.SAMPLED
    assert agent.stats["validated"] == 0

    # A dispute opened meanwhile (a validator's "disagree") is not ruled on while both are away...
    m.assign_validator(w.validator, job, 0)
    m.submit_verdict(w.validator, job, 0, False, _sha(b"another output"))
    judge = DisputeJudge(m, w.authority, DOWN, tmp_path / "arbiter")
    judge.judge_once()
    assert m.job(job).tasks[0].status == TaskStatus.DISPUTED and judge.rulings == []
    # ... and once the arbiter's window is over, it expires with nobody slashed: the node is paid unverified
    t.advance(m.config().arbiter_timeout_slots + 1)
    m.expire(job, 0)
    m.settle(job, 0)
    assert m.job(job).tasks[0].status == TaskStatus.SETTLED
    for k in (w.executor, w.validator):
        n = m.node(k.pubkey())
        assert (n.stake, n.failed, n.locked) == (stakes[k], 0, 0)


def test_a_sampled_cheat_that_published_nothing_and_hides_is_voted_against_and_slashed(store, tmp_path) -> None:
    """The attack: commit garbage, publish no announcement, and once the chain shows the task drawn answer
    nobody. The store (up, and holding nothing under the executor's key for the task) and the commit on
    chain are the evidence: the validator votes against it, the arbiter rules against it, it is slashed
    and unpaid. (Before, it was paid unverified when the windows passed.)"""
    url, _ = store
    w = _world()
    m, job = w.m, w.job
    _commit_and_draw(w, _sha(b"garbage"))  # committed: nothing published, nothing to show
    stake, wallet = m.node(w.executor.pubkey()).stake, w.t.balance(w.executor.pubkey())

    assert fetch_announcement(m, job, 0, timeout=5, store=HttpBlobs(url)) is None
    agent = _validator_agent(w, url, tmp_path / "validator")
    agent._validate(job, 0)
    judge = DisputeJudge(m, w.authority, url, tmp_path / "arbiter")
    judge.judge_once()
    _run_out_the_clock(w)

    n = m.node(w.executor.pubkey())
    paid = w.t.balance(w.executor.pubkey()) - wallet
    print(f"cheat's stake {stake} -> {n.stake}, paid {paid} of {PRICE}")
    assert agent.stats["validated"] == 1 and agent.stats["disagreed"] == 1
    assert [(j, i, honest) for j, i, honest, _ in judge.rulings] == [(str(job), 0, False)]
    assert "no announcement" in judge.rulings[0][3]
    assert m.job(job).tasks[0].status == TaskStatus.FAILED
    assert n.stake == stake - m.min_collateral(PRICE) * m.config().slash_bps // BPS
    assert (n.failed, n.locked, paid) == (1, 0, 0)


def test_a_published_announcement_is_had_from_the_store_while_its_node_hides(store, tmp_path) -> None:
    """The executor published its announcement as the agent does before committing, then stops answering:
    validators and the arbiter get it, verified, from the store without the node."""
    url, _ = store
    w = _world()
    ann = _announcement(w, w.executor)
    executor = MarketAgent(w.m, w.executor, RecordingNode(NodeConfig(cache_dir=tmp_path / "executor")), url)
    executor._keep(ann)  # what runs before the commit transaction is sent
    _commit_and_draw(w, ann.commitment)
    with pytest.raises(httpx.HTTPError):  # the node answers nobody
        httpx.get(f"{node_endpoint(w.m.node(w.executor.pubkey()))}/health", timeout=2)

    got = fetch_announcement(w.m, w.job, 0, timeout=5, store=HttpBlobs(url))
    assert got == ann and got.signed_by(w.executor.pubkey()) and got.opens(ann.commitment)


def test_records_that_prove_nothing_are_ignored(store, tmp_path) -> None:
    """What the store holds for the executor counts only when it is the executor's signed announcement of
    this task opening its commitment; anything else is ignored, and with the node hiding the task is
    blamed on the node as if nothing had been published."""
    url, root = store
    w = _world()
    ann = _announcement(w, w.executor)
    _commit_and_draw(w, ann.commitment)
    topic, owner = announcement_topic(w.job, 0), str(w.executor.pubkey())
    records = HttpBlobs(url)
    mallory = Keypair()

    def body(a: Announcement) -> bytes:
        return json.dumps(announcement_json(a)).encode()

    # Nobody but the executor can write under its key: the store refuses mallory's record...
    forged = Record.sign(mallory, topic, body(ann.signed(mallory)), sequence=1)
    r = httpx.put(f"{url}/records/{owner}/{topic}", content=forged.body, timeout=10,
                  headers={"X-SplitUp-Signature": forged.signature.hex(), "X-SplitUp-Sequence": "1"})
    assert r.status_code == 403
    # ... and one planted in the store's directory behind its back is not taken for the executor's word
    path = root / "records" / owner
    path.mkdir(parents=True, exist_ok=True)
    (path / hashlib.sha256(topic.encode()).hexdigest()).write_bytes((1).to_bytes(8, "big") + forged.signature
                                                                   + forged.body)
    assert BlobStore(root).get_record(owner, topic) is not None
    assert fetch_announcement(w.m, w.job, 0, timeout=5, store=records) is None
    # A record the executor signed, of an announcement signed by another key, or of one that does not open
    # the commitment on chain (it committed something else), or of another task: ignored as well.
    for wrong in (ann.signed(mallory), _announcement(w, w.executor, salt=b"other body"),
                  replace(ann, index=1).signed(w.executor)):
        records.publish_record(w.executor, topic, body(wrong))
        assert fetch_announcement(w.m, w.job, 0, timeout=5, store=records) is None
    # The executor's own announcement of this task: taken.
    records.publish_record(w.executor, topic, body(ann))
    assert fetch_announcement(w.m, w.job, 0, timeout=5, store=records) == ann


def test_a_task_this_node_signed_for_is_never_taken_again(tmp_path, monkeypatch) -> None:
    """Receipts and hand-offs name the job and task, not the turn: had the node taken the task again after it
    reopened, the client could hold the first turn's hand-off against the second turn's commitment. Once it
    signed one, the node does not accept the task again, also after a restart."""
    w = _world()
    job, task_id = str(w.job), w.task_id.hex()
    cache = tmp_path / "executor"
    agent = MarketAgent(w.m, w.executor, RecordingNode(NodeConfig(cache_dir=cache)), DOWN)
    agent._index_of[(job, task_id)] = 0
    assert agent._sign_handoff(job, task_id, 0, _sha(b"what call 0 handed on")) is not None
    restarted = MarketAgent(w.m, w.executor, RecordingNode(NodeConfig(cache_dir=cache)), DOWN)
    for a in (agent, restarted):
        assert (job, 0) in a.worked
        monkeypatch.setattr(a.executor, "accept", lambda *_: pytest.fail("took a task it had signed for"))
        a._accept(w.job, 0)
    fresh = MarketAgent(w.m, w.executor, RecordingNode(NodeConfig(cache_dir=tmp_path / "other")), DOWN)
    assert (job, 0) not in fresh.worked  # a node that signed nothing for it may take it
    restarted._forget_closed(set())  # the job closed: its address never comes back (the nonce rule)
    assert (job, 0) not in restarted.worked and not list((cache / "worked").iterdir())
