"""The demo's whole flow with the tiny model: real processes (ledger, store, 4 nodes), a paid job with
every task verified, and the summary's numbers checked against the chain while it still runs."""

from __future__ import annotations

import pytest
from solders.pubkey import Pubkey

from splitup.demo.flow import DemoOptions, Summary, run_demo
from splitup.market.connect import connect
from splitup.market.constants import TaskStatus
from splitup.market.market import task_reward

# LiteSVM (behind the local ledger) charges 5000 lamports per signature; every party signs alone.
FEE = 5_000


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Summary, dict]:
    seen: dict = {}

    def inspect(summary: Summary, env: dict) -> None:
        m = connect(env["rpc_url"], env["wallets"]["authority"])
        seen["nodes"] = {name: m.node(kp.pubkey()) for name, kp in env["wallets"].items() if name.startswith("node-")}
        seen["balances"] = {name: m.t.balance(kp.pubkey()) for name, kp in env["wallets"].items()}
        seen["config"] = m.config()
        seen["job_account"] = m.t.get_account(Pubkey.from_string(summary.job))
        seen["open_tasks"] = m.tasks_in(*TaskStatus)

    opts = DemoOptions(smaller=True, workdir=tmp_path_factory.mktemp("demo") / "run", max_tokens=10,
                       verify_rate_bps=10_000)
    summary = run_demo(opts, inspect=inspect)
    return summary, seen


def test_text_matches_single_process(demo) -> None:
    s, _ = demo
    assert len(s.token_ids) > 0
    assert s.token_ids == s.reference_ids
    assert s.identical


def test_every_task_ran_on_a_node_and_was_verified_by_another(demo) -> None:
    s, chain = demo
    assert len(s.tasks) == 3
    for t in s.tasks:
        assert t.status == "SETTLED" and t.verdict == "agree"
        assert t.executor.startswith("node-") and t.validator and t.validator.startswith("node-")
        assert t.executor != t.validator
    # The summary's counts are the chain's reputation counters (a fresh ledger: this job only).
    assert s.verified == 3 == sum(n.verified for n in chain["nodes"].values())
    assert sum(n.tasks_done for n in chain["nodes"].values()) == 3
    assert {r.name: (r.tasks_done, r.verified, r.failed) for r in s.nodes} == {
        name: (n.tasks_done, n.verified, n.failed) for name, n in chain["nodes"].items()}


def test_payments_match_balances_on_chain(demo) -> None:
    s, chain = demo
    cfg = chain["config"]
    for row in s.nodes:
        ran = [t for t in s.tasks if t.executor == row.name]
        checked = [t for t in s.tasks if t.validator == row.name]
        earned = sum(t.node_paid for t in ran) + sum(t.validator_paid for t in checked)
        # accept + commit per task run (+ an input receipt, unless the commit came first and stands for it),
        # assign + verdict per task validated, + its on-chain heartbeats meanwhile
        spent = earned - (chain["balances"][row.name] - row.balance_before)
        assert chain["balances"][row.name] - row.balance_before == row.balance_after - row.balance_before
        assert spent % FEE == 0 and 2 * len(ran) + 2 * len(checked) <= spent // FEE - row.heartbeats <= 3 * len(ran) + 2 * len(checked)
        assert row.stake_after == row.stake_before == chain["nodes"][row.name].stake  # nobody slashed
    assert s.slashed == 0
    # Each task: price to its node, the validator reward to its validator, the protocol fee to the treasury.
    assert s.node_paid == sum(t.price for t in s.tasks)
    # a check that proved re-execution pays max(validator_reward, price x validator_reward_bps)
    assert all(t.proved for t in s.tasks if t.verdict == "agree")
    assert s.validator_paid == sum(task_reward(cfg.validator_reward, cfg.validator_reward_bps, t.price)
                                   for t in s.tasks)
    assert s.fees == sum(t.price * cfg.protocol_fee_bps // 10_000 for t in s.tasks)
    assert s.treasury_after - s.treasury_before == s.fees == cfg.treasury - s.treasury_before
    assert s.escrow_paid == s.node_paid + s.validator_paid + s.fees
    assert s.refund == s.escrow_deposit - s.escrow_paid
    # The client paid what escrow paid out plus its own transactions: post, reveal, sample and settle per
    # task, close.
    assert s.client_before - chain["balances"]["client"] == s.escrow_paid + FEE * (3 + 2 * len(s.tasks))


def test_job_closed_and_nothing_left_open(demo) -> None:
    _, chain = demo
    assert chain["job_account"] is None
    assert chain["open_tasks"] == []


def test_every_process_stopped(demo) -> None:
    s, _ = demo
    import subprocess

    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert s.workdir not in out
