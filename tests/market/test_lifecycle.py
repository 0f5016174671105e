"""The whole lifecycle of jobs on the real program in LiteSVM, balances exact to the lamport."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from market_world import FEE_PER_SIGNATURE, PRICES, SOL, World, h, make_world

from splitup.market import instructions as ix
from splitup.market.constants import Arbitration, TaskStatus, Verdict
from splitup.market.errors import StillBondingError, TooEarlyError
from splitup.market.market import MarketParams, seal_of

T = TypeVar("T")


def conserved(w: World, fn: Callable[[], T], signatures: int = 1) -> T:
    """Run one transaction and check that only the fee left the wallets and program accounts."""
    before_keys = w.tracked()
    before = w.total(before_keys)
    out = fn()
    keys = list(dict.fromkeys(before_keys + w.tracked()))
    assert w.total(keys) == before - FEE_PER_SIGNATURE * signatures
    return out


def test_happy_path_with_verification(always_verify: World) -> None:
    w = always_verify
    m, t = w.m, w.t
    node, validator = w.nodes[0], w.nodes[1]
    cfg = m.config()
    required = m.required_fee(w.model)
    # a check pays about the price: max(0.002 SOL, price x 100 %)
    assert required == sum(p + p // 100 + max(cfg.validator_reward, p) for p in PRICES)

    client_before = t.balance(w.client.pubkey())
    job = conserved(w, lambda: w.post(max_fee=required + 7))
    escrow = m.escrow_address(job)
    job_rent = t.balance(job)
    escrow_rent = t.svm.minimum_balance_for_rent_exemption(0)
    assert t.balance(escrow) == escrow_rent + required + 7
    assert t.balance(w.client.pubkey()) == client_before - required - 7 - job_rent - escrow_rent - FEE_PER_SIGNATURE

    node_before, val_before = t.balance(node.pubkey()), t.balance(validator.pubkey())
    treasury_before = t.balance(m.config_address)
    conserved(w, lambda: m.accept_task(node, job, 0))
    assert m.node(node.pubkey()).locked == cfg.task_collateral  # max(0.1 SOL, 3 x 0.01 SOL)
    conserved(w, lambda: m.receive_input(node, job, 0, h("input")))
    conserved(w, lambda: m.commit_result(node, job, 0, h("output"), seal_of(h("work"))))
    with pytest.raises(TooEarlyError):  # no slot hash after the commitment yet
        w.t.send([ix.sample(m.program_id, job, 0)], [m.payer])
    t.advance(1)
    with pytest.raises(TooEarlyError):  # the client may still reveal its secret
        w.t.send([ix.sample(m.program_id, job, 0)], [m.payer])
    conserved(w, lambda: m.reveal_secret(w.client, job))
    assert conserved(w, lambda: m.sample(job, 0)) is True
    conserved(w, lambda: m.assign_validator(validator, job, 0))
    conserved(w, lambda: m.submit_verdict(validator, job, 0, True, h("work")))  # proves it re-executed
    assert m.job(job).tasks[0].proved == 1
    conserved(w, lambda: m.settle(job, 0))

    task = m.job(job).tasks[0]
    assert (task.status, task.verdict) == (TaskStatus.SETTLED, Verdict.AGREE)
    fee = PRICES[0] // 100
    assert t.balance(node.pubkey()) == node_before + PRICES[0] - 3 * FEE_PER_SIGNATURE
    assert t.balance(validator.pubkey()) == val_before + PRICES[0] - 2 * FEE_PER_SIGNATURE
    assert t.balance(m.config_address) == treasury_before + fee
    assert m.config().treasury == fee
    assert t.balance(escrow) == escrow_rent + required + 7 - PRICES[0] - fee - PRICES[0]
    n, v = m.node(node.pubkey()), m.node(validator.pubkey())
    assert (n.locked, n.tasks_done, n.verified, n.failed) == (0, 1, 1, 0)
    assert n.reputation == PRICES[0] // cfg.rep_min_price  # verified, paid by another party
    assert (v.locked, v.failed) == (0, 0)


def test_unsampled_tasks_and_refund(never_verify: World) -> None:
    w = never_verify
    m, t = w.m, w.t
    job = w.post()
    escrow = m.escrow_address(job)
    deposit = m.job(job).header.deposit
    for i in range(3):
        w.run_to_commit(job, i, w.nodes[i])
        w.ready(job, i)  # drawn or not, paid (unverified when no validator came)
        conserved(w, lambda i=i: m.settle(job, i))
    paid = sum(p + p // 100 for p in PRICES)
    assert m.job(job).header.paid == paid
    client_before = t.balance(w.client.pubkey())
    rents = t.balance(job) + t.svm.minimum_balance_for_rent_exemption(0)
    conserved(w, lambda: m.close_job(w.client, job))
    assert t.get_account(job) is None and t.get_account(escrow) is None
    assert t.balance(w.client.pubkey()) == client_before + deposit - paid + rents - FEE_PER_SIGNATURE


def test_cheating_node_is_slashed_after_arbitration(always_verify: World) -> None:
    w = always_verify
    m, t = w.m, w.t
    cheat, validator = w.nodes[0], w.nodes[1]
    job = w.post()
    w.run_to_commit(job, 1, cheat, b"wrong output")
    assert m.sample(job, 1)
    m.assign_validator(validator, job, 1)
    m.submit_verdict(validator, job, 1, False, h("right output"))
    assert m.job(job).tasks[1].status == TaskStatus.DISPUTED
    m.arbitrate(w.authority, job, 1, node_honest=False)
    cheat_before, val_before = t.balance(cheat.pubkey()), t.balance(validator.pubkey())
    stake_before = m.node(cheat.pubkey()).stake
    node_pda_before = t.balance(m.node_address(cheat.pubkey()))
    conserved(w, lambda: m.settle(job, 1))
    cfg = m.config()
    slash = cfg.task_collateral * cfg.slash_bps // 10_000
    task = m.job(job).tasks[1]
    assert (task.status, task.arbitration) == (TaskStatus.FAILED, Arbitration.NODE_CHEATED)
    n = m.node(cheat.pubkey())
    assert (n.stake, n.locked, n.failed, n.tasks_done) == (stake_before - slash, 0, 1, 0)
    assert t.balance(m.node_address(cheat.pubkey())) == node_pda_before - slash
    assert t.balance(cheat.pubkey()) == cheat_before  # not paid
    assert t.balance(validator.pubkey()) == val_before + PRICES[1] + slash  # its reward, and the slash
    assert cfg.treasury == 0


def test_wrong_validator_is_slashed_and_node_paid(always_verify: World) -> None:
    w = always_verify
    m, t = w.m, w.t
    node, validator = w.nodes[0], w.nodes[1]
    job = w.post()
    w.run_to_commit(job, 0, node)
    m.sample(job, 0)
    m.assign_validator(validator, job, 0)
    m.submit_verdict(validator, job, 0, False, h("lie"))
    m.arbitrate(w.authority, job, 0, node_honest=True)
    node_before, val_before = t.balance(node.pubkey()), t.balance(validator.pubkey())
    m.settle(job, 0)
    cfg = m.config()
    slash = cfg.task_collateral * cfg.slash_bps // 10_000
    assert t.balance(node.pubkey()) == node_before + PRICES[0] + slash  # paid from the validator's slash
    assert t.balance(validator.pubkey()) == val_before
    v = m.node(validator.pubkey())
    assert (v.stake, v.locked, v.failed) == (2 * SOL - slash, 0, 1)
    assert cfg.treasury == PRICES[0] // 100


def test_expire_slashes_late_node_and_reopens_task(world: World) -> None:
    w = world
    m, t = w.m, w.t
    late, other = w.nodes[0], w.nodes[1]
    job = w.post(task_timeout_slots=10)
    m.accept_task(late, job, 2)
    m.receive_input(late, job, 2, h("input"))  # it had its input: not delivering is its fault
    with pytest.raises(TooEarlyError):
        m.expire(job, 2)
    t.advance(11)
    conserved(w, lambda: m.expire(job, 2))
    cfg = m.config()
    # collateral for 0.03 SOL: max(0.1 SOL, 3 x 0.03 SOL); the liveness penalty is a tenth of it
    assert m.node(late.pubkey()).stake == 2 * SOL - cfg.task_collateral * cfg.liveness_slash_bps // 10_000
    n = m.node(late.pubkey())
    assert (n.locked, n.liveness_faults, n.failed) == (0, 1, 0)
    task = m.job(job).tasks[2]
    assert task.status == TaskStatus.OPEN and task.price == PRICES[2]
    m.accept_task(other, job, 2)  # reassigned
    assert m.job(job).tasks[2].node == m.node_address(other.pubkey())


def test_expire_slashes_silent_validator(always_verify: World) -> None:
    w = always_verify
    m, t = w.m, w.t
    job = w.post()
    w.run_to_commit(job, 0, w.nodes[0])
    m.sample(job, 0)
    m.assign_validator(w.nodes[1], job, 0)
    t.advance(w.params.validator_timeout_slots + 1)
    m.expire(job, 0)
    assert m.job(job).tasks[0].status == TaskStatus.SAMPLED
    v = m.node(w.nodes[1].pubkey())
    assert (v.liveness_faults, v.failed) == (1, 0)  # late, not a cheat: the liveness penalty
    assert v.stake == 2 * SOL - w.params.task_collateral * w.params.liveness_slash_bps // 10_000
    m.assign_validator(w.nodes[2], job, 0)
    m.submit_verdict(w.nodes[2], job, 0, True, h("output"))
    m.settle(job, 0)
    assert m.job(job).tasks[0].status == TaskStatus.SETTLED


def test_expired_job_refunds_everything_to_client(world: World) -> None:
    w = world
    m, t = w.m, w.t
    start = t.balance(w.client.pubkey())
    job = w.post(deadline_slots=5)
    t.advance(6)
    m.close_job(w.client, job)
    assert t.balance(w.client.pubkey()) == start - 2 * FEE_PER_SIGNATURE


def test_stake_unbonding_and_withdraw(world: World) -> None:
    w = world
    m, t = w.m, w.t
    n = w.nodes[0]
    m.add_stake(n, SOL)
    assert m.node(n.pubkey()).stake == 3 * SOL
    m.begin_unstake(n, SOL // 2)
    node = m.node(n.pubkey())
    assert (node.stake, node.unbonding) == (3 * SOL - SOL // 2, SOL // 2)
    with pytest.raises(StillBondingError):
        m.withdraw(n)
    t.advance(w.params.unbonding_slots)
    before = t.balance(n.pubkey())
    conserved(w, lambda: m.withdraw(n))
    assert t.balance(n.pubkey()) == before + SOL // 2 - FEE_PER_SIGNATURE
    assert m.node(n.pubkey()).unbonding == 0


def test_specialize_and_registry(world: World) -> None:
    from splitup.market.accounts import node_endpoint, node_specialized

    w = world
    ids = [h("task0"), h("task2")]
    w.m.specialize(w.nodes[0], ids)
    node = w.m.node(w.nodes[0].pubkey())
    assert node_specialized(node) == ids and node_endpoint(node) == "http://node0:8000"
    assert len(w.m.nodes()) == 3
    assert [k for k, _ in w.m.models()] == [w.model]
    job = w.post()
    w.m.accept_task(w.nodes[0], job, 1)
    assert w.m.tasks_in(TaskStatus.OPEN) == [(job, 0), (job, 2)]
    assert w.m.tasks_in(TaskStatus.ACCEPTED) == [(job, 1)]
    assert [k for k, _ in w.m.jobs()] == [job]


def test_collect_fees_and_set_config(never_verify: World) -> None:
    w = never_verify
    m, t = w.m, w.t
    job = w.post()
    w.run_to_commit(job, 0, w.nodes[0])
    w.ready(job, 0)
    m.settle(job, 0)
    fee = PRICES[0] // 100
    dest_before = t.balance(w.authority.pubkey())
    m.collect_fees(w.authority, w.authority.pubkey(), fee)
    assert t.balance(w.authority.pubkey()) == dest_before + fee - FEE_PER_SIGNATURE
    assert m.config().treasury == 0
    m.set_config(w.authority, MarketParams.flat(1234))
    assert m.config().verify_rate_bps == 1234
    assert m.job(job).header.verify_rate_bps == 0  # the posted job keeps its terms


def test_draw_is_the_coin_of_the_posp_spec() -> None:
    """The program flips exactly splitup.verify.sampling's coin, on the first slot hash after the commitment,
    at the rate SamplingPolicy gives the node's record."""
    from splitup.verify.sampling import NodeRecord, SamplingPolicy, sampling_seed, should_sample

    w = make_world(n_nodes=3)
    assert w.m.config().verify_rate_bps == 800
    policy = SamplingPolicy()  # the market's defaults are the policy's defaults
    for i in range(3):
        job = w.post()
        secret = w.m.secrets[job][1]
        w.m.accept_task(w.nodes[i], job, 0)
        w.m.commit_result(w.nodes[i], job, 0, h(f"output {i}"))
        committed = w.m.job(job).tasks[0].committed_slot
        w.t.advance(3)
        slot_hash = dict(w.t.svm.get_slot_hashes())[committed + 1]
        sampled = w.m.sample(job, 0)
        task = w.m.job(job).tasks[0]
        seed = sampling_seed(bytes(slot_hash), h(f"output {i}"), secret)
        rate = policy.rate_bps(NodeRecord(honest_tasks=0))
        assert task.rate_bps == rate == 3_000  # a new node
        assert task.draw == int.from_bytes(seed[:8], "little") % 10_000
        assert sampled == should_sample(seed, rate)
        assert task.status == (TaskStatus.SAMPLED if sampled else TaskStatus.READY)


def test_adaptive_rate_follows_the_node_record() -> None:
    """Verified work another party paid for halves a new node's extra (one credit per task here); a
    failed verdict raises it to failed_bps, then it decays. The rate is never below the sound rate."""
    from splitup.verify.sampling import NodeRecord, SamplingPolicy

    params = MarketParams(verify_rate_bps=800, new_node_bps=3_000, new_node_half_life=1, failed_bps=5_000,
                          failed_half_life=1, rep_min_price=PRICES[0])
    policy = SamplingPolicy(800, 3_000, 1, 5_000, 1)
    sound = 1_011  # 0.01 SOL, 0.1 SOL collateral, r = 10 %: p (0.9)(0.11) > 0.01
    w = make_world(params, n_nodes=2)
    m, node, validator = w.m, w.nodes[0], w.nodes[1]

    def run_task(honest: bool) -> tuple[int, bool]:
        job = w.post()
        w.run_to_commit(job, 0, node)
        m.sample(job, 0)
        task = m.job(job).tasks[0]
        if task.status == TaskStatus.SAMPLED:
            m.assign_validator(validator, job, 0)
            m.submit_verdict(validator, job, 0, honest, h(b"work" + b"output"))
            if not honest:
                m.arbitrate(w.authority, job, 0, node_honest=False)
        elif not honest:
            # not drawn: the cheat goes unnoticed and is paid (left unsettled, its collateral would stay
            # locked, and a long run of misses would leave the node too little free stake to accept)
            m.settle(job, 0)
            return -1, False
        m.settle(job, 0)
        return int(task.rate_bps), bool(task.sampled)

    credits = 0
    for _ in range(12):
        rate, verified = run_task(honest=True)
        assert rate == max(sound, policy.rate_bps(NodeRecord(credits)))
        credits += verified  # only verified tasks earn reputation
    n = m.node(node.pubkey())
    assert (n.tasks_done, n.ever_failed, n.reputation) == (12, 0, credits)
    while run_task(honest=False)[0] == -1:  # until a cheat is caught
        pass
    n = m.node(node.pubkey())
    assert (n.ever_failed, n.since_failure) == (1, 0)
    rate, verified = run_task(honest=True)
    assert rate == max(sound, policy.rate_bps(NodeRecord(n.reputation, since_failure=0))) == 5_000
    assert m.node(node.pubkey()).since_failure == int(verified)


def test_draw_fails_safe_when_the_slot_hash_is_gone() -> None:
    """Sampled late, after the slot hash left the 512-slot window: the task is verified."""
    w = make_world(MarketParams.flat(1))
    job = w.post(task_timeout_slots=10)
    w.run_to_commit(job, 0, w.nodes[0])
    w.t.advance(600)
    assert w.m.sample(job, 0) is True


def test_largest_model_is_registered_in_chunks(world: World) -> None:
    from splitup.market.constants import MAX_TASKS
    from splitup.market.errors import TooManyTasksError
    from splitup.market.layout import ModelTask

    w = world
    tasks = [ModelTask(task_id=h(f"big{i}"), vram=1 << 30, price=1_000 + i) for i in range(MAX_TASKS)]
    model = w.m.register_model(w.client, h("big"), tasks).address
    assert model is not None
    info = w.m.model(model)
    assert info.complete and info.tasks == tasks
    job = w.m.post_job(w.client, model, h("in")).address
    assert job is not None
    assert [t.price for t in w.m.job(job).tasks] == [t.price for t in tasks]
    with pytest.raises(TooManyTasksError):
        w.m.register_model(w.client, h("too big"), tasks + tasks[:1])


def test_sampled_task_nobody_validates_is_paid_unverified(always_verify: World) -> None:
    w = always_verify
    m, t = w.m, w.t
    job = w.post(task_timeout_slots=10)
    w.run_to_commit(job, 0, w.nodes[0])
    assert m.sample(job, 0)
    with pytest.raises(TooEarlyError):
        m.expire(job, 0)
    t.advance(w.params.validator_timeout_slots + 1)  # the config's window, not the client's
    before = t.balance(w.nodes[0].pubkey())
    conserved(w, lambda: m.expire(job, 0))
    assert m.job(job).tasks[0].status == TaskStatus.READY
    m.settle(job, 0)
    assert t.balance(w.nodes[0].pubkey()) == before + PRICES[0]
    n = m.node(w.nodes[0].pubkey())
    assert (n.locked, n.tasks_done, n.verified, n.failed) == (0, 1, 0, 0)


def test_dispute_the_arbiter_ignores_releases_both_sides(always_verify: World) -> None:
    w = always_verify
    m, t = w.m, w.t
    job = w.post(task_timeout_slots=10)
    w.run_to_commit(job, 0, w.nodes[0])
    m.sample(job, 0)
    m.assign_validator(w.nodes[1], job, 0)
    m.submit_verdict(w.nodes[1], job, 0, False, h("other"))
    t.advance(w.params.arbiter_timeout_slots + 1)
    conserved(w, lambda: m.expire(job, 0))
    task = m.job(job).tasks[0]
    assert (task.status, task.verdict) == (TaskStatus.READY, Verdict.NONE)
    v = m.node(w.nodes[1].pubkey())
    assert (v.stake, v.locked, v.failed) == (2 * SOL, 0, 0)
    m.settle(job, 0)
    assert m.node(w.nodes[0].pubkey()).verified == 0
