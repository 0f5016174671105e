"""The six weaknesses of issue 12, each tried as the attacker would on the real program; every test here
fails on the program before the fix (noted per test) and passes now. The economics over many jobs are in
bench/adversaries.py (its short form runs in tests/market/test_adversary_bench.py)."""

from __future__ import annotations

import hashlib

import pytest
from market_world import PRICES, SOL, World, h, make_world
from solders.hash import Hash

from splitup.market import errors as E
from splitup.market.constants import BPS, TaskStatus
from splitup.market.market import MarketParams, seal_of, task_terms
from splitup.market.transport import next_slot_hash


def verified_task(w: World, node_i: int, validator_i: int, client: object | None = None) -> tuple[bool, int]:
    """One job whose task 0 the node computes honestly; a validator proves re-execution if it is drawn.
    Returns (sampled, rate)."""
    m = w.m
    job = w.post()
    w.run_to_commit(job, 0, w.nodes[node_i])
    sampled = m.sample(job, 0)
    if sampled:
        m.assign_validator(w.nodes[validator_i], job, 0)
        m.submit_verdict(w.nodes[validator_i], job, 0, True, h(b"work" + b"output"))
    m.settle(job, 0)
    return sampled, int(m.job(job).tasks[0].rate_bps)


def test_1_the_rate_is_fixed_at_commit_not_when_the_draw_is_public() -> None:
    """Old code computed the rate in `sample`: settling another task in between lowered it."""
    w = make_world(MarketParams(new_node_half_life=1, rep_min_price=PRICES[0]), n_nodes=3)
    m = w.m
    held = w.post()
    w.run_to_commit(held, 0, w.nodes[0])
    fixed = m.job(held).tasks[0].rate_bps
    assert fixed == 3_000  # a new node
    while m.node(w.nodes[0].pubkey()).reputation == 0:  # earn reputation while the held task waits
        verified_task(w, 0, 1)
    m.sample(held, 0)
    assert m.job(held).tasks[0].rate_bps == fixed


def test_2_self_dealing_and_cheap_or_unverified_work_earn_no_reputation() -> None:
    """Old code counted every settled task: zero-price jobs from a second wallet bought a caught cheater's
    rate from 50 % back to 8.65 % for 0.002 SOL. Now only verified work at rep_min_price or more counts,
    by value, and the client's own node can take no part in its job."""
    params = MarketParams(rep_min_price=PRICES[0])
    w = make_world(params, n_nodes=3)
    m = w.m
    w.t.airdrop(w.client.pubkey(), 10 * SOL)
    m.register_node(w.client, 2 * SOL, vram=24 << 30)
    m.specialize(w.client, [task.task_id for task in m.model(w.model).tasks])
    job = w.post()
    with pytest.raises(E.SelfValidationError):
        m.accept_task(w.client, job, 0)
    m.accept_task(w.nodes[1], job, 1)
    with pytest.raises(E.SelfValidationError):
        m.take_over(w.client, w.client, job, 1)
    w.run_to_commit(job, 0, w.nodes[0])
    while not m.sample(job, 0):
        job = w.post()
        w.run_to_commit(job, 0, w.nodes[0])
    with pytest.raises(E.SelfValidationError):
        m.assign_validator(w.client, job, 0)
    # paid but not verified (nobody validated in time): no reputation, whatever the price
    w.t.advance(w.params.validator_timeout_slots + 1)
    m.expire(job, 0)
    m.settle(job, 0)
    n = m.node(w.nodes[0].pubkey())
    assert (n.verified, n.reputation) == (0, 0) and n.tasks_done >= 1
    # verified but cheap: below rep_min_price a task earns no credit
    cheap = make_world(MarketParams.flat(10_000, rep_min_price=PRICES[2] + 1), n_nodes=2)
    verified_task(cheap, 0, 1)
    assert cheap.m.node(cheap.nodes[0].pubkey()).reputation == 0
    # verified, at the minimum price, paid by another party: counts, by value
    fair = make_world(MarketParams.flat(10_000, rep_min_price=PRICES[0] // 4), n_nodes=2)
    verified_task(fair, 0, 1)
    assert fair.m.node(fair.nodes[0].pubkey()).reputation == 4


def test_3_the_draw_cannot_be_ground_from_predicted_slot_hashes() -> None:
    """Old code: slot hash = sha256(prev || slot), so a node chose its commitment so that the draw missed
    (0 of 20 tasks sampled at 90 %). Now slot hashes carry fresh randomness and the draw needs the
    client's secret, revealed after the commitment."""
    prev = Hash(h("prev"))
    assert next_slot_hash(prev, 7) != next_slot_hash(prev, 7)
    rounds = 40
    # every round's task stays locked (never settled): 0.1 SOL of collateral each, on top of the minimum stake
    w = make_world(MarketParams.flat(9_000), n_nodes=2, stake=SOL + rounds * SOL // 10)
    m, sampled = w.m, 0
    for _ in range(rounds):
        job = w.post()
        m.accept_task(w.nodes[0], job, 0)
        slot = w.t.slot()
        predicted = hashlib.sha256(bytes(dict(w.t.svm.get_slot_hashes())[slot]) + (slot + 1).to_bytes(8, "little"))
        salt = 0
        while True:  # grind the commitment until the old coin misses
            commitment = h(f"out{salt}")
            if int.from_bytes(hashlib.sha256(predicted.digest() + commitment).digest()[:8], "little") % BPS >= 9_000:
                break
            salt += 1
        m.commit_result(w.nodes[0], job, 0, commitment)
        w.t.advance(1)
        sampled += m.sample(job, 0)
    assert sampled >= 24  # P(fewer than 24 of 40 at 90 %) = 9e-8 (12 of 20 failed about once in 17,000)


def test_3b_without_the_secret_the_task_is_verified() -> None:
    w = make_world(MarketParams.flat(1), n_nodes=2)
    m = w.m
    job = w.post()
    w.run_to_commit(job, 0, w.nodes[0])
    m.secrets.pop(job)  # the client vanished with its secret
    with pytest.raises(E.TooEarlyError):  # it may still reveal
        m.sample(job, 0)
    w.t.advance(w.params.reveal_slots + 1)
    assert m.sample(job, 0) is True  # fail safe: a 0.01 % rate, verified anyway
    # a secret revealed before a result is committed does not draw it either
    job2 = w.post()
    m.reveal_secret(w.client, job2)
    w.run_to_commit(job2, 0, w.nodes[0])
    assert m.sample(job2, 0) is True
    with pytest.raises(E.BadSecretError):
        m.reveal_secret(w.client, job2, bytes(32))


def test_4_client_windows_are_capped_and_validator_windows_come_from_the_config(world: World) -> None:
    """Old code accepted task_timeout_slots = 2**62: a drawn task nobody validated locked pay for good."""
    w, m = world, world.m
    with pytest.raises(E.WindowTooLongError):
        w.post(task_timeout_slots=2**62)
    with pytest.raises(E.WindowTooLongError):
        w.post(deadline_slots=w.params.max_deadline_slots + 1)
    job = w.post(task_timeout_slots=w.params.max_task_timeout_slots)
    w.run_to_commit(job, 0, w.nodes[0])
    while not m.sample(job, 0):
        job = w.post(task_timeout_slots=w.params.max_task_timeout_slots)
        w.run_to_commit(job, 0, w.nodes[0])
    assert m.job(job).tasks[0].deadline == w.t.slot() + w.params.validator_timeout_slots
    with pytest.raises(E.InvalidParameterError):
        make_world(MarketParams(max_task_timeout_slots=10**9))


@pytest.mark.parametrize("price", [10_000, 10_000_000, 30_000_000, 2 * SOL])
def test_5_every_task_rate_makes_cheating_lose_money(price: int) -> None:
    """Old code: fixed 0.05 SOL at risk and an 8 % rate, so always cheating earned 4.1x honesty."""
    from splitup.market.layout import ModelTask

    w = make_world(n_nodes=2, stake=20 * SOL)
    m, p = w.m, w.params
    model = m.register_model(w.client, h(f"m{price}"), [ModelTask(task_id=h("t"), vram=1, price=price)]).address
    assert model is not None
    for extra in (0, 5 * SOL):
        job = m.post_job(w.client, model, h("in")).address
        assert job is not None
        m.accept_task(w.nodes[0], job, 0, collateral=extra)
        m.commit_result(w.nodes[0], job, 0, h("out"))
        t = m.job(job).tasks[0]
        terms = task_terms(p, price, extra)  # the Python mirror of the program's rule
        assert t.collateral == terms.collateral == max(p.task_collateral, price * p.collateral_bps // BPS, extra)
        assert t.rate_bps == max(terms.sound_rate_bps, p.new_node_bps)
        at_risk = t.collateral * p.slash_bps // BPS
        rate = t.rate_bps / BPS
        caught = rate * (1 - p.collusion_bps / BPS)
        assert caught * (price + at_risk) > price  # C = the whole price: cheating loses money
        cheat_profit = (1 - caught) * price - caught * at_risk
        assert cheat_profit < 0 <= price * 0.2  # honest at compute = 0.8 x price earns 0.2 x price


def test_6_a_client_that_never_feeds_a_node_cannot_get_it_slashed(world: World) -> None:
    """Old code: anyone expired the never-fed task after its deadline and the node lost half its
    collateral. Now a node without a receipt is released unslashed; with one, lateness costs the
    liveness penalty, and the client can no longer release the task from under it."""
    w, m, t = world, world.m, world.t
    job = w.post(task_timeout_slots=10)
    node = w.nodes[0]
    m.accept_task(node, job, 0)
    t.advance(11)
    m.expire(job, 0)
    n = m.node(node.pubkey())
    assert (n.stake, n.locked, n.liveness_faults, n.failed) == (2 * SOL, 0, 0, 0)
    # winding a failed job up: the client releases what it never fed, the node what it cannot do
    m.accept_task(node, job, 0)
    m.accept_task(w.nodes[1], job, 1)
    m.receive_input(w.nodes[1], job, 1, h("in"))
    m.release_task(w.client, job, 0)
    with pytest.raises(E.InputReceivedError):
        m.release_task(w.client, job, 1)
    m.release_task(w.client, job, 2)  # nobody accepted it
    m.release_task(w.nodes[1], job, 1)  # it had its input: the liveness penalty, nothing more
    assert m.node(node.pubkey()).stake == 2 * SOL
    assert m.node(w.nodes[1].pubkey()).stake == 2 * SOL - w.params.task_collateral * w.params.liveness_slash_bps // BPS
    assert [s.status for s in m.job(job).tasks] == [TaskStatus.RELEASED] * 3
    before = t.balance(w.client.pubkey())
    deposit = m.job(job).header.deposit
    m.close_job(w.client, job)
    assert t.balance(w.client.pubkey()) > before + deposit - 10_000  # the whole escrow back, minus a fee


def test_standin_takeover_is_paid_and_the_failed_node_is_not(world: World) -> None:
    w, m, t = world, world.m, world.t
    failed, standin = w.nodes[0], w.nodes[1]
    job = w.post()
    m.accept_task(failed, job, 0)
    m.receive_input(failed, job, 0, h("in"))
    m.take_over(w.client, standin, job, 0)
    slot = m.job(job).tasks[0]
    assert (slot.node, slot.standin, slot.received) == (m.node_address(standin.pubkey()), 1, 1)
    assert m.node(failed.pubkey()).locked == 0 and m.node(failed.pubkey()).stake == 2 * SOL  # before its deadline
    with pytest.raises(E.WrongNodeError):
        m.commit_result(failed, job, 0, h("output"))
    before = (t.balance(failed.pubkey()), t.balance(standin.pubkey()))
    m.commit_result(standin, job, 0, h("output"), seal_of(h(b"work" + b"output")))
    w.t.advance(1)
    w.ready(job, 0)
    m.settle(job, 0)
    assert t.balance(failed.pubkey()) == before[0]
    assert t.balance(standin.pubkey()) >= before[1] + PRICES[0] - 3 * 5_000


def test_validators_are_drawn_on_chain_and_must_prove_re_execution(always_verify: World) -> None:
    w, m, t = always_verify, always_verify.m, always_verify.t
    job = w.post()
    w.run_to_commit(job, 0, w.nodes[0])
    m.sample(job, 0)
    turns = {i: m.validator_turn(job, 0, w.nodes[i].pubkey()) for i in (1, 2)}
    late = max(turns, key=lambda i: turns[i])
    if turns[late] > t.slot():
        with pytest.raises(E.NotDrawnError):
            m.assign_validator(w.nodes[late], job, 0, wait=False)
    first = min(turns, key=lambda i: turns[i])
    m.assign_validator(w.nodes[first], job, 0)
    before = t.balance(w.nodes[first].pubkey())
    m.submit_verdict(w.nodes[first], job, 0, True, h("not re-executed"))  # a lazy "agree"
    m.settle(job, 0)
    assert m.job(job).tasks[0].proved == 0
    assert t.balance(w.nodes[first].pubkey()) == before - 5_000  # no reward without proof
    assert m.node(w.nodes[0].pubkey()).reputation == 0  # and the node's work did not count as verified
