"""A market node: the node daemon plus its operator's ``MarketAgent`` (``splitup node start --market``).

It serves at once (``/health``), then in the background preloads its tasks from the blob store,
registers and stakes on chain if it is not registered yet, declares the tasks it specialises in, and
starts accepting, committing and validating work. ``GET /market/startup`` reports how far it got,
``GET /market/agent`` what the agent is doing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any

import uvicorn
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.errors import SplitUpError
from splitup.market.market import Market
from splitup.node.app import create_app
from splitup.node.node import NodeConfig
from splitup.sdk.agent import MarketAgent, RecordingNode
from splitup.sdk.chain import connect
from splitup.verify.cheats import Cheat

log = logging.getLogger("splitup.node.market")


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


def check_market_node(market: Market, owner: Keypair, task_ids: Sequence[str], stake: int) -> None:
    """Refuse, before serving anything, what the chain would refuse later in the background thread: an
    unreachable ledger, a market without config, malformed task ids, or a stake below the market's minimum."""
    for t in task_ids:
        try:
            if len(bytes.fromhex(t)) != 32:
                raise ValueError
        except ValueError:
            raise SplitUpError(f"not a task id (64 hex digits): {t!r}") from None
    try:
        registered = market.t.get_account(market.node_address(owner.pubkey())) is not None
        config = market.config()
    except SplitUpError:
        raise
    except Exception as exc:  # transport errors of solana-py/httpx: say where, in one line
        raise SplitUpError(f"cannot read the market config from the ledger: {type(exc).__name__}: {exc}") from None
    # A node registered earlier keeps its stake; only a new registration must bring the minimum.
    if not registered and stake < config.min_stake:
        raise SplitUpError(f"stake of {stake} lamports is below the market's minimum of {config.min_stake}")


def serve_market_node(config: NodeConfig, owner: Keypair, *, rpc_url: str, program_id: Pubkey, store_url: str,
                      host: str, port: int, task_ids: Sequence[str], stake: int, vram: int,
                      primary: Collection[str] | None = None, poll_s: float = 0.25, cheat: Cheat | None = None,
                      log_level: str = "warning") -> None:
    """Run a market node in the foreground until stopped; checks the chain first (``check_market_node``)."""
    market = connect(rpc_url, owner, program_id)
    check_market_node(market, owner, task_ids, stake)
    node = RecordingNode(config, cheat=cheat)
    agent = MarketAgent(market, owner, node, store_url, poll_s=poll_s,
                        primary=None if primary is None else set(primary))
    startup = Startup(agent, list(task_ids), stake, vram, f"http://{host}:{port}")
    # Watchers (the gateway, the console) poll GET /status; the heartbeat hook has nothing to push to.
    app = create_app(node, heartbeat=lambda status: None, frames_host=host)
    app.include_router(agent.router())
    app.add_api_route("/market/startup", startup.report, methods=["GET"])
    threading.Thread(target=startup.run, name="splitup-node-startup", daemon=True).start()
    try:
        # No access log: at one request per token it would dominate the node's own work.
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_keep_alive=30)
    finally:
        agent.stop()
