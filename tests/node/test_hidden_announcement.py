"""A sampled executor that hides after committing is checked all the same: the market agent publishes its
signed announcement in the blob store before it sends the commit, and validators and the arbiter read it
there (``fetch_announcement``). The attack this closes: compute garbage, commit, and once the chain shows
the task drawn answer no announcement requests until the windows pass; before, that was paid unverified.

One market node (the three tasks of the tiny plan) served on loopback and stopped after its commits, a
validator agent and the arbiter's ``DisputeJudge`` re-executing from the store, a real ``splitup store
serve --writable`` process, the committed program on LiteSVM."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.client.pipeline import PipelineClient, plan_sends
from splitup.market.constants import BPS, TaskStatus
from splitup.market.errors import MarketError
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport
from splitup.node.agent import DisputeJudge, MarketAgent, RecordingNode
from splitup.node.app import create_app
from splitup.node.node import NodeConfig
from splitup.node.wire import Hop
from splitup.partition.task import task_dir
from splitup.storage import BlobStore, StorageError, publish_plan
from splitup.verify.cheats import Cheat, perturb

from .procs import serving, start_store

PRICE = 10_000_000
FEEDS = {"input_ids": np.arange(5, dtype=np.int64).reshape(1, 5)}


@pytest.fixture(scope="module")
def store(plan_dir, tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("hidden-store")
    publish_plan(plan_dir, BlobStore(root))  # the validator and the arbiter fetch the bundles by task id
    with start_store("hidden-store", root, tmp_path_factory.mktemp("hidden-logs"), writable=True) as daemon:
        yield daemon.url


@dataclass
class Run:
    t: LiteSvmTransport
    m: Market
    authority: Keypair
    executor: Keypair
    validator: Keypair
    job: Pubkey
    agent: MarketAgent  # the executor's


def _run_and_hide(plan, plan_dir: Path, store: str, tmp: Path, cheat: Cheat | None, *,
                  publish_fails_once: bool = False) -> Run:
    """The executor's node serves the three tasks, runs one job through its agent, commits every task (its
    agent publishes each announcement first), and is stopped: from then on it answers nobody."""
    t = LiteSvmTransport()
    authority, client, executor, validator, payer = (Keypair() for _ in range(5))
    for k in (authority, client, executor, validator, payer):
        t.airdrop(k.pubkey(), 100 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority, MarketParams.flat(10_000))  # every task drawn for a check
    entries = [ModelTask(task_id=bytes.fromhex(x.task_id), vram=1 << 30, price=PRICE) for x in plan.tasks]
    model = m.register_model(client, hashlib.sha256(b"tiny").digest(), entries).address
    assert model is not None
    node = RecordingNode(NodeConfig(cache_dir=tmp / "executor", max_session_bytes=1 << 30), cheat=cheat)
    for x in plan.tasks:
        shutil.copytree(task_dir(plan_dir, x), tmp / "executor" / "tasks" / x.task_id)
        node.load_bundle(tmp / "executor" / "tasks" / x.task_id, x.task_id)
    with serving(create_app(node)) as url:
        m.register_node(executor, 5 * LAMPORTS_PER_SOL, vram=1 << 34, endpoint=url)
        m.register_node(validator, 5 * LAMPORTS_PER_SOL, vram=1 << 34, endpoint="http://127.0.0.1:9")
        m.specialize(validator, [e.task_id for e in entries])
        job = m.post_job(client, model, hashlib.sha256(b"in").digest(), task_timeout_slots=200).address
        assert job is not None
        agent = MarketAgent(m, executor, node, store)
        for i in range(len(plan.tasks)):
            agent._accept(job, i)
        initial, sends = plan_sends(plan.tasks, [o.name for o in plan.outputs])
        hops = [Hop([url], x.task_id, sends[k]) for k, x in enumerate(plan.tasks)]
        with PipelineClient(plan, [url] * len(hops)) as pc:
            pc.call(hops, {n: FEEDS[n] for n in initial}, str(job))
        if publish_fails_once:
            publish = agent.store.publish_record

            def store_refuses(*_a: object, **_k: object) -> None:
                raise StorageError("HTTP 503: the store is restarting")

            agent.store.publish_record = store_refuses  # type: ignore[method-assign]
            with pytest.raises(MarketError, match="cannot publish its announcement"):
                agent.commit(job, 0)
            assert m.job(job).tasks[0].status == TaskStatus.ACCEPTED  # no announcement published, no commit
            agent.store.publish_record = publish  # type: ignore[method-assign]
        for i in range(len(plan.tasks)):
            agent.commit(job, i)
    with pytest.raises(httpx.HTTPError):  # the node is gone
        httpx.get(f"{url}/market/jobs/{job}/tasks/0/announcement", timeout=2)
    for i in range(len(plan.tasks)):
        t.advance(1)
        assert m.sample(job, i)
    return Run(t, m, authority, executor, validator, job, agent)


def _check_and_judge(r: Run, plan, store: str, tmp: Path) -> tuple[MarketAgent, DisputeJudge]:
    """The validator checks every drawn task, the arbiter rules on every dispute, every window passes and
    every task is settled."""
    v = MarketAgent(r.m, r.validator, RecordingNode(NodeConfig(cache_dir=tmp / "validator")), store)
    for i in range(len(plan.tasks)):
        v._validate(r.job, i)
    judge = DisputeJudge(r.m, r.authority, store, tmp / "arbiter")
    judge.judge_once()
    cfg = r.m.config()
    for i in range(len(plan.tasks)):
        while r.m.job(r.job).tasks[i].status in (TaskStatus.SAMPLED, TaskStatus.VALIDATING, TaskStatus.DISPUTED):
            r.t.advance(max(cfg.validator_timeout_slots, cfg.arbiter_timeout_slots) + 1)
            r.m.expire(r.job, i)  # what nobody checked or ruled on is paid unverified
        r.m.settle(r.job, i)
    return v, judge


def test_a_sampled_cheat_that_published_and_hides_is_checked_from_the_store_and_slashed(plan, plan_dir, store,
                                                                                         tmp_path) -> None:
    r = _run_and_hide(plan, plan_dir, store, tmp_path, perturb(0.05))
    stake, wallet = r.m.node(r.executor.pubkey()).stake, r.t.balance(r.executor.pubkey())
    v, judge = _check_and_judge(r, plan, store, tmp_path)

    n = r.m.node(r.executor.pubkey())
    paid = r.t.balance(r.executor.pubkey()) - wallet
    print(f"cheat's stake {stake} -> {n.stake}, paid {paid} of {len(plan.tasks) * PRICE}")
    # the validator took every task up from the store's announcement, re-executed it and disagreed
    assert v.stats["validated"] == v.stats["disagreed"] == len(plan.tasks) and v.stats["errors"] == 0
    assert all(ann is not None for ann in v._fetched.values()) and len(v._fetched) == len(plan.tasks)
    assert [(i, honest) for _, i, honest, _ in judge.rulings] == [(i, False) for i in range(len(plan.tasks))]
    assert [s.status for s in r.m.job(r.job).tasks] == [TaskStatus.FAILED] * len(plan.tasks)
    slash = r.m.min_collateral(PRICE) * r.m.config().slash_bps // BPS
    assert n.stake == stake - len(plan.tasks) * slash
    assert (n.failed, n.locked, paid) == (len(plan.tasks), 0, 0)


def test_an_honest_node_that_published_and_is_away_is_verified_from_the_store_and_paid(plan, plan_dir, store,
                                                                                        tmp_path) -> None:
    """Being away costs an honest executor nothing: its announcements are in the store. (A publish that
    fails stops its commit, which goes out once publishing works.)"""
    r = _run_and_hide(plan, plan_dir, store, tmp_path, None, publish_fails_once=True)
    stake, wallet = r.m.node(r.executor.pubkey()).stake, r.t.balance(r.executor.pubkey())
    v, judge = _check_and_judge(r, plan, store, tmp_path)

    n = r.m.node(r.executor.pubkey())
    assert v.stats["validated"] == len(plan.tasks) and v.stats["disagreed"] == 0 and v.stats["errors"] == 0
    assert judge.rulings == []
    assert [s.status for s in r.m.job(r.job).tasks] == [TaskStatus.SETTLED] * len(plan.tasks)
    assert (n.stake, n.failed, n.locked) == (stake, 0, 0) and n.verified == len(plan.tasks)
    assert r.t.balance(r.executor.pubkey()) - wallet == len(plan.tasks) * PRICE
