"""Compute units of every instruction, measured on the real program in LiteSVM.

    python -m splitup.market.bench      # prints a Markdown table
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable

from solders.keypair import Keypair

from splitup.market import calls
from splitup.market import instructions as ix
from splitup.market.constants import MAX_CALLS, MAX_TASKS
from splitup.market.evidence import HANDOFF, RECEIPT, Signed
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams, seal_of
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport, TxResult

DEFAULT_LIMIT = 200_000


def _h(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()


def measure(tasks: int = MAX_TASKS) -> dict[str, int]:
    """The largest compute-unit cost seen for each instruction over complete job lifecycles."""
    t = LiteSvmTransport()
    auth, client, a, b, c, payer = (Keypair() for _ in range(6))
    for k in (auth, client, a, b, c, payer):
        t.airdrop(k.pubkey(), 1_000 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    cu: dict[str, int] = {}

    def rec(name: str, fn: Callable[[], TxResult | bool]) -> None:
        res = fn()
        if isinstance(res, TxResult):
            cu[name] = max(cu.get(name, 0), res.compute_units)

    rec("init_config", lambda: m.init_config(auth, MarketParams.flat(10_000)))
    rec("set_config", lambda: m.set_config(auth, MarketParams.flat(10_000)))
    rec("register_node", lambda: m.register_node(a, 100 * LAMPORTS_PER_SOL, vram=1 << 34))
    rec("register_node", lambda: m.register_node(b, 100 * LAMPORTS_PER_SOL, vram=1 << 34))
    rec("register_node", lambda: m.register_node(c, 100 * LAMPORTS_PER_SOL, vram=1 << 34))
    rec("add_stake", lambda: m.add_stake(a, LAMPORTS_PER_SOL))
    rec("heartbeat", lambda: m.heartbeat(a, free_sessions=64, engines=3, version=256))
    rec("specialize", lambda: m.specialize(a, [_h(f"t{i}") for i in range(8)]))
    entries = [ModelTask(task_id=_h(f"t{i}"), vram=1 << 30, price=10_000_000) for i in range(tasks)]
    model = m.model_address(client.pubkey(), _h("model"))
    per_tx = 16
    rec("register_model", lambda: t.send([ix.register_model(m.program_id, client.pubkey(), _h("model"), tasks,
                                                            entries[:per_tx])], [client]))
    for start in range(per_tx, tasks, per_tx):
        chunk = entries[start : start + per_tx]
        rec("add_model_tasks", lambda start=start, chunk=chunk: t.send(
            [ix.add_model_tasks(m.program_id, client.pubkey(), model, start, chunk)], [client]))
    res = m.post_job(client, model, _h("in"))
    cu["post_job"] = res.compute_units
    job = res.address
    assert job is not None
    for i in range(tasks):
        rec("accept_task", lambda i=i: m.accept_task(a, job, i))
        rec("receive_input", lambda i=i: m.receive_input(a, job, i, _h(f"in{i}")))
        rec("commit_result", lambda i=i: m.commit_result(a, job, i, _h(f"out{i}"), seal_of(_h(f"work{i}"))))
    t.advance(1)
    rec("reveal_secret", lambda: m.reveal_secret(client, job))
    sample_ix_cu = []
    for i in range(tasks):
        if i == tasks - 1:
            t.advance(600)  # worst case: the draw scans the whole SlotHashes history
        sample_ix_cu.append(t.send([ix.sample(m.program_id, job, i)], [payer]).compute_units)
        # the validator holds the task, declared last of eight: the worst case of the specialisation scan
        m.specialize(b, [_h(f"other{k}") for k in range(7)] + [_h(f"t{i}")])
        rec("assign_validator", lambda i=i: m.assign_validator(b, job, i))
        agree = i % 2 == 0
        rec("submit_verdict", lambda i=i, agree=agree: m.submit_verdict(b, job, i, agree, _h(f"work{i}")))
        if not agree:
            rec("arbitrate", lambda i=i: m.arbitrate(auth, job, i, node_honest=i % 4 == 1))
        rec("settle", lambda i=i: m.settle(job, i))
    cu["sample"] = max(sample_ix_cu)
    rec("close_job", lambda: m.close_job(client, job))
    rec("begin_unstake", lambda: m.begin_unstake(a, LAMPORTS_PER_SOL))
    t.advance(200)
    rec("withdraw", lambda: m.withdraw(a))
    rec("collect_fees", lambda: m.collect_fees(auth, auth.pubkey(), 1))
    # a late node that had its input (the slashing path of expire); a release; a stand-in takeover
    job2 = m.post_job(client, model, _h("in2"), task_timeout_slots=1).address
    assert job2 is not None
    m.accept_task(a, job2, 0)
    m.receive_input(a, job2, 0, _h("in"))
    m.accept_task(a, job2, 1)
    m.accept_task(a, job2, 2)
    t.advance(2)
    rec("expire", lambda: m.expire(job2, 0))
    rec("release_task", lambda: m.release_task(a, job2, 1))
    rec("take_over", lambda: m.take_over(client, c, job2, 2))
    # evidence: the client proves a's signed receipt; a receiver proves a's lying hand-off
    job3 = m.post_job(client, model, _h("in3")).address
    assert job3 is not None
    m.accept_task(a, job3, 0)
    rec("prove_receipt", lambda: m.prove_receipt(Signed.make(RECEIPT, a, m.program_id, job3, 0, _h("in"))))
    # the deepest opening: the last call of a session of MAX_CALLS calls (a path of MAX_CALL_DEPTH siblings)
    sent = [_h(f"call {k}") for k in range(MAX_CALLS)]
    opening = calls.opening(sent, _h("body"), MAX_CALLS - 1)
    m.accept_task(a, job3, 1)
    m.commit_result(a, job3, 1, opening.commitment())
    lie = Signed.make(HANDOFF, a, m.program_id, job3, 1, _h("other"), call=MAX_CALLS - 1)
    rec("prove_handoff", lambda: m.prove_handoff(lie, opening))
    return cu


def table(cu: dict[str, int]) -> str:
    lines = ["| instruction | compute units | share of 200k |", "|---|---:|---:|"]
    for name, units in sorted(cu.items(), key=lambda kv: -kv[1]):
        lines.append(f"| `{name}` | {units:,} | {100 * units / DEFAULT_LIMIT:.1f}% |")
    return "\n".join(lines)


def main() -> int:
    print(table(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
