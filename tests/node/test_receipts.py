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

import httpx
import numpy as np
import pytest
import uvicorn
from solders.keypair import Keypair

from splitup.client.pipeline import PipelineClient, plan_sends
from splitup.market.constants import BPS
from splitup.market.errors import MarketError
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


def test_receipts_come_back_on_both_transports_and_catch_a_node_that_walks_away(plan, served) -> None:
    url, node = served
    t = LiteSvmTransport()
    authority, client, owner, payer = Keypair(), Keypair(), Keypair(), Keypair()
    for k in (authority, client, owner, payer):
        t.airdrop(k.pubkey(), 100 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority)
    entries = [ModelTask(task_id=bytes.fromhex(x.task_id), vram=1 << 30, price=PRICE) for x in plan.tasks]
    model = m.register_model(client, hashlib.sha256(b"tiny").digest(), entries).address
    m.register_node(owner, 5 * LAMPORTS_PER_SOL, vram=1 << 34, endpoint=url)
    agent = MarketAgent(m, owner, node, "http://127.0.0.1:9")
    job = m.post_job(client, model, hashlib.sha256(b"in").digest(), task_timeout_slots=50).address
    assert model is not None and job is not None
    for i in range(len(plan.tasks)):
        agent._accept(job, i)

    initial, sends = plan_sends(plan.tasks, [o.name for o in plan.outputs])
    hops = [Hop([url], x.task_id, sends[k]) for k, x in enumerate(plan.tasks)]
    feeds = {"input_ids": np.arange(5, dtype=np.int64).reshape(1, 5)}
    seen = {}
    for transport, direct in (("http", False), ("frames", False), ("frames", True)):
        with PipelineClient(plan, [url] * len(hops), transport=transport) as pc:
            pc.call(hops, {n: feeds[n] for n in initial}, str(job), direct=direct)
            assert pc.last_direct == direct  # a direct answer brings every hop's record with the result
            seen[transport if not direct else "direct"] = dict(pc.receipts)
            # a receipt rides along with the first step's hop record: 96 bytes as hex, its index and signer
            added = [{k: r[k] for k in ("receipt", "index", "signer")} for r in pc.last_hops if "receipt" in r]
            assert added and all(len(json.dumps(a)) < 300 for a in added)
    assert seen["http"] == seen["frames"] == seen["direct"]  # signed once per task, handed out again on a retried step
    receipts = seen["http"]
    assert set(receipts) == {(str(job), i) for i in range(len(plan.tasks))}
    for (_, i), record in receipts.items():
        raw = bytes.fromhex(record["receipt"])
        assert len(raw) == COMPACT_BYTES
        Signed.from_compact(raw, RECEIPT, m.program_id, job, i, owner.pubkey())  # raises unless valid
    # another job's hops carry no receipt of this one, and nothing is signed for a job the node did not accept
    with PipelineClient(plan, [url] * len(hops)) as pc:
        pc.call(hops, {n: feeds[n] for n in initial}, "not-a-job")
        assert pc.receipts == {}

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
