"""The gateway writes the nodes' signed receipts down with its jobs as they arrive: a gateway killed mid-stream
still proves them after a restart, when it winds the job up, so the node that had its input and walked away pays the
liveness penalty. The committed program on LiteSVM, the gateway's real SQLite job store, no processes."""

from __future__ import annotations

import hashlib

from solders.keypair import Keypair

from splitup.gateway.service import GatewayService
from splitup.market.constants import BPS, TaskStatus
from splitup.market.evidence import RECEIPT, Signed
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport
from splitup.sdk.client import Client

PRICE = 10_000_000


def test_a_restarted_gateway_still_proves_the_receipts_it_was_handed(tmp_path) -> None:
    t = LiteSvmTransport()
    authority, client, owner, payer = Keypair(), Keypair(), Keypair(), Keypair()
    for k in (authority, client, owner, payer):
        t.airdrop(k.pubkey(), 100 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority)
    model = m.register_model(client, hashlib.sha256(b"m").digest(),
                             [ModelTask(task_id=hashlib.sha256(b"t").digest(), vram=1, price=PRICE)]).address
    m.register_node(owner, 2 * LAMPORTS_PER_SOL, vram=1 << 30)
    assert model is not None
    job = m.post_job(client, model, hashlib.sha256(b"in").digest(), task_timeout_slots=20).address
    assert job is not None
    m.accept_task(owner, job, 0)
    receipt = Signed.make(RECEIPT, owner, m.program_id, job, 0, hashlib.sha256(b"its input").digest())
    db = tmp_path / "gateway.sqlite"

    first = GatewayService(Client(wallet=client, market=m, store_url="http://127.0.0.1:9"), db_path=db)
    first.job_started(job, "m", "prompt", "completion", ["t"])
    # A hop brings the receipt back (PipelineClient.on_receipt, wired by the SDK's stream), then the gateway
    # is killed mid-stream: nothing else about the job is written after it.
    record = {"receipt": receipt.compact().hex(), "index": 0, "signer": str(owner.pubkey())}
    assert first.client.on_receipt is not None
    first.client.on_receipt(str(job), 0, record)
    first.store.close()  # killed: its workers never ran
    first.client.close()

    m.release_task(owner, job, 0)  # the node walks away, saying it was never fed
    second = GatewayService(Client(wallet=client, market=m, store_url="http://127.0.0.1:9"), db_path=db)
    try:
        assert second.jobs[str(job)].receipts  # read back from disk
        second._finish(str(job))  # one wind-up pass (the workers are not started): proves the receipt
        assert m.job(job).tasks[0].received == 1
        t.advance(m.config().handoff_slots + 1)
        second._finish(str(job))
    finally:
        second.store.close()
        second.client.close()
    n = m.node(owner.pubkey())
    assert n.liveness_faults == 1 and n.locked == 0
    assert n.stake == 2 * LAMPORTS_PER_SOL - m.min_collateral(PRICE) * m.config().liveness_slash_bps // BPS
    assert second.jobs[str(job)].state == "wound_up"
    assert [t.status for t in second.jobs[str(job)].report.tasks] == [TaskStatus.RELEASED.name]
