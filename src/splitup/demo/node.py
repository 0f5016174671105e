"""A market node process: the node daemon (``splitup.node``) plus its operator's market agent.

    python -m splitup.demo.node --keypair node.json --rpc-url URL --store URL --port 8701 \
        --tasks ID,ID --stake LAMPORTS --vram BYTES

It serves at once (``/health``), then in the background preloads its tasks from the blob store,
registers and stakes on chain if it is not registered yet, declares the tasks it specialises in, and
starts accepting and validating work. ``GET /market/agent`` reports how far it got.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn
from solders.pubkey import Pubkey

from splitup.market.localnet import DEFAULT_RPC_URL
from splitup.market.transport import DEFAULT_PROGRAM_ID
from splitup.node.app import create_app
from splitup.node.node import NodeConfig
from splitup.sdk.agent import MarketAgent, RecordingNode
from splitup.sdk.chain import as_keypair, connect

log = logging.getLogger("splitup.demo.node")


class Startup:
    """Preload, register, specialise, then start the agent; progress readable while it runs."""

    def __init__(self, agent: MarketAgent, task_ids: list[str], stake: int, vram: int, endpoint: str) -> None:
        self.agent, self.task_ids, self.stake, self.vram, self.endpoint = agent, task_ids, stake, vram, endpoint
        self.preloaded = 0
        self.phase = "starting"
        self.error = ""

    def run(self) -> None:
        try:
            node, market, owner = self.agent.node, self.agent.market, self.agent.owner
            self.phase = "preloading"
            for task_id in self.task_ids:
                node.preload(task_id)
                self.preloaded += 1
            self.phase = "registering"
            if market.t.get_account(market.node_address(owner.pubkey())) is None:
                market.register_node(owner, self.stake, self.vram, 1, self.endpoint)
            market.specialize(owner, [bytes.fromhex(t) for t in self.task_ids])
            self.agent.start()
            self.phase = "ready"
        except Exception as exc:
            self.phase, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("node startup failed")

    def report(self) -> dict[str, Any]:
        return {"phase": self.phase, "preloaded": self.preloaded, "tasks": len(self.task_ids), "error": self.error}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m splitup.demo.node", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keypair", type=Path, required=True)
    ap.add_argument("--rpc-url", default=DEFAULT_RPC_URL)
    ap.add_argument("--program-id", type=Pubkey.from_string, default=DEFAULT_PROGRAM_ID)
    ap.add_argument("--store", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tasks", default="", help="comma-separated task ids to preload and specialise in")
    ap.add_argument("--primary", default=None,
                    help="comma-separated task ids this node takes at once (others: only as a stand-in)")
    ap.add_argument("--stake", type=int, required=True, help="lamports to stake when registering")
    ap.add_argument("--vram", type=int, required=True, help="bytes of (V)RAM declared on chain")
    ap.add_argument("--node-id", default=None)
    ap.add_argument("--cache", type=Path, default=Path(".splitup/node-cache"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between looks at the chain")
    ap.add_argument("--cheat", choices=("perturb", "zeros"), default=None,
                    help="be a dishonest node (demo and tests): forward noisy or zero outputs")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(message)s")

    owner = as_keypair(a.keypair)
    extra = {"node_id": a.node_id} if a.node_id else {}
    cheat = None
    if a.cheat is not None:
        from splitup.verify import cheats

        cheat = cheats.perturb(0.05) if a.cheat == "perturb" else cheats.zeros()
    node = RecordingNode(NodeConfig(engine=a.engine, threads=a.threads, cache_dir=a.cache, store_url=a.store,
                                    heartbeat_s=2.0, **extra), cheat=cheat)
    primary = None if a.primary is None else {t for t in a.primary.split(",") if t}
    agent = MarketAgent(connect(a.rpc_url, owner, a.program_id), owner, node, a.store, poll_s=a.poll,
                        primary=primary)
    endpoint = f"http://{a.host}:{a.port}"
    startup = Startup(agent, [t for t in a.tasks.split(",") if t], a.stake, a.vram, endpoint)
    app = create_app(node, heartbeat=lambda status: None)
    app.include_router(agent.router())
    app.add_api_route("/market/startup", startup.report, methods=["GET"])
    threading.Thread(target=startup.run, name="splitup-node-startup", daemon=True).start()
    try:
        uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False, timeout_keep_alive=30)
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
