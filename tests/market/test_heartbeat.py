"""HEARTBEAT on the real program: who may beat, what it records, and a stale node skipped but never slashed."""

from __future__ import annotations

import pytest
from market_world import SOL, h, make_world
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair

from splitup.market import instructions as ix
from splitup.market.accounts import engines_mask, node_engines, node_version, version_code
from splitup.market.constants import MAX_WINDOW_SLOTS, Ix, TaskStatus
from splitup.market.errors import (
    InvalidInstructionError,
    InvalidParameterError,
    MissingSignatureError,
    StaleHeartbeatError,
    UnauthorizedError,
    WrongOwnerError,
)
from splitup.market.layout import HeartbeatArgs
from splitup.market.market import MarketParams, heartbeat_fresh
from splitup.sdk.capacity import market_capacity

WINDOW = 20


@pytest.fixture
def w():
    return make_world(MarketParams.flat(10_000, heartbeat_window_slots=WINDOW))


def test_registration_counts_as_a_beat_and_a_beat_records_the_status(w) -> None:
    node = w.nodes[0]
    registered = w.m.node(node.pubkey()).last_heartbeat
    assert 0 < registered <= w.t.slot()
    w.t.advance(7)
    res = w.m.heartbeat(node, free_sessions=12, engines=engines_mask(["onnxruntime", "tinygrad"]),
                        version=version_code("1.2.3"))
    n = w.m.node(node.pubkey())
    assert n.last_heartbeat == w.t.slot() >= registered + 7
    assert (n.free_sessions, node_engines(n), node_version(n)) == (12, ["onnxruntime", "tinygrad"], "1.2.3")
    assert n.stake == 2 * SOL and n.locked == 0  # a beat moves nothing
    assert 0 < res.compute_units < 5_000


def test_only_the_owner_signing_may_beat(w) -> None:
    node, other = w.nodes[0], w.nodes[1]
    before = w.m.node(node.pubkey())
    data = bytes([Ix.HEARTBEAT]) + HeartbeatArgs(free_sessions=1, engines=1, version=1).encode()
    unsigned = Instruction(w.m.program_id, data, [AccountMeta(node.pubkey(), False, False),
                                                  AccountMeta(w.m.node_address(node.pubkey()), False, True)])
    with pytest.raises(MissingSignatureError):
        w.t.send([unsigned], [w.m.payer])
    # another registered operator signs for a node that is not its own
    foreign = Instruction(w.m.program_id, data, [AccountMeta(other.pubkey(), True, False),
                                                 AccountMeta(w.m.node_address(node.pubkey()), False, True)])
    with pytest.raises(UnauthorizedError):
        w.t.send([foreign], [other])
    with pytest.raises(WrongOwnerError):  # a stranger's wallet has no node account to stamp
        stranger = Keypair()
        w.t.airdrop(stranger.pubkey(), SOL)
        w.m.heartbeat(stranger)
    with pytest.raises(InvalidInstructionError):  # truncated status
        w.t.send([Instruction(w.m.program_id, data[:-1], ix.heartbeat(w.m.program_id, node.pubkey(), 1, 1, 1).accounts)],
                 [node])
    assert w.m.node(node.pubkey()) == before


def test_window_is_a_bounded_config_field(w) -> None:
    assert w.m.config().heartbeat_window_slots == WINDOW
    with pytest.raises(InvalidParameterError):
        w.m.set_config(w.authority, MarketParams.flat(10_000, heartbeat_window_slots=MAX_WINDOW_SLOTS + 1))
    w.m.set_config(w.authority, MarketParams.flat(10_000, heartbeat_window_slots=0))  # 0: liveness not tracked
    w.t.advance(3 * WINDOW)
    assert len(w.m.live_nodes()) == len(w.nodes)


def test_a_silent_node_is_skipped_refused_as_validator_and_keeps_its_stake(w) -> None:
    a, b, c = w.nodes
    job = w.post()
    w.run_to_commit(job, 0, a)
    for n in (a, c):
        w.m.heartbeat(n)
    w.t.advance(WINDOW + 1)  # b last beat at registration: stale now
    w.m.heartbeat(a)
    w.m.heartbeat(c)
    cfg, slot = w.m.config(), w.t.slot()
    assert not heartbeat_fresh(w.m.node(b.pubkey()), cfg, slot)
    live = {k for k, _ in w.m.live_nodes()}
    assert live == {w.m.node_address(a.pubkey()), w.m.node_address(c.pubkey())}
    # admission counts b no more: its slots vanish although its stake is free
    caps = market_capacity(w.m.nodes(), cfg, [h("task1").hex()], [20_000_000],
                           {f"http://node{i}:8000": {"tasks": [h("task1").hex()], "free_sessions": {h("task1").hex(): 1}}
                            for i in range(3)}, slot=slot)
    assert (caps[0].holders, caps[0].slots) == (2, 2)
    assert w.m.sample(job, 0)
    with pytest.raises(StaleHeartbeatError):
        w.m.assign_validator(b, job, 0)
    w.m.heartbeat(b)  # alive again: drawable again
    w.m.assign_validator(b, job, 0)
    assert w.m.job(job).tasks[0].status == TaskStatus.VALIDATING
    # silence never costs stake: b went stale holding nothing; its collateral is locked only by its own check
    w.t.advance(3 * WINDOW)
    stale = w.m.node(b.pubkey())
    assert stale.stake == 2 * SOL and stale.liveness_faults == 0
