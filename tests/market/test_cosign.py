"""A stand-in's takeover signed in two places (issue 13): the client signs the transaction, the stand-in
checks it is exactly its own takeover of that task, co-signs and sends it; anything else is refused."""

from __future__ import annotations

import pytest
from market_world import World, h
from solders.keypair import Keypair

from splitup.market.constants import TaskStatus
from splitup.market.cosign import cosign_takeover, takeover_request
from splitup.market.errors import MarketError


def test_takeover_signed_by_client_then_standin_records_the_standin(world: World) -> None:
    job = world.post()
    failed, standin = world.nodes[0], world.nodes[1]
    world.m.accept_task(failed, job, 0)
    locked_before = world.m.node(failed.pubkey()).locked
    raw = takeover_request(world.m, world.client, standin.pubkey(), job, 0)
    cosign_takeover(world.m, standin, raw, job, 0)
    t = world.m.job(job).tasks[0]
    assert t.node == world.m.node_address(standin.pubkey()) and t.standin == 1
    assert TaskStatus(t.status) == TaskStatus.ACCEPTED
    assert world.m.node(failed.pubkey()).locked < locked_before  # unlocked, unslashed before its deadline
    world.m.commit_result(standin, job, 0, h(b"out"), bytes(32))  # the stand-in now commits and is paid


def test_standin_refuses_a_transaction_that_is_not_its_takeover(world: World) -> None:
    job = world.post()
    world.m.accept_task(world.nodes[0], job, 0)
    raw = takeover_request(world.m, world.client, world.nodes[2].pubkey(), job, 0)  # for another stand-in
    with pytest.raises(MarketError, match="not the takeover"):
        cosign_takeover(world.m, world.nodes[1], raw, job, 0)
    with pytest.raises(MarketError, match="not a transaction"):
        cosign_takeover(world.m, world.nodes[1], b"\0" * 10, job, 0)
    other = takeover_request(world.m, Keypair(), world.nodes[1].pubkey(), job, 0)  # not the job's client
    with pytest.raises(MarketError):
        cosign_takeover(world.m, world.nodes[1], other, job, 0)
