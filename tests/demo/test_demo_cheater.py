"""The demo with a dishonest node (tiny model, every task verified): its task is caught by a validator,
ruled against by the arbiter, slashed on chain, and the summary's slash and payouts are the chain's."""

from __future__ import annotations

import pytest

from splitup.demo.flow import DemoOptions, Summary, run_demo
from splitup.market.connect import connect
from splitup.market.market import task_reward

FEE = 5_000  # lamports per signature on the local ledger


@pytest.fixture(scope="module")
def caught(tmp_path_factory) -> tuple[Summary, dict]:
    seen: dict = {}

    def inspect(summary: Summary, env: dict) -> None:
        m = connect(env["rpc_url"], env["wallets"]["authority"])
        seen["nodes"] = {n: m.node(kp.pubkey()) for n, kp in env["wallets"].items() if n.startswith("node-")}
        seen["balances"] = {n: m.t.balance(kp.pubkey()) for n, kp in env["wallets"].items()}
        seen["config"] = m.config()

    opts = DemoOptions(smaller=True, workdir=tmp_path_factory.mktemp("cheat") / "run", max_tokens=6,
                       verify_rate_bps=10_000, cheater="node-a")
    return run_demo(opts, inspect=inspect), seen


def test_the_cheaters_task_fails_and_the_others_settle(caught) -> None:
    s, _ = caught
    mine = [t for t in s.tasks if t.executor == "node-a"]
    assert len(mine) == 1
    bad = mine[0]
    assert (bad.status, bad.verdict, bad.arbitration) == ("FAILED", "disagree", "node_cheated")
    assert bad.node_paid == 0 and bad.node_slashed > 0
    assert all(t.status == "SETTLED" and t.verdict == "agree" for t in s.tasks if t is not bad)
    assert s.rulings == 1


def test_slash_and_payouts_match_the_chain(caught) -> None:
    s, chain = caught
    cfg = chain["config"]
    bad = next(t for t in s.tasks if t.executor == "node-a")
    slash = cfg.task_collateral * cfg.slash_bps // 10_000
    assert bad.node_slashed == slash == s.slashed
    cheater = next(n for n in s.nodes if n.name == "node-a")
    assert cheater.stake_before - cheater.stake_after == slash == cheater.stake_before - chain["nodes"]["node-a"].stake
    assert chain["nodes"]["node-a"].failed == 1 and chain["nodes"]["node-a"].tasks_done == 0
    # The validator who caught it is paid its reward plus the cheater's slash.
    assert bad.validator_paid == task_reward(cfg.validator_reward, cfg.validator_reward_bps, bad.price) + slash
    v = next(n for n in s.nodes if n.name == bad.validator)
    ran = [t for t in s.tasks if t.executor == v.name]
    checked = [t for t in s.tasks if t.validator == v.name]
    earned = sum(t.node_paid for t in ran) + sum(t.validator_paid for t in checked)
    # accept + commit per task run (+ an input receipt, unless the commit came first and stands for it),
    # assign + verdict per task validated, + its on-chain heartbeats meanwhile
    spent = earned - (chain["balances"][v.name] - v.balance_before)
    assert spent % FEE == 0 and 2 * len(ran) + 2 * len(checked) <= spent // FEE - v.heartbeats <= 3 * len(ran) + 2 * len(checked)
    # The client gets the failed task's price and fee back; the treasury takes fees of settled tasks only.
    assert s.refund == s.escrow_deposit - s.escrow_paid >= bad.price
    assert s.fees == sum(t.price * cfg.protocol_fee_bps // 10_000 for t in s.tasks if t is not bad)
    assert s.treasury_after - s.treasury_before == s.fees
