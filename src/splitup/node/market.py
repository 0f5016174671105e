"""A market node: the node daemon plus its operator's ``MarketAgent`` (``splitup node start --market``).

It serves at once (``/health``), then in the background preloads its tasks from the blob store,
registers and stakes on chain if it is not registered yet, declares the tasks it specialises in, and
starts accepting, committing and validating work. ``GET /market/startup`` reports how far it got,
``GET /market/agent`` what the agent is doing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import uvicorn
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.errors import SplitUpError
from splitup.market.connect import connect
from splitup.market.market import Market
from splitup.node.agent import MarketAgent, RecordingNode
from splitup.node.app import create_app
from splitup.node.heartbeat import DEFAULT_CHAIN_HEARTBEAT_MIN, ChainHeartbeat
from splitup.node.node import Node, NodeConfig
from splitup.node.report import sampling_rate_bps
from splitup.verify.cheats import Cheat

log = logging.getLogger("splitup.node.market")


class Startup:
    """Preload, register, specialise, then start the agent; progress readable while it runs."""

    def __init__(self, agent: MarketAgent, task_ids: list[str], stake: int, vram: int, endpoint: str,
                 beat: Callable[[], object] | None = None) -> None:
        self.agent, self.task_ids, self.stake, self.vram, self.endpoint = agent, task_ids, stake, vram, endpoint
        self.beat = beat  # the first on-chain heartbeat, sent before the node says it is ready
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
            if self.beat is not None:
                self.beat()
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


class MarketSummary:
    """The chain-side figures of the node's page and /metrics, read at most every ``ttl_s``."""

    def __init__(self, agent: MarketAgent, ttl_s: float = 2.0) -> None:
        self.agent, self.ttl_s = agent, ttl_s
        self.start_balance: int | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1]
            market, owner = self.agent.market, self.agent.owner.pubkey()
            balance = market.t.balance(owner)
            if self.start_balance is None:
                self.start_balance = balance
            out: dict[str, Any] = {"address": str(self.agent.address), "wallet": balance,
                                   "earned": balance - self.start_balance, "agent": dict(self.agent.stats)}
            if market.t.get_account(self.agent.address) is not None:
                n = market.node(owner)
                out.update(stake=n.stake, locked=n.locked, tasks_done=n.tasks_done, verified=n.verified,
                           failed=n.failed, sampling_rate_bps=sampling_rate_bps(market, n),
                           chain_heartbeat_slot=n.last_heartbeat)
            self._cached = (time.monotonic(), out)
            return out


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on the first SIGTERM/SIGINT instead of stopping at once: the node takes no new
    tasks or sessions, finishes the live ones within the drain timeout, commits what it computed, then
    exits. A second signal stops it at once."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.warning("signal %d: draining", sig)

        def drain_then_exit() -> None:
            try:
                self._drain()
            finally:
                self.should_exit = True
        threading.Thread(target=drain_then_exit, name="splitup-node-drain", daemon=True).start()


def drain(node: Node, agent: MarketAgent, timeout_s: float) -> dict[str, Any]:
    """Stop taking work, let live sessions finish (at most ``timeout_s``), then commit every accepted task
    this node computed something for; what is left is reported (and released where the chain allows)."""
    node.draining = True
    agent.accepting = False
    deadline = time.monotonic() + timeout_s
    while len(node.sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    outcome = agent.wind_down()
    agent.stop()
    log.warning("drained: %s", outcome)
    return outcome


def serve_market_node(config: NodeConfig, owner: Keypair, *, rpc_url: str, program_id: Pubkey, store_url: str,
                      host: str, port: int, task_ids: Sequence[str], stake: int, vram: int,
                      primary: Collection[str] | None = None, poll_s: float = 0.25, cheat: Cheat | None = None,
                      log_level: str = "warning", drain_timeout_s: float = 60.0,
                      chain_heartbeat_s: float = DEFAULT_CHAIN_HEARTBEAT_MIN * 60) -> None:
    """Run a market node in the foreground until stopped; checks the chain first (``check_market_node``).
    SIGTERM drains it (``drain``); a restart with the same keypair and cache resumes where it was. Once
    registered it stamps its node account every ``chain_heartbeat_s`` (``ChainHeartbeat``)."""
    market = connect(rpc_url, owner, program_id)
    check_market_node(market, owner, task_ids, stake)
    node = RecordingNode(config, cheat=cheat)
    agent = MarketAgent(market, owner, node, store_url, poll_s=poll_s,
                        primary=None if primary is None else set(primary))
    # the hook beats once the node is ready; its first beat (its status on chain) comes before "ready"
    beat = ChainHeartbeat(market, owner, node.engines, interval_s=chain_heartbeat_s, stats=agent.stats,
                          ready=lambda: startup.phase == "ready")
    startup = Startup(agent, list(task_ids), stake, vram, f"http://{host}:{port}",
                      beat=lambda: beat.send(node.status()))
    summary = MarketSummary(agent)
    app = create_app(node, heartbeat=beat, frames_host=host, market=summary)
    app.include_router(agent.router())
    app.add_api_route("/market/startup", startup.report, methods=["GET"])
    threading.Thread(target=startup.run, name="splitup-node-startup", daemon=True).start()
    # No access log: at one request per token it would dominate the node's own work.
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           timeout_keep_alive=30),
                            lambda: drain(node, agent, drain_timeout_s))
    try:
        server.run()
    finally:
        agent.stop()
