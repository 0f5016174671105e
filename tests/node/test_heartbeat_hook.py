"""The market node's heartbeat hook on the real program (LiteSVM): when it sends HEARTBEAT, what it
reports, and that a chain failure neither raises into the node nor counts as a beat."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair

from splitup import __version__
from splitup.market.accounts import node_engines, node_version
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport
from splitup.node.heartbeat import ChainHeartbeat, beat_status

WINDOW = 20
ENGINES = {"onnxruntime": "ok", "tinygrad": "tinygrad is not installed"}


@pytest.fixture
def market() -> tuple[Market, Keypair]:
    t = LiteSvmTransport()
    authority, owner = Keypair(), Keypair()
    for k in (authority, owner):
        t.airdrop(k.pubkey(), 10 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, authority)
    m.init_config(authority, MarketParams(heartbeat_window_slots=WINDOW))
    m.register_node(owner, 2 * LAMPORTS_PER_SOL, vram=1 << 30)
    return m, owner


def test_status_mapping() -> None:
    status = {"free_sessions": {"a": 3, "b": 7}, "sessions": 1, "max_sessions": 64, "draining": False}
    assert beat_status(status, ENGINES)[:2] == (7, 1)
    assert beat_status({**status, "draining": True}, ENGINES)[0] == 0
    assert beat_status({"free_sessions": {}, "sessions": 4, "max_sessions": 10}, {})[:2] == (6, 0)


def test_beats_at_its_interval_or_at_half_the_window(market) -> None:
    m, owner = market
    ready = [False]
    beat = ChainHeartbeat(m, owner, lambda: ENGINES, interval_s=3600, ready=lambda: ready[0])
    status = {"free_sessions": {"t": 5}, "sessions": 0, "max_sessions": 8}
    beat(status)
    assert beat.sent == 0  # not registered yet as far as the node knows
    ready[0] = True
    beat(status)
    n = m.node(owner.pubkey())
    assert beat.sent == 1 and beat.last["slot"] == n.last_heartbeat == m.t.slot()
    assert (n.free_sessions, node_engines(n), node_version(n)) == (5, ["onnxruntime"], __version__)
    m.t.advance(WINDOW // 2 - 1)
    beat(status)
    assert beat.sent == 1  # the hour has not passed, and half the window neither
    m.t.advance(1)
    beat({**status, "free_sessions": {"t": 2}})
    assert beat.sent == 2 and m.node(owner.pubkey()).free_sessions == 2


def test_a_failed_beat_is_retried_not_raised(market, caplog) -> None:
    m, _ = market
    stranger = Keypair()  # no node account: the program refuses its beat
    m.t.airdrop(stranger.pubkey(), LAMPORTS_PER_SOL)
    beat = ChainHeartbeat(m, stranger, lambda: ENGINES, interval_s=60)
    beat({})
    beat({})
    assert beat.sent == 0 and "on-chain heartbeat failed" in caplog.text
    with pytest.raises(ValueError):
        ChainHeartbeat(m, stranger, lambda: ENGINES, interval_s=0)
