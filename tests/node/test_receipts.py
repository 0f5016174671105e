"""A node's signed receipts of its inputs travel back to the client with the hop records (HTTP and frames),
once per task, and the SDK proves them when it winds a job up: a node that got its input and walks away
(saying it was never fed) pays the liveness penalty. One node serving the three tasks on loopback, the
committed program on LiteSVM."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import uvicorn
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.client.pipeline import PipelineClient, plan_sends
from splitup.market.constants import BPS, TaskStatus
from splitup.market.errors import MarketError, TransactionFailed
from splitup.market.evidence import COMPACT_BYTES, RECEIPT, Signed
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport
from splitup.node.agent import MarketAgent, RecordingNode
from splitup.node.app import create_app
from splitup.node.node import NodeConfig
from splitup.node.wire import Hop
from splitup.partition.task import task_dir
from splitup.sdk.client import Client
from splitup.sdk.errors import JobError
from splitup.verify.blobs import LocalBlobs

PRICE = 10_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(plan_dir, plan, tmp_path_factory) -> Iterator[tuple[str, RecordingNode]]:
    cache = tmp_path_factory.mktemp("receipts-node")
    node = RecordingNode(NodeConfig(cache_dir=cache, max_session_bytes=1 << 30))
    for t in plan.tasks:
        shutil.copytree(task_dir(plan_dir, t), cache / "tasks" / t.task_id)  # what the agent's bundles find
        node.load_bundle(cache / "tasks" / t.task_id, t.task_id)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(node, frames_host="127.0.0.1"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the node did not start"
        time.sleep(0.05)
    try:
        yield url, node
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Chain:
    t: LiteSvmTransport
    m: Market
    client: Keypair
    owner: Keypair  # the served node's owner
    job: Pubkey


def _chain(plan, url: str) -> Chain:
    """LiteSVM with the program, the plan's model, the served node registered, and one job posted."""
    t = LiteSvmTransport()
    authority, client, owner, payer = Keypair(), Keypair(), Keypair(), Keypair()
    for k in (authority, client, owner, payer):
        t.airdrop(k.pubkey(), 100 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority)
    entries = [ModelTask(task_id=bytes.fromhex(x.task_id), vram=1 << 30, price=PRICE) for x in plan.tasks]
    model = m.register_model(client, hashlib.sha256(b"tiny").digest(), entries).address
    m.register_node(owner, 5 * LAMPORTS_PER_SOL, vram=1 << 34, endpoint=url)
    assert model is not None
    job = m.post_job(client, model, hashlib.sha256(b"in").digest(), task_timeout_slots=50).address
    assert job is not None
    return Chain(t, m, client, owner, job)


def _one_pass(plan, url: str, job: str) -> dict[tuple[str, int], dict]:
    """One stateless pass of the plan through the served node under ``job``; the receipts it brought."""
    initial, sends = plan_sends(plan.tasks, [o.name for o in plan.outputs])
    hops = [Hop([url], x.task_id, sends[k]) for k, x in enumerate(plan.tasks)]
    with PipelineClient(plan, [url] * len(hops)) as pc:
        pc.call(hops, {n: FEEDS[n] for n in initial}, job)
        return dict(pc.receipts)


FEEDS = {"input_ids": np.arange(5, dtype=np.int64).reshape(1, 5)}


def test_receipts_come_back_on_both_transports_and_catch_a_node_that_walks_away(plan, served) -> None:
    url, node = served
    c = _chain(plan, url)
    t, m, client, owner, job = c.t, c.m, c.client, c.owner, c.job
    agent = MarketAgent(m, owner, node, "http://127.0.0.1:9")
    for i in range(len(plan.tasks)):
        agent._accept(job, i)

    initial, sends = plan_sends(plan.tasks, [o.name for o in plan.outputs])
    hops = [Hop([url], x.task_id, sends[k]) for k, x in enumerate(plan.tasks)]
    feeds = FEEDS
    seen = {}
    for transport, direct in (("http", False), ("frames", False), ("frames", True)):
        with PipelineClient(plan, [url] * len(hops), transport=transport) as pc:
            told: list[tuple[str, int]] = []
            pc.on_receipt = lambda j, i, _r, told=told: told.append((j, i))
            pc.call(hops, {n: feeds[n] for n in initial}, str(job), direct=direct)
            assert pc.last_direct == direct  # a direct answer brings every hop's record with the result
            pc.call(hops, {n: feeds[n] for n in initial}, str(job), direct=direct)  # handed out again: told once
            seen[transport if not direct else "direct"] = dict(pc.receipts)
            assert sorted(told) == sorted(pc.receipts)  # each receipt as it first arrives (the gateway saves it)
            # a receipt rides along with the first step's hop record: 96 bytes as hex, its index and signer
            added = [{k: r[k] for k in ("receipt", "index", "signer")} for r in pc.last_hops if "receipt" in r]
            assert added and all(len(json.dumps(a)) < 300 for a in added)
    assert seen["http"] == seen["frames"] == seen["direct"]  # signed once per task, handed out again on a retried step
    assert agent.handoffs.store.senders() == []  # its hops to itself were signed and checked, not kept
    receipts = seen["http"]
    assert set(receipts) == {(str(job), i) for i in range(len(plan.tasks))}
    for (_, i), record in receipts.items():
        raw = bytes.fromhex(record["receipt"])
        assert len(raw) == COMPACT_BYTES
        Signed.from_compact(raw, RECEIPT, m.program_id, job, i, owner.pubkey())  # raises unless valid
    # another job's hops carry no receipt of this one, and nothing is signed for a job the node did not accept
    assert _one_pass(plan, url, "not-a-job") == {}

    # The node walks away from every task, saying it was never fed (the chain cannot tell by itself).
    for i in range(len(plan.tasks)):
        m.release_task(owner, job, i)
    sdk = Client(wallet=client, market=m, store_url="http://127.0.0.1:9")
    try:
        sdk.receipts[str(job)] = receipts
        with pytest.raises(JobError):
            sdk.wind_up(job, ask=False, timeout=0)  # proves the receipts; the deadlines have not passed yet
        assert all(s.received for s in m.job(job).tasks)
        stake = m.node(owner.pubkey()).stake
        t.advance(m.config().handoff_slots + 1)
        report = sdk.wait(job, timeout=10)  # expires each (liveness), releases the reopened tasks, closes
    finally:
        sdk.close()
    n = m.node(owner.pubkey())
    collateral = m.min_collateral(PRICE)
    assert n.liveness_faults == len(plan.tasks) and n.locked == 0
    assert n.stake == stake - len(plan.tasks) * (collateral * m.config().liveness_slash_bps // BPS)
    assert report.closed and str(job) not in sdk.receipts
    with pytest.raises(MarketError):
        m.job(job)
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def test_a_commit_that_fails_is_tried_again_not_given_up_as_never_fed(plan, served, tmp_path, monkeypatch) -> None:
    """The ledger goes away while the node commits (the chaos run kills it). The node must keep its record of
    the work and commit on a later look: before, the failed commit had dropped the record, and the next
    look released the receipted task as "never fed", costing an honest node the liveness penalty."""
    url, node = served
    c = _chain(plan, url)
    agent = MarketAgent(c.m, c.owner, node, "http://127.0.0.1:9", blobs=LocalBlobs(tmp_path / "blobs"),
                        idle_commit_s=0.0, idle_release_s=0.0)
    for i in range(len(plan.tasks)):
        agent._accept(c.job, i)
    _one_pass(plan, url, str(c.job))
    agent._receipt_inputs()
    assert all(s.received for s in c.m.job(c.job).tasks)

    def ledger_away(*_a: object, **_k: object) -> None:
        raise TransactionFailed("RPC: connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(c.m, "commit_result", ledger_away)
        agent._commit_idle({str(c.job): c.m.job(c.job)}, c.m.t.slot())
    assert all((str(c.job), i) in agent.accepted for i in range(len(plan.tasks)))  # kept, to try again
    agent._commit_idle({str(c.job): c.m.job(c.job)}, c.m.t.slot())
    assert [s.status for s in c.m.job(c.job).tasks] == [TaskStatus.COMMITTED] * len(plan.tasks)
    assert c.m.node(c.owner.pubkey()).liveness_faults == 0


def test_a_takeover_that_lands_after_the_agents_snapshot_is_committed_not_released(plan, served, tmp_path) -> None:
    """A stand-in computed task 0 after its executor failed; the client's takeover lands just after the
    stand-in's agent read the chain. The stale snapshot (task 0 another node's) must not make the agent
    forget the task, nor the client's "commit" then release it as never fed: the takeover receipted the
    input, so that release was a liveness penalty on an honest stand-in (the chaos run's lost stake)."""
    from splitup.market.cosign import takeover_request

    url, node = served
    c = _chain(plan, url)
    failed = Keypair()
    c.t.airdrop(failed.pubkey(), 10 * LAMPORTS_PER_SOL)
    c.m.register_node(failed, 5 * LAMPORTS_PER_SOL, vram=1 << 34, endpoint="http://127.0.0.1:9")
    for i in range(len(plan.tasks)):
        c.m.accept_task(failed, c.job, i)
    _one_pass(plan, url, str(c.job))  # the stand-in (the served node) computes the tasks
    agent = MarketAgent(c.m, c.owner, node, "http://127.0.0.1:9", blobs=LocalBlobs(tmp_path / "blobs"))
    agent._looked = time.monotonic()
    snapshot = {str(c.job): c.m.job(c.job)}  # the agent's look at the chain, before the takeover
    agent.take_over(c.job, 0, takeover_request(c.m, c.client, c.owner.pubkey(), c.job, 0))
    assert c.m.job(c.job).tasks[0].received == 1
    agent._commit_idle(snapshot, c.m.t.slot())
    assert (str(c.job), 0) in agent.accepted
    assert agent.finish(c.job, 0) is not None  # the client says "done": committed, not released
    assert c.m.job(c.job).tasks[0].status == TaskStatus.COMMITTED
    assert c.m.node(c.owner.pubkey()).liveness_faults == 0
