"""Proof of Sampling in a real multi-process market, measured over many jobs.

The demo's local market (``splitup.demo.network.local_market``: ledger, blob store, four node processes
with their market agents, the arbiter) runs the tiny model at a verification rate of 30%; node-c is
started with ``--cheat perturb`` (every output it forwards carries noise of 5% of its RMS, from a fixed
seed) and executes the last task of every job. After ``JOBS`` (48) short generations (prompts drawn with a
fixed seed) the chain must show:

- the cheater's tasks were drawn at a rate consistent with p (exact binomial acceptance region at
  significance 1e-6, so the test does not flake; the draw itself comes from slot hashes and salted
  commitments and cannot be seeded), and so were all tasks of all jobs;
- every drawn cheat ended FAILED, ruled "node cheated", with exactly the configured slash taken from
  the cheater's stake and paid to the validator; every undrawn cheat was settled and paid (PoSP makes
  cheating unprofitable, not impossible);
- the honest nodes, on different engines and thread counts, were never slashed nor failed;
- the lamports of every wallet and program account changed only by the transaction fees.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from binomial import binomial_region

from splitup.demo.flow import prepare
from splitup.demo.network import local_market
from splitup.market.connect import connect
from splitup.runtime.registry import available_engines
from splitup.sdk.client import Client, Completion
from splitup.sdk.reports import JobReport

# ~1.3-1.7 s each with the tiny model on 2 shared cores; about 80 s for the whole module. 48 jobs: a run fails
# by chance about once in a million (the regions at ALPHA: 1-31 of 48 cheats, 18-71 of 144 tasks; no cheat
# drawn, which the slash checks below need, 0.7**48 = 4e-8); 30 jobs at 1e-4 failed about once in 10^4.
JOBS = 48
RATE_BPS = 3_000
ALPHA = 1e-6  # two-sided significance of each binomial check
MAX_TOKENS = 3
SEED = 7
FEE = 5_000  # lamports per signature on the local ledger (every transaction has one signer)
# The placement (``splitup.demo.network.placement``) gives node-c the last task: the tiny model's tasks need
# 764, 683 and 682 KB and the nodes hold 736, 809, 883 and 956 KB, so node-a (the smallest) takes task 1.
CHEATER = "node-c"  # executes the last task in every job
# Prompts of one length (random token ids from a fixed seed): every job has the same shapes, so the tinygrad
# node compiles its kernels in the first job only.
PROMPT_TOKENS = 6

# Honest nodes on different engines: node-a on tinygrad executes task 1 and is the only other holder of
# the cheater's task 2, so it validates every drawn cheat (and its own work is validated on onnxruntime);
# node-b runs onnxruntime with 2 threads, node-d with 1. Without tinygrad node-a runs onnxruntime too.
TINYGRAD = available_engines().get("tinygrad") == "ok"
NODE_ARGS = {"node-b": ["--threads", "2"], "node-a": ["--engine", "tinygrad"] if TINYGRAD else ["--threads", "2"]}


@dataclass
class Snapshot:
    stake: dict[str, int]
    balance: dict[str, int]
    nodes: dict[str, Any]
    treasury: int
    total: int  # lamports of every wallet and every account of the market program
    signatures: int  # transactions the ledger has recorded (failed ones included: they pay their fee)
    heartbeats: dict[str, int]  # on-chain heartbeats each node had sent (its agent's count)


@dataclass
class Run:
    reports: list[JobReport]
    names: dict[str, str]  # node account address -> node name
    before: Snapshot
    after: Snapshot
    config: Any
    engines: dict[str, str]
    seconds: float
    prompts: list[list[int]] = field(default_factory=list)

    def tasks_of(self, name: str) -> list:
        return [t for r in self.reports for t in r.tasks if self.names.get(t.node or "") == name]

    @property
    def slash(self) -> int:
        return self.config.task_collateral * self.config.slash_bps // 10_000


def _signatures(ledger_dir: Path) -> int:
    with sqlite3.connect(f"file:{ledger_dir / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute("SELECT COUNT(*) FROM signatures").fetchone()[0])


def _heartbeats(net: Any) -> dict[str, int]:
    return {c.name: int(httpx.get(c.url + "/market/agent", timeout=10).json()["stats"].get("heartbeats", 0))
            for c in net.nodes}


def _snapshot(market, wallets: dict, ledger_dir: Path, net: Any) -> Snapshot:  # noqa: ANN001
    # Nodes may still be sending (a validator's late verdict, a heartbeat): read until the transaction count
    # and the heartbeat counts are stable.
    while True:
        beats = _heartbeats(net)
        sigs = _signatures(ledger_dir)
        names = [n for n in wallets if n.startswith("node-")]
        nodes = {n: market.node(wallets[n].pubkey()) for n in names}
        balance = {n: market.t.balance(kp.pubkey()) for n, kp in wallets.items()}
        programs = market.t.program_accounts(market.program_id)
        snap = Snapshot(stake={n: nodes[n].stake for n in names}, balance=balance, nodes=nodes,
                        treasury=market.config().treasury,
                        total=sum(balance.values()) + sum(acc.lamports for _, acc in programs), signatures=sigs,
                        heartbeats=beats)
        if _signatures(ledger_dir) == sigs and _heartbeats(net) == beats:
            return snap
        time.sleep(0.2)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("posp") / "run"
    root.mkdir()
    prep = prepare(root, smaller=True, tasks=3, nodes=4, workspace=0, prompt="unused")
    with local_market(root, prep.model, prep.plan_dir, prep.budgets, verify_rate_bps=RATE_BPS,
                      cheaters={CHEATER: "perturb"}, node_args=NODE_ARGS) as net:
        assert net.primary[net.node_names.index(CHEATER)] == [2]
        market = connect(net.rpc_url, net.wallets["authority"])
        # With a slash's worth more staked per job the cheater stays above the minimum stake and keeps
        # accepting its task in every job, whatever the draws (its wallet holds too little for that).
        cfg = market.config()
        extra = JOBS * cfg.task_collateral * cfg.slash_bps // 10_000
        market.t.airdrop(net.wallets[CHEATER].pubkey(), extra)
        market.add_stake(net.wallets[CHEATER], extra)
        engines = {c.name: httpx.get(c.url + "/capabilities", timeout=10).json()["engine"] for c in net.nodes}
        names = {str(market.node_address(net.wallets[n].pubkey())): n for n in net.node_names}
        ledger_dir = root / "ledger"
        before = _snapshot(market, net.wallets, ledger_dir, net)
        rng = random.Random(SEED)
        eos = set(prep.model.eos_ids)
        vocab = [i for i in range(prep.tokenizer.get_vocab_size()) if i not in eos]
        prompts = [rng.choices(vocab, k=PROMPT_TOKENS) for _ in range(JOBS)]
        reports = []
        t0 = time.perf_counter()
        with Client(net.rpc_url, net.wallets["client"], store_url=net.store_url) as client:
            for prompt in prompts:
                *_, out = client.stream(prep.model.name, prompt, MAX_TOKENS)
                assert isinstance(out, Completion) and out.report is not None and out.report.closed
                reports.append(out.report)
        seconds = time.perf_counter() - t0
        after = _snapshot(market, net.wallets, ledger_dir, net)
        yield Run(reports, names, before, after, market.config(), engines, seconds, prompts)


def test_binomial_region() -> None:
    # Bin(10, 1/2): P(X = 0) = P(X = 10) = 1/1024 <= 0.001 < P(X <= 1) = 11/1024
    assert binomial_region(10, 0.5, 0.002) == (1, 9)
    assert binomial_region(1000, 0.5, 0.05) == (469, 531)  # 500 -+ 1.96 x 15.8
    assert binomial_region(JOBS, RATE_BPS / 10_000, ALPHA) == (1, 31)
    assert binomial_region(3 * JOBS, RATE_BPS / 10_000, ALPHA) == (18, 71)


def test_the_nodes_run_different_engines(run: Run) -> None:
    assert run.engines[CHEATER] == run.engines["node-b"] == run.engines["node-d"] == "onnxruntime"
    assert run.engines["node-a"] == ("tinygrad" if TINYGRAD else "onnxruntime")


def test_cheats_are_drawn_at_the_sampling_rate(run: Run) -> None:
    p = RATE_BPS / 10_000
    mine = run.tasks_of(CHEATER)
    assert len(mine) == JOBS and all(t.index == 2 for t in mine)  # one cheated task in every job
    everything = [t for r in run.reports for t in r.tasks]
    assert len(everything) == 3 * JOBS
    for t in everything:  # the chain's draw: rate fixed (flat policy), drawn iff draw < rate
        assert t.rate_bps == RATE_BPS and 0 <= t.draw < 10_000 and t.sampled == (t.draw < t.rate_bps)
    caught = sum(t.sampled for t in mine)
    lo, hi = binomial_region(JOBS, p, ALPHA)
    assert lo <= caught <= hi, f"{caught} of {JOBS} cheats drawn at p={p}: outside [{lo}, {hi}]"
    drawn = sum(t.sampled for t in everything)
    lo, hi = binomial_region(len(everything), p, ALPHA)
    assert lo <= drawn <= hi, f"{drawn} of {len(everything)} tasks drawn at p={p}: outside [{lo}, {hi}]"
    print(f"\nPoSP over {JOBS} jobs in {run.seconds:.1f} s at p={p:.0%}: {caught}/{JOBS} cheats drawn "
          f"(region {binomial_region(JOBS, p, ALPHA)}), {drawn}/{len(everything)} tasks (region [{lo}, {hi}]); "
          f"engines {run.engines}")


def test_every_drawn_cheat_is_slashed_and_every_undrawn_one_paid(run: Run) -> None:
    cfg, slash = run.config, run.slash
    mine = run.tasks_of(CHEATER)
    caught = [t for t in mine if t.sampled]
    missed = [t for t in mine if not t.sampled]
    assert caught and missed
    for t in caught:
        assert (t.status, t.verdict, t.arbitration) == ("FAILED", "disagree", "node_cheated")
        assert t.node_paid == 0 and t.node_slashed == slash and t.fee == 0
        reward = max(cfg.validator_reward, t.price * cfg.validator_reward_bps // 10_000)
        assert t.validator_paid == reward + slash and run.names[t.validator] == "node-a"
    for t in missed:
        assert (t.status, t.verdict, t.arbitration) == ("SETTLED", "none", "none")
        assert t.node_paid == t.price > 0 and t.node_slashed == 0
    # On chain: the stake fell by exactly one slash per catch; the reputation counters agree.
    b, a = run.before.nodes[CHEATER], run.after.nodes[CHEATER]
    assert run.before.stake[CHEATER] - run.after.stake[CHEATER] == slash * len(caught)
    assert (a.failed - b.failed, a.tasks_done - b.tasks_done) == (len(caught), len(missed))
    assert a.locked == 0
    # node-a (the validator of every cheat) received its rewards and the slashes, less its own fees:
    # accept + commit per task it ran (+ an input receipt, unless the commit came first and stands for it),
    # assign + verdict per task it validated (it has no rival for either), + its on-chain heartbeats meanwhile.
    ran, checked = run.tasks_of("node-a"), [t for r in run.reports for t in r.tasks if run.names.get(t.validator or "") == "node-a"]
    earned = sum(t.node_paid for t in ran) + sum(t.validator_paid for t in checked)
    assert len(checked) == len(caught)
    spent = earned - (run.after.balance["node-a"] - run.before.balance["node-a"])
    beats = run.after.heartbeats["node-a"] - run.before.heartbeats["node-a"]
    assert spent % FEE == 0 and 2 * len(ran) + 2 * len(checked) <= spent // FEE - beats <= 3 * len(ran) + 2 * len(checked)


def test_honest_nodes_are_never_slashed(run: Run) -> None:
    for name in ("node-a", "node-b", "node-d"):
        b, a = run.before.nodes[name], run.after.nodes[name]
        assert a.failed == b.failed == 0
        assert run.after.stake[name] == run.before.stake[name] and a.locked == 0
        for t in run.tasks_of(name):
            assert t.status == "SETTLED" and t.node_slashed == 0 and t.verdict in ("none", "agree")
    tasks = [t for r in run.reports for t in r.tasks]
    assert all(t.validator_slashed == 0 and t.arbitration != "node_honest" for t in tasks)
    # The honest tasks that were drawn were re-executed by another node, on another engine where possible.
    honest_checked = [t for t in tasks if t.sampled and run.names[t.node] != CHEATER]
    assert honest_checked and all(t.verdict == "agree" and t.validator != t.node for t in honest_checked)
    assert sum(run.after.nodes[n].verified - run.before.nodes[n].verified for n in run.after.nodes) == len(honest_checked)


def test_lamports_change_only_by_transaction_fees(run: Run) -> None:
    txs = run.after.signatures - run.before.signatures
    assert txs >= 3 * 3 * JOBS  # at least accept + receipt + commit per task
    assert run.before.total - run.after.total == FEE * txs
    # The protocol fee of every settled task went to the treasury; slashes went to the validators.
    fees = sum(t.fee for r in run.reports for t in r.tasks)
    assert run.after.treasury - run.before.treasury == fees
    slashed = sum(run.before.stake[n] - run.after.stake[n] for n in run.before.stake)
    assert slashed == sum(t.node_slashed for r in run.reports for t in r.tasks)

