"""Round two of attacks on the program, as an attacker who reads program/*.c: raw instructions where the
``Market`` facade would refuse, on the real runtime (LiteSVM). Each weakness test failed on the program
before its fix (noted per test); the last test keeps the probes that found the program sound."""

from __future__ import annotations

import pytest
from market_world import FEE_PER_SIGNATURE, PRICES, SOL, World, h, make_world
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.system_program import TransferParams, transfer

from splitup.market import calls
from splitup.market import errors as E
from splitup.market import instructions as ix
from splitup.market.constants import BPS, MAX_WINDOW_SLOTS, NONCE_SLOT_SHIFT, NONCE_SLOTS, TaskStatus
from splitup.market.evidence import HANDOFF, RECEIPT, Signed
from splitup.market.layout import ModelTask
from splitup.market.market import MarketParams, nonce_at, nonce_retires_at, seal_of, task_reward


def _empty(w: World, owner: Keypair) -> None:
    """The owner sends every lamport of its wallet away (another account pays the fee): the wallet is gone."""
    w.t.send([transfer(TransferParams(from_pubkey=owner.pubkey(), to_pubkey=w.authority.pubkey(),
                                      lamports=w.t.balance(owner.pubkey())))], [w.m.payer, owner])
    assert w.t.balance(owner.pubkey()) == 0


def _cheap_model(w: World, price: int) -> object:
    res = w.m.register_model(w.client, h(f"cheap {price}"), [ModelTask(task_id=h("task0"), vram=1, price=price)])
    return res.address


def test_an_emptied_wallet_cannot_hold_settlement_and_the_clients_refund_hostage() -> None:
    """Before: settle paid the node's owner wallet directly. An owner that emptied its wallet (a keypair
    with 0 lamports) made every payment below the rent-exempt minimum (890,880 lamports) fail in the
    runtime (InsufficientFundsForRent), so the task could never settle: the client's whole escrow (close_job
    needs every task done) and the validator's collateral stayed locked for as long as the owner liked.
    Now what a wallet cannot take is credited to the owner's node, withdrawable."""
    price, reward = 1_000, 5_000
    w = make_world(MarketParams.flat(10_000, validator_reward=reward, validator_reward_bps=0))
    m, t = w.m, w.t
    node, validator = w.nodes[0], w.nodes[1]
    model = _cheap_model(w, price)
    job = m.post_job(w.client, model, h("in")).address
    m.accept_task(node, job, 0)
    m.commit_result(node, job, 0, h("out"), seal_of(h("work")))
    t.advance(1)
    assert m.sample(job, 0)
    m.assign_validator(validator, job, 0)
    m.submit_verdict(validator, job, 0, True, h("work"))
    _empty(w, node)
    _empty(w, validator)
    before, total = {k: m.node(k.pubkey()) for k in (node, validator)}, w.total()
    m.settle(job, 0)  # before the fix: TransactionFailed(InsufficientFundsForRent)
    assert m.job(job).tasks[0].status == TaskStatus.SETTLED
    after = {k: m.node(k.pubkey()) for k in (node, validator)}
    assert after[node].unbonding == before[node].unbonding + price
    assert after[validator].unbonding == before[validator].unbonding + reward
    assert after[node].locked == after[validator].locked == 0
    assert w.total() == total - FEE_PER_SIGNATURE  # conserved but the fee: the credit sits in the nodes
    m.close_job(w.client, job)  # the client's refund is no longer hostage
    # the owners take their pay out once their wallets can hold it
    for k, owed in ((node, price), (validator, reward)):
        t.airdrop(k.pubkey(), SOL)
        m.withdraw(k)
        assert t.balance(k.pubkey()) == SOL + owed - FEE_PER_SIGNATURE
        assert m.node(k.pubkey()).unbonding == 0


def test_an_emptied_wallet_cannot_block_a_slash_paid_to_it() -> None:
    """The same on the dispute paths: the winner's wallet is empty and its share is small."""
    price = 1_000
    w = make_world(MarketParams.flat(10_000, task_collateral=1_000, validator_reward=2_000, validator_reward_bps=0,
                                     collateral_bps=0))
    m, t = w.m, w.t
    node, validator = w.nodes[0], w.nodes[1]
    model = _cheap_model(w, price)
    for node_honest in (True, False):
        job = m.post_job(w.client, model, h("in")).address
        m.accept_task(node, job, 0)
        m.commit_result(node, job, 0, h("out"), seal_of(h("work")))
        t.advance(1)
        assert m.sample(job, 0)
        m.assign_validator(validator, job, 0)
        m.submit_verdict(validator, job, 0, False, h("other"))
        m.arbitrate(w.authority, job, 0, node_honest)
        winner = node if node_honest else validator
        _empty(w, winner)
        owed_before, total = m.node(winner.pubkey()).unbonding, w.total()
        m.settle(job, 0)  # before the fix: TransactionFailed(InsufficientFundsForRent)
        slashed = 1_000 * w.params.slash_bps // BPS
        owed = slashed + (price if node_honest else 2_000)
        assert m.node(winner.pubkey()).unbonding == owed_before + owed
        assert w.total() == total - FEE_PER_SIGNATURE
        m.close_job(w.client, job)
        t.airdrop(winner.pubkey(), SOL)


def test_unbonding_is_a_bounded_window_too() -> None:
    """Before: check_params bounded every window but unbonding_slots. An authority (or a typo) setting it
    to 2^64 - 1 made every begin_unstake overflow, and 10^15 made every withdrawal wait 12 million years:
    every node's free stake locked for good."""
    w = make_world()
    m = w.m
    for slots in (2**64 - 1, 10**15, MAX_WINDOW_SLOTS + 1):
        with pytest.raises(E.InvalidParameterError):
            m.set_config(w.authority, MarketParams(unbonding_slots=slots))
        with pytest.raises(E.InvalidParameterError):
            make_world(MarketParams(unbonding_slots=slots), n_nodes=0)
    m.set_config(w.authority, MarketParams(unbonding_slots=MAX_WINDOW_SLOTS))
    m.begin_unstake(w.nodes[0], SOL)
    assert m.node(w.nodes[0].pubkey()).unbond_at <= w.t.slot() + MAX_WINDOW_SLOTS


def _handoff_attack(w: World, nonce: int) -> tuple[object, Signed]:
    """A client posts a job; the honest node of task 0 computes on the client's input and signs its
    hand-off of call 0 to the receiver (here, the client); then its task is given up unfed-on-chain, and
    the job is closed. Returns the job's address and the kept hand-off."""
    m = w.m
    node = w.nodes[0]
    job = m.post_job(w.client, w.model, h("in"), nonce=nonce).address
    m.accept_task(node, job, 0)
    old = Signed.make(HANDOFF, node, m.program_id, job, 0, h("what it sent on input A"), call=0)
    for i in range(len(PRICES)):
        m.release_task(w.client, job, i)  # the node's receipt never reached the chain: released unslashed
    m.close_job(w.client, job)
    return job, old


def test_a_closed_jobs_address_is_never_posted_again_so_old_evidence_cannot_slash_an_honest_node(
        never_verify: World) -> None:
    """Before: statements bind the job's *address*, and close_job freed it: the client could post again
    with the same nonce, wait for the same honest node to accept the same task, feed it other input, and
    prove the first job's hand-off against the second commitment: a "lie", the whole collateral slashed
    (handoff_slash_bps), the honest node's stake gone without any lie told (or, with its old receipt, a
    liveness slash for input never sent). Now a nonce names a recent slot and close_job waits until it
    is stale, so no address is posted twice."""
    w, m, t = never_verify, never_verify.m, never_verify.t
    node = w.nodes[0]
    stake = m.node(node.pubkey()).stake
    nonce = m.fresh_nonce()
    job, old = _handoff_attack(w, nonce)
    assert t.slot() >= nonce_retires_at(nonce)  # close_job waited for the nonce to go stale
    try:
        again = m.post_job(w.client, w.model, h("in"), nonce=nonce).address
    except E.StaleNonceError:
        again = None
    if again is not None:  # the program before the fix: the replay goes through
        assert again == job
        m.accept_task(node, job, 0)
        digests, body = [h("what it sent on input B")], h("body")
        m.commit_result(node, job, 0, calls.commitment(1, calls.root(digests), body), seal_of(h("work")))
        m.prove_handoff(old, calls.opening(digests, body, 0), payer=w.client)
        receipt = Signed.make(RECEIPT, node, m.program_id, job, 1, h("input A"))
        m.accept_task(node, job, 1)
        m.prove_receipt(receipt, payer=w.client)
    assert m.node(node.pubkey()).stake == stake, "an honest node was slashed with another job's evidence"
    assert again is None


def test_nonces_name_a_recent_slot(never_verify: World) -> None:
    """The rule the fix adds, refused as a typed error before any lamport moves; closing waits for it."""
    w, m, t = never_verify, never_verify.m, never_verify.t
    t.advance(NONCE_SLOTS + 10)
    now = t.slot()
    assert m.fresh_nonce() >> NONCE_SLOT_SHIFT == now - (NONCE_SLOTS - 50)  # 50 slots to land by default
    assert nonce_retires_at(m.fresh_nonce(NONCE_SLOTS)) == now + NONCE_SLOTS + 1
    for bad_landing in (0, NONCE_SLOTS + 1):
        with pytest.raises(ValueError):
            m.fresh_nonce(bad_landing)
    balance = t.balance(w.client.pubkey())
    for bad in (nonce_at(now + 1), nonce_at(now - NONCE_SLOTS - 1), 7, 2**64 - 1):
        with pytest.raises(E.StaleNonceError):
            m.post_job(w.client, w.model, h("in"), nonce=bad)
    assert t.balance(w.client.pubkey()) == balance - 4 * FEE_PER_SIGNATURE  # fees only
    oldest = nonce_at(now - NONCE_SLOTS)
    job = m.post_job(w.client, w.model, h("in"), nonce=oldest).address
    assert m.job(job).header.nonce >> NONCE_SLOT_SHIFT == now - NONCE_SLOTS
    fresh = m.post_job(w.client, w.model, h("in")).address
    for i in range(len(PRICES)):
        m.release_task(w.client, fresh, i)
    with pytest.raises(E.TooEarlyError):  # finished, but its nonce could still post at this address
        w.t.send([ix.close_job(m.program_id, w.client.pubkey(), fresh)], [w.client])
    m.close_job(w.client, fresh)  # the facade waits for it
    with pytest.raises(E.StaleNonceError):
        m.post_job(w.client, w.model, h("in"), nonce=m.job(job).header.nonce)


def test_fees_collected_to_the_config_itself_are_refused_as_a_typed_error(never_verify: World) -> None:
    """Before: the runtime refused the transaction (UnbalancedInstruction, not a program error): the
    program wrote the treasury's lamports twice onto one account."""
    w, m = never_verify, never_verify.m
    job = w.post()
    w.run_to_commit(job, 0, w.nodes[0])
    w.ready(job, 0)
    m.settle(job, 0)
    treasury = m.config().treasury
    assert treasury > 0
    with pytest.raises(E.InvalidParameterError):
        m.collect_fees(w.authority, m.config_address, treasury)
    m.collect_fees(w.authority, w.authority.pubkey(), treasury)
    assert m.config().treasury == 0


def test_probes_that_found_the_program_sound(always_verify: World) -> None:
    """Type confusion, duplicated accounts, u64 limits, replays and reorderings: each refused by a typed
    error, and no lamport moved."""
    w, m, t = always_verify, always_verify.m, always_verify.t
    pid = m.program_id
    node, validator = w.nodes[0], w.nodes[1]
    job = w.post()
    w.run_to_commit(job, 0, node)
    node_acc, escrow = m.node_address(node.pubkey()), m.escrow_address(job)

    def send(i: Instruction, *signers: Keypair) -> None:
        t.send([i], [m.payer, *signers])

    # a node account, the escrow, the config where a job goes; a job where a node goes
    for fake in (node_acc, escrow, m.config_address):
        with pytest.raises((E.WrongAccountTypeError, E.WrongOwnerError)):
            send(ix.expire(pid, fake, 0, node_acc))
    with pytest.raises(E.WrongAccountTypeError):
        send(ix.expire(pid, job, 0, job))
    # task indices past the end, at u64 limits
    for index in (3, 48, 2**32, 2**64 - 1):
        with pytest.raises(E.BadTaskIndexError):
            send(ix.sample(pid, job, index))
    # collateral at u64 max: more than any stake
    with pytest.raises(E.InsufficientStakeError):
        send(ix.accept_task(pid, validator.pubkey(), job, w.model, 1, 2**64 - 1), validator)
    # stake locked by an open task cannot leave
    free = m.node(node.pubkey()).stake - m.node(node.pubkey()).locked
    with pytest.raises(E.InsufficientStakeError):
        m.begin_unstake(node, free + 1)
    # the escrow passed as the node owner's wallet, the node as its own validator
    assert m.sample(job, 0)
    m.assign_validator(validator, job, 0)
    m.submit_verdict(validator, job, 0, True, h(b"work" + b"output"))
    t.advance(w.params.handoff_slots + 1)
    settle = ix.settle(pid, job, 0, node_acc, node.pubkey(), m.node_address(validator.pubkey()),
                       validator.pubkey())
    accounts = list(settle.accounts)
    for at, key in ((4, escrow), (6, node.pubkey()), (5, node_acc)):
        forged = accounts.copy()
        forged[at] = AccountMeta(key, False, True)
        with pytest.raises(E.WrongNodeError):
            send(Instruction(pid, bytes(settle.data), forged))
    # settle twice in one transaction: the second is refused, the whole transaction with it
    with pytest.raises(E.WrongTaskStateError):
        t.send([settle, settle], [m.payer])
    reward = task_reward(w.params.validator_reward, w.params.validator_reward_bps, PRICES[0])
    wallet = t.balance(validator.pubkey())
    m.settle(job, 0)
    assert t.balance(validator.pubkey()) == wallet + reward
    with pytest.raises(E.WrongTaskStateError):
        m.settle(job, 0)


def test_a_hand_off_lie_costs_at_least_what_cheating_does() -> None:
    """Before: the config let handoff_slash_bps lie anywhere from the liveness penalty up. A sampled cheat
    (or a friend it hands its signed hand-off to) could then prove its own hand-off lie before the check
    and lose handoff_slash_bps of its collateral instead of slash_bps."""
    w = make_world()
    for bps in (0, 1_000, 9_999):
        with pytest.raises(E.InvalidParameterError):
            w.m.set_config(w.authority, MarketParams(slash_bps=10_000, handoff_slash_bps=bps))
        with pytest.raises(E.InvalidParameterError):
            make_world(MarketParams(slash_bps=10_000, handoff_slash_bps=bps), n_nodes=0)
    w.m.set_config(w.authority, MarketParams(slash_bps=6_000, liveness_slash_bps=1_000, handoff_slash_bps=6_000))
    assert w.m.config().handoff_slash_bps == 6_000
