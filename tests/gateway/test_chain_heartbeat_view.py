"""The console's node rows carry the on-chain heartbeat beside the polled one: a node that stopped beating
shows as stale once the config's window has passed (chain state from the real program in LiteSVM)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from solders.keypair import Keypair

from splitup.gateway.service import Snapshot
from splitup.gateway.views import nodes
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport

WINDOW = 10


def test_a_silent_node_shows_stale_beside_its_polled_heartbeat() -> None:
    t = LiteSvmTransport()
    authority, alive, silent = Keypair(), Keypair(), Keypair()
    for k in (authority, alive, silent):
        t.airdrop(k.pubkey(), 10 * LAMPORTS_PER_SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, authority)
    m.init_config(authority, MarketParams(heartbeat_window_slots=WINDOW))
    for k, url in ((alive, "http://alive:1"), (silent, "http://silent:1")):
        m.register_node(k, 2 * LAMPORTS_PER_SOL, vram=1 << 30, endpoint=url)
    t.advance(WINDOW + 1)
    m.heartbeat(alive, free_sessions=3, engines=1, version=256)

    svc = SimpleNamespace(
        snapshot=lambda: Snapshot(time.monotonic(), t.slot(), m.config(), m.nodes(), [], []),
        heartbeats={"http://alive:1": {"received": time.time(), "status": {"node": "alive"}}}, heartbeat_s=1.0)
    rows = {r["endpoint"]: r for r in nodes(svc)}  # type: ignore[arg-type]
    a, s = rows["http://alive:1"], rows["http://silent:1"]
    assert a["heartbeat"]["alive"] and a["chain_heartbeat"]["fresh"]
    assert a["chain_heartbeat"] | {"slot": 0} == {"slot": 0, "age_slots": 0, "window_slots": WINDOW, "fresh": True,
                                                   "free_sessions": 3, "engines": ["onnxruntime"], "version": "0.1.0"}
    assert not s["heartbeat"]["alive"] and not s["chain_heartbeat"]["fresh"]
    assert s["chain_heartbeat"]["age_slots"] > WINDOW and s["stake"] == 2 * LAMPORTS_PER_SOL
