"""Blame needs evidence: an executor that cannot be reached for its announcement (killed and restarting,
overloaded) is not judged as one that announced nothing. The validator does not take its task up and
vote against it, the arbiter does not rule on the dispute, and if the node stays away past the arbiter's
window the dispute expires with nobody slashed. The committed program on LiteSVM, no processes."""

from __future__ import annotations

import hashlib
import socket

from solders.keypair import Keypair

from splitup.market.constants import TaskStatus
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams, seal_of
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport
from splitup.node.agent import DisputeJudge, MarketAgent, NodeUnreachable, RecordingNode, fetch_announcement
from splitup.node.node import NodeConfig

PRICE = 10_000_000


def _sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _closed_port_url() -> str:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_executor_is_neither_voted_nor_ruled_against(tmp_path) -> None:
    t = LiteSvmTransport()
    authority, client, executor, validator, payer = (Keypair() for _ in range(5))
    for k in (authority, client, executor, validator, payer):
        t.airdrop(k.pubkey(), 100 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority, MarketParams.flat(10_000))  # every task drawn for a check
    task = ModelTask(task_id=_sha(b"task"), vram=1, price=PRICE)
    model = m.register_model(client, _sha(b"model"), [task]).address
    m.register_node(executor, 2 * LAMPORTS_PER_SOL, vram=1 << 30, endpoint=_closed_port_url())
    m.register_node(validator, 2 * LAMPORTS_PER_SOL, vram=1 << 30, endpoint="http://127.0.0.1:9")
    m.specialize(validator, [task.task_id])
    assert model is not None
    job = m.post_job(client, model, _sha(b"input")).address
    assert job is not None
    m.accept_task(executor, job, 0)
    m.commit_result(executor, job, 0, _sha(b"output"), seal_of(_sha(b"work")))
    t.advance(1)
    assert m.sample(job, 0)
    t.advance(m.config().validator_ramp_slots + 2)  # the validator's turn in the lottery has come
    stakes = {k: m.node(k.pubkey()).stake for k in (executor, validator)}

    try:
        fetch_announcement(m, job, 0, timeout=5)
        raise AssertionError("an unreachable node's announcement was taken for an answer")
    except NodeUnreachable:
        pass
    agent = MarketAgent(m, validator, RecordingNode(NodeConfig(cache_dir=tmp_path / "node")), "http://127.0.0.1:9")
    agent._validate(job, 0)  # cannot ask the executor: does not take the task up, does not vote
    assert m.job(job).tasks[0].status == TaskStatus.SAMPLED
    assert agent.stats["validated"] == 0

    # A dispute opened meanwhile (a validator's "disagree") is not ruled on while the executor is away...
    m.assign_validator(validator, job, 0)
    m.submit_verdict(validator, job, 0, False, _sha(b"another output"))
    judge = DisputeJudge(m, authority, "http://127.0.0.1:9", tmp_path / "arbiter")
    judge.judge_once()
    assert m.job(job).tasks[0].status == TaskStatus.DISPUTED and judge.rulings == []
    # ... and once the arbiter's window is over, it expires with nobody slashed: the node is paid unverified
    t.advance(m.config().arbiter_timeout_slots + 1)
    m.expire(job, 0)
    m.settle(job, 0)
    assert m.job(job).tasks[0].status == TaskStatus.SETTLED
    for k in (executor, validator):
        n = m.node(k.pubkey())
        assert (n.stake, n.failed, n.locked) == (stakes[k], 0, 0)
