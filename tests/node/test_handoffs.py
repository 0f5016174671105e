"""Every hop of a market job carries its sender's signed hand-off of that call (HTTP and frames); the receiving
node checks it before computing and keeps it, and once the sender has committed, proves on chain any call it
handed on other than it committed. Three nodes (one task each, three owners) serving a generation on
loopback, the committed program on LiteSVM: an honest session proves nothing against anyone; a node that
hands on a wrong hidden state on a later call while committing its honest transcript is slashed."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.client.pipeline import PipelineClient, PipelineError, plan_sends
from splitup.market.constants import BPS, TaskStatus
from splitup.market.evidence import HANDOFF, Signed
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport
from splitup.node.agent import MarketAgent, RecordingNode
from splitup.node.app import create_app
from splitup.node.node import NodeConfig
from splitup.node.wire import Envelope, Hop, encode
from splitup.partition.task import task_dir
from splitup.verify.blobs import LocalBlobs
from splitup.verify.commitment import handoff_digest

from .procs import free_port

PRICE = 10_000_000
LIE_ON_CALL = 2


class LyingNode(RecordingNode):
    """Records (and later commits) its honest calls, but on the calls in ``lie_on`` hands the next node a
    shifted hidden state, signed as the protocol asks."""

    owner: Keypair
    market: Market
    lie_on: set[tuple[str, int]]

    def hop(self, env: Envelope, tensors: Mapping[str, np.ndarray],
            handoff: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        sent, signed = super().hop(env, tensors, handoff)
        if signed is None or (env.job, signed["call"]) not in self.lie_on:
            return sent, signed
        bad = {k: v + np.float32(0.5) if v.dtype.kind == "f" else v for k, v in sent.items()}
        lie = Signed.make(HANDOFF, self.owner, self.market.program_id, Pubkey.from_string(env.job),
                          signed["index"], handoff_digest(bad), signed["call"])
        return bad, {**signed, "sig": lie.compact().hex()}


@pytest.fixture(scope="module")
def three(plan_dir, plan, tmp_path_factory) -> Iterator[list[tuple[str, RecordingNode]]]:
    served, servers = [], []
    for k, t in enumerate(plan.tasks):
        cache = tmp_path_factory.mktemp(f"handoff-node{k}")
        node = (LyingNode if k == 0 else RecordingNode)(NodeConfig(cache_dir=cache, max_session_bytes=1 << 30))
        shutil.copytree(task_dir(plan_dir, t), cache / "tasks" / t.task_id)
        node.load_bundle(cache / "tasks" / t.task_id, t.task_id)
        # free_port, not a bare bind to port 0: the previous server may not listen yet, and the kernel hands
        # the same free port out twice about once in 14,000 picks
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(node), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        served.append((f"http://127.0.0.1:{port}", node))
    deadline = time.monotonic() + 30
    while not all(s.started for s in servers):
        assert time.monotonic() < deadline, "the nodes did not start"
        time.sleep(0.05)
    try:
        yield served
    finally:
        for s in servers:
            s.should_exit = True


def test_receivers_keep_signed_handoffs_and_prove_a_wrong_hidden_state_on_a_later_call(plan, three, tmp_path) -> None:
    t = LiteSvmTransport()
    authority, client, payer = Keypair(), Keypair(), Keypair()
    owners = [Keypair() for _ in three]
    for k in (authority, client, payer, *owners):
        t.airdrop(k.pubkey(), 100 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority)
    entries = [ModelTask(task_id=bytes.fromhex(x.task_id), vram=1 << 30, price=PRICE) for x in plan.tasks]
    model = m.register_model(client, hashlib.sha256(b"tiny").digest(), entries).address
    assert model is not None
    blobs = LocalBlobs(tmp_path / "blobs")
    agents = []
    for (url, node), owner in zip(three, owners, strict=True):
        m.register_node(owner, 5 * LAMPORTS_PER_SOL, vram=1 << 34, endpoint=url)
        agents.append(MarketAgent(m, owner, node, "http://127.0.0.1:9", blobs=blobs))
    liar = three[0][1]
    assert isinstance(liar, LyingNode)
    liar.owner, liar.market, liar.lie_on = owners[0], m, set()
    urls = [url for url, _ in three]

    def generate(transport: str) -> Any:
        job = m.post_job(client, model, hashlib.sha256(transport.encode()).digest(), task_timeout_slots=200).address
        assert job is not None
        for i, agent in enumerate(agents):
            agent._accept(job, i)
        for agent in agents:  # what the tick does: the hop path reads task indices, never the chain
            agent._learn_tasks(m.jobs())
        return job

    def run(job: Any, transport: str) -> None:
        with PipelineClient(plan, urls, transport=transport) as pc, pc.session() as gen:
            gen.job = str(job)
            gen.step(np.array([1, 2, 3], np.int64))  # the prefill: call 0 of every task
            for token in (4, 5, 6):  # three decode steps: calls 1 to 3
                gen.step(np.array([token], np.int64))

    def commit_and_prove(job: Any) -> None:
        anns = {i: agent.commit(job, i) for i, agent in enumerate(agents)}
        by_name = {str(j): info for j, info in m.jobs()}
        for agent in agents:
            agent.handoffs.prove(by_name, t.slot(), lambda _job, i: anns[i])

    stake = [m.node(o.pubkey()).stake for o in owners]
    # An honest session, over frames: each receiver kept the four signed calls of its sender, and each
    # opens to what the sender committed: nothing to prove, nobody slashed.
    honest = generate("frames")
    run(honest, "frames")
    for k in (1, 2):
        kept = agents[k].handoffs.store.kept(str(honest), k - 1)
        assert [(s.call, s.signer) for s in kept] == [(c, owners[k - 1].pubkey()) for c in range(4)]
        assert all(s.valid() for s in kept)
    assert agents[0].handoffs.store.senders() == []  # the first task's input came from the client
    commit_and_prove(honest)
    assert [a.handoffs.proved for a in agents] == [[], [], []]
    assert [s.status for s in m.job(honest).tasks] == [TaskStatus.COMMITTED] * 3
    assert [m.node(o.pubkey()).stake for o in owners] == stake

    # The first node hands the second a shifted hidden state on call 2 (over HTTP), signed, and commits its
    # honest transcript: the second node proves it.
    lying = generate("http")
    liar.lie_on = {(str(lying), LIE_ON_CALL)}
    run(lying, "http")
    commit_and_prove(lying)
    assert agents[1].handoffs.proved == [(str(lying), 0, LIE_ON_CALL)]
    assert [s.status for s in m.job(lying).tasks] == [TaskStatus.FAILED, TaskStatus.COMMITTED, TaskStatus.COMMITTED]
    slashed = m.min_collateral(PRICE) * m.config().handoff_slash_bps // BPS
    assert [m.node(o.pubkey()).stake for o in owners] == [stake[0] - slashed, stake[1], stake[2]]

    # A committed task takes no further calls (one beyond the commitment would be slashable), and a hop of a
    # market task without its sender's signed hand-off is refused before anything is computed.
    with PipelineClient(plan, urls, transport="http") as pc, pc.session() as gen:
        gen.job = str(honest)
        with pytest.raises(PipelineError):  # refused as "not here" on every try: no stand-in holds the task
            gen.step(np.array([7], np.int64))
    assert not liar.computed(str(honest), plan.tasks[0].task_id)
    _, sends = plan_sends(plan.tasks, ["logits"])
    route = [Hop([u], x.task_id, sends[k]) for k, (u, x) in enumerate(zip(urls, plan.tasks, strict=True))]
    env = Envelope(str(lying), 1, route)
    r = httpx.post(f"{urls[1]}/execute", content=encode({"hidden": np.zeros((1, 1, 4), np.float32)}, env), timeout=30)
    assert r.status_code == 400 and "hand-off" in r.json()["error"]

