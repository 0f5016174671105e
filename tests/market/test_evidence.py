"""Blame only with evidence (issue 12): receipts and per-call hand-offs signed by node owners, proved on chain
through the Ed25519 precompile and the opening of the sender's call tree, on LiteSVM with the committed
program."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
from market_world import FEE_PER_SIGNATURE, PRICES, SOL, World, h, make_world
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.sysvar import CLOCK

from splitup.market import calls
from splitup.market import errors as E
from splitup.market import instructions as ix
from splitup.market.constants import BPS, MAX_CALL_DEPTH, MAX_CALLS, TaskStatus
from splitup.market.evidence import HANDOFF, RECEIPT, Signed, ed25519_verify, statement
from splitup.market.market import MarketParams, seal_of
from splitup.verify.commitment import handoff_digest
from splitup.verify.transcript import Sent, Transcript

PROOF_FEE = 2 * FEE_PER_SIGNATURE  # the payer's signature and the one the precompile checks


def _others(w: World) -> int:
    """Lamports of every tracked account but the fee payer's: proofs move none of them except by rule."""
    return w.total([k for k in w.tracked() if k != w.m.payer.pubkey()])


def test_receipts_that_are_not_the_nodes_own_for_this_task_are_refused(world: World) -> None:
    w, m = world, world.m
    node, other = w.nodes[0], w.nodes[1]
    job, job2 = w.post(), w.post()
    m.accept_task(node, job, 0)
    m.accept_task(node, job2, 0)
    pid = m.program_id

    def prove(signed: Signed, at: Pubkey = job, index: int = 0, verify: object = None) -> None:
        node_acc = m.job(at).tasks[index].node
        w.t.send([verify or signed.verify_ix(), ix.prove_receipt(pid, at, index, node_acc, signed.digest)], [m.payer])

    good = Signed.make(RECEIPT, node, pid, job, 0, h("in"))
    # a forged signature: the precompile refuses the whole transaction
    forged = Signed(RECEIPT, pid, job, 0, h("in"), node.pubkey(), bytes(Keypair().sign_message(good.message)))
    with pytest.raises(E.InvalidSignatureError):
        m.prove_receipt(forged)
    # the node's key, but over another statement: a hand-off, another job, another task, another program
    for wrong in (Signed.make(HANDOFF, node, pid, job, 0, h("in")), Signed.make(RECEIPT, node, pid, job2, 0, h("in")),
                  Signed.make(RECEIPT, node, pid, job, 1, h("in")),
                  Signed.make(RECEIPT, node, Pubkey.new_unique(), job, 0, h("in"))):
        with pytest.raises(E.BadEvidenceError):
            prove(wrong, verify=wrong.verify_ix())
    # a replay of this job's receipt on another job or another task
    with pytest.raises(E.BadEvidenceError):
        prove(good, at=job2)
    m.accept_task(node, job, 1)
    with pytest.raises(E.BadEvidenceError):
        prove(good, index=1)
    # signed by someone other than the node's owner: another node's owner, the client
    for key in (other, w.client):
        with pytest.raises(E.BadEvidenceError):
            prove(Signed.make(RECEIPT, key, pid, job, 0, h("in")))
    # no signature check before it, or one whose offsets read another instruction's data
    with pytest.raises(E.BadEvidenceError):
        w.t.send([ix.prove_receipt(pid, job, 0, m.node_address(node.pubkey()), h("in"))], [m.payer])
    # the precompile really checked `good` (its message read from instruction 0), while the instruction
    # before ours carries, in its own data, a statement the signature was never checked over
    decoy = statement(RECEIPT, pid, job, 0, h("never signed"))
    header = struct.pack("<BBHHHHHHH", 1, 0, 48, 0xFFFF, 16, 0xFFFF, 112, len(decoy), 0)
    elsewhere = ed25519_verify(node.pubkey(), good.signature, good.message)
    pointing = type(elsewhere)(elsewhere.program_id, header + bytes(node.pubkey()) + good.signature + decoy, [])
    with pytest.raises(E.BadEvidenceError):
        w.t.send([good.verify_ix(), pointing,
                  ix.prove_receipt(pid, job, 0, m.node_address(node.pubkey()), h("never signed"))], [m.payer])
    # the Instructions sysvar is the only evidence read
    fake_sysvar = ix.prove_receipt(pid, job, 0, m.node_address(node.pubkey()), h("in"))
    metas = list(fake_sysvar.accounts)
    metas[2] = type(metas[2])(CLOCK, False, False)
    with pytest.raises(E.BadSysvarError):
        w.t.send([good.verify_ix(), type(fake_sysvar)(pid, bytes(fake_sysvar.data), metas)], [m.payer])
    assert m.job(job).tasks[0].received == 0


def test_a_proved_receipt_blocks_release_and_lateness_is_a_liveness_fault(world: World) -> None:
    """The node got its input and stalls, never declaring it: the client's proof of the node's own receipt
    stops it from walking away unslashed."""
    w, m, t = world, world.m, world.t
    node = w.nodes[0]
    job = w.post(task_timeout_slots=10)
    m.accept_task(node, job, 0)
    receipt = Signed.make(RECEIPT, node, m.program_id, job, 0, h("in"))
    others, payer = _others(w), t.balance(m.payer.pubkey())
    m.prove_receipt(receipt)
    assert (_others(w), payer - t.balance(m.payer.pubkey())) == (others, PROOF_FEE)
    assert m.job(job).tasks[0].received == 1
    with pytest.raises(E.InputReceivedError):
        m.prove_receipt(receipt)  # once is enough
    with pytest.raises(E.InputReceivedError):
        m.release_task(w.client, job, 0)
    t.advance(11)
    m.expire(job, 0)
    n = m.node(node.pubkey())
    collateral = m.min_collateral(m.job(job).tasks[0].price)
    assert (n.stake, n.locked, n.liveness_faults, n.failed) == (
        2 * SOL - collateral * w.params.liveness_slash_bps // BPS, 0, 1, 0)
    # the task reopened: a receipt of the earlier acceptance is refused while nobody holds it
    with pytest.raises(E.WrongOwnerError):
        m.prove_receipt(receipt)


def _session(calls_n: int = 4, seed: int = 0) -> Transcript:
    """An honest node's record of a session of ``calls_n`` calls: a prefill and decode steps, each handing
    a hidden state on (its last position only, as a route's ``last`` asks) and relaying the mask."""
    rng = np.random.default_rng(seed)
    t = Transcript(str(Pubkey.new_unique()), 0, "ab" * 32)
    for i in range(calls_n):
        n = 3 if i == 0 else 1
        t.add({"x": rng.standard_normal((1, n, 4)).astype(np.float32)},
              {"hidden": rng.standard_normal((1, n, 4)).astype(np.float32)},
              relayed={"mask": np.ones((1, n), np.int64)}, sent=Sent(("hidden", "mask"), ("hidden",)))
    return t


def _commit(w: World, job: Pubkey, index: int, node: Keypair, t: Transcript) -> None:
    w.m.accept_task(node, job, index)
    w.m.commit_result(node, job, index, t.commitment(), seal_of(h(b"work")))
    w.t.advance(1)


def test_a_node_that_hands_on_a_wrong_hidden_state_on_a_later_call_is_slashed_by_its_signed_handoff() -> None:
    """Call 2 of a session: the sender hands the next node a tampered hidden state, signed, and commits
    its honest transcript (a validator replaying it sees nothing wrong). The receiver proves the hand-off
    with the opening of the commitment at call 2: the sender loses handoff_slash_bps of its collateral and
    its pay, a validator already on the task is released, the receiver and the client lose nothing,
    lamports are conserved."""
    # every task drawn, and a window wide enough for the draw and the validator lottery to happen first
    w = make_world(MarketParams.flat(10_000, handoff_slots=100))
    m, t = w.m, w.t
    sender, receiver, validator = w.nodes
    job = w.post()
    honest = _session()
    _commit(w, job, 0, sender, honest)
    sent = honest.steps[2].handoff()
    sent["hidden"] = sent["hidden"] + np.float32(0.5)
    lie = Signed.make(HANDOFF, sender, m.program_id, job, 0, handoff_digest(sent), call=2)
    assert m.sample(job, 0)
    m.assign_validator(validator, job, 0)
    w.run_to_commit(job, 1, receiver, b"computed on what it got")
    stake = {k.pubkey(): m.node(k.pubkey()).stake for k in w.nodes}
    others, payer = _others(w), t.balance(m.payer.pubkey())
    treasury = m.config().treasury
    # the honest hand-offs of the other calls prove nothing
    for call in (0, 1, 3):
        fair = Signed.make(HANDOFF, sender, m.program_id, job, 0, honest.handoff_digests()[call], call=call)
        with pytest.raises(E.NoMismatchError):
            m.prove_handoff(fair, honest.opening(call))
    m.prove_handoff(lie, honest.opening(2), payer=m.payer)
    slot = m.job(job).tasks[0]
    slashed = slot.collateral * w.params.handoff_slash_bps // BPS
    assert slot.status == TaskStatus.FAILED
    assert m.node(sender.pubkey()).stake == stake[sender.pubkey()] - slashed
    assert (m.node(sender.pubkey()).failed, m.node(sender.pubkey()).ever_failed) == (1, 1)
    assert m.node(validator.pubkey()).locked == 0 and m.node(validator.pubkey()).stake == stake[validator.pubkey()]
    assert m.node(receiver.pubkey()).stake == stake[receiver.pubkey()]
    assert m.config().treasury == treasury + slashed
    assert (_others(w), payer - t.balance(m.payer.pubkey())) == (others, PROOF_FEE + 3 * PROOF_FEE)
    with pytest.raises(E.WrongTaskStateError):
        m.prove_handoff(lie, honest.opening(2))  # no double jeopardy
    # the receiver is paid for its honest work on what it got; the client gets the liar's price back
    m.sample(job, 1)
    if m.job(job).tasks[1].status == TaskStatus.SAMPLED:
        m.assign_validator(validator, job, 1)
        m.submit_verdict(validator, job, 1, True, h(b"work" + b"computed on what it got"))
    m.settle(job, 1)
    assert m.node(receiver.pubkey()).stake == stake[receiver.pubkey()]
    m.release_task(w.client, job, 2)
    m.close_job(w.client, job)


def test_a_handoff_of_a_call_the_sender_never_committed_is_a_lie(never_verify: World) -> None:
    """It sent a fifth call and committed four: the opening (the tree's root, no path) shows the count."""
    w, m = never_verify, never_verify.m
    sender = w.nodes[0]
    job = w.post()
    honest = _session(4)
    _commit(w, job, 0, sender, honest)
    extra = Signed.make(HANDOFF, sender, m.program_id, job, 0, h("a fifth call"), call=4)
    with pytest.raises(E.BadOpeningError):  # a count the commitment does not hold
        m.prove_handoff(extra, replace(honest.opening(4), count=5))
    m.prove_handoff(extra, honest.opening(4))
    assert m.job(job).tasks[0].status == TaskStatus.FAILED


def test_an_honest_sender_cannot_be_framed(never_verify: World) -> None:
    """Whatever the receiver makes up, an honest sender's signed hand-offs open to what it committed."""
    w, m, t = never_verify, never_verify.m, never_verify.t
    sender, receiver = w.nodes[0], w.nodes[1]
    job = w.post()
    honest = _session(5, seed=1)
    _commit(w, job, 0, sender, honest)
    pid, digests = m.program_id, honest.handoff_digests()
    signed = [Signed.make(HANDOFF, sender, pid, job, 0, d, call=k) for k, d in enumerate(digests)]
    for k, s in enumerate(signed):
        with pytest.raises(E.NoMismatchError):
            m.prove_handoff(s, honest.opening(k))
    s3, good = signed[3], honest.opening(3)
    forged_path = (h("sibling"), *good.path[1:])
    other = _session(5, seed=2).opening(3)  # a tree the sender never committed
    for forged in (replace(good, committed=h("what the receiver says was committed")),  # another leaf
                   replace(good, path=forged_path), replace(good, path=good.path[:-1]),  # a wrong, a short path
                   replace(good, path=(*good.path, h("x"))), replace(good, body=h("body")),
                   replace(honest.opening(2), call=3),  # call 2's leaf passed off as call 3's
                   other, replace(other, committed=digests[3])):
        with pytest.raises(E.BadOpeningError):
            m.prove_handoff(s3, forged)
    # "beyond the count" needs the true root and count (here with a statement signed for call 5, to reach
    # the opening check)
    beyond = Signed.make(HANDOFF, sender, pid, job, 0, h("x"), call=5)
    for forged in (replace(honest.opening(5), committed=h("root")), replace(honest.opening(5), count=6),
                   replace(honest.opening(5), path=(h("x"),))):
        with pytest.raises(E.BadOpeningError):
            m.prove_handoff(beyond, forged)
    # beyond the count with the true root: the honest sender never signed that call, and its real
    # signature over call 3 does not verify as one over call 5
    with pytest.raises(E.InvalidSignatureError):
        m.prove_handoff(replace(s3, call=5), honest.opening(5))
    # the receiver cannot sign in the sender's name, nor reuse a statement from elsewhere
    for framed in (Signed.make(HANDOFF, receiver, pid, job, 0, h("garbage"), call=3),
                   Signed.make(RECEIPT, sender, pid, job, 0, h("garbage"))):
        with pytest.raises(E.BadEvidenceError):
            w.t.send([framed.verify_ix(), ix.prove_handoff(pid, job, 0, m.node_address(sender.pubkey()),
                                                           framed.digest, good)], [m.payer])
    other_task = Signed.make(HANDOFF, sender, pid, job, 1, h("garbage"), call=3)
    with pytest.raises(E.BadEvidenceError):
        w.t.send([other_task.verify_ix(),
                  ix.prove_handoff(pid, job, 0, m.node_address(sender.pubkey()), other_task.digest, good)],
                 [m.payer])
    assert m.job(job).tasks[0].status == TaskStatus.COMMITTED
    assert m.node(sender.pubkey()).stake == 2 * SOL
    # settlement waits for the window; after it, no proof is taken
    w.ready(job, 0)
    if m.job(job).tasks[0].status == TaskStatus.READY and t.slot() <= m.job(job).tasks[0].committed_slot + w.params.handoff_slots:
        with pytest.raises(E.TooEarlyError):
            t.send([ix.settle(pid, job, 0, m.node_address(sender.pubkey()), sender.pubkey())], [m.payer])
    t.advance(w.params.handoff_slots + 1)
    late = Signed.make(HANDOFF, sender, pid, job, 0, h("garbage"), call=3)
    with pytest.raises(E.TooLateError):
        m.prove_handoff(late, good)
    m.settle(job, 0)
    assert m.node(sender.pubkey()).stake == 2 * SOL and m.job(job).tasks[0].status == TaskStatus.SETTLED


def test_call_tree_openings_open_the_transcript_commitment() -> None:
    """Every call of a session (and one beyond it) opens its commitment; the tree's depth bound holds."""
    for n in (1, 2, 3, 5, 8):
        t = _session(n, seed=n)
        assert all(t.opening(k).commitment() == t.commitment() for k in range(n + 1))
        assert len(t.opening(0).path) == calls.depth(n)
    assert calls.depth(MAX_CALLS) == MAX_CALL_DEPTH
    # the hand-off a call sent is what its record rebuilds: the last position of the hidden state
    t = _session(2)
    assert t.steps[0].handoff()["hidden"].shape == (1, 1, 4)
    assert t.steps[0].handoff()["mask"].shape == (1, 3)


def test_statement_bytes_are_what_the_program_rebuilds() -> None:
    pid, job = Pubkey.new_unique(), Pubkey.new_unique()
    msg = statement(RECEIPT, pid, job, 7, bytes(range(32)))
    assert len(msg) == 122 and msg[:18] == b"splitup-receipt-v1" and msg[82:90] == (7).to_bytes(8, "little")
    s = Signed.make(HANDOFF, Keypair(), pid, job, 7, bytes(32), call=3)
    assert len(s.message) == 130 and s.message[:18] == b"splitup-handoff-v2"
    assert s.message[82:98] == (7).to_bytes(8, "little") + (3).to_bytes(8, "little")
    assert Signed.from_json(s.to_json()) == s
    assert Signed.from_compact(s.compact(), HANDOFF, pid, job, 7, s.signer, call=3) == s
    for index, call in ((8, 3), (7, 2)):
        with pytest.raises(E.MarketError):
            Signed.from_compact(s.compact(), HANDOFF, pid, job, index, s.signer, call=call)
    with pytest.raises(E.MarketError):
        Signed.from_json({**s.to_json(), "digest": "00" * 31})
    assert seal_of(bytes(32)) != bytes(32)


def test_a_node_saying_it_was_never_fed_gives_the_client_a_window_to_show_its_receipt(world: World) -> None:
    """Its release only cuts the deadline to handoff_slots: a node that was fed and walks away is caught by
    its own receipt; one that really was never fed leaves unslashed right after the window."""
    w, m, t = world, world.m, world.t
    fed, unfed = w.nodes[0], w.nodes[1]
    job = w.post(task_timeout_slots=1_000)
    m.accept_task(fed, job, 0)
    m.accept_task(unfed, job, 1)
    for node, index in ((fed, 0), (unfed, 1)):
        m.release_task(node, job, index)
        slot = m.job(job).tasks[index]
        assert slot.status == TaskStatus.ACCEPTED and slot.deadline == t.slot() + w.params.handoff_slots
        assert m.node(node.pubkey()).locked == slot.collateral
    m.prove_receipt(Signed.make(RECEIPT, fed, m.program_id, job, 0, h("in")))
    with pytest.raises(E.TooEarlyError):
        m.expire(job, 1)
    t.advance(w.params.handoff_slots + 1)
    m.expire(job, 0)
    m.expire(job, 1)
    collateral = m.min_collateral(PRICES[0])
    assert m.node(fed.pubkey()).stake == 2 * SOL - collateral * w.params.liveness_slash_bps // BPS
    assert (m.node(unfed.pubkey()).stake, m.node(unfed.pubkey()).locked) == (2 * SOL, 0)
    # given up, so released rather than reopened: no node is handed the task again
    assert [s.status for s in m.job(job).tasks[:2]] == [TaskStatus.RELEASED] * 2
