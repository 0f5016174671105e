"""A market node's on-chain heartbeat: the node daemon's heartbeat hook, sending HEARTBEAT.

The daemon calls the hook with its status every ``--heartbeat`` seconds; a transaction goes out only every
``--chain-heartbeat`` minutes (each costs its signature fee), or sooner when the market's heartbeat
window would otherwise pass first (a ledger with fast slots): at half the window since the last beat.
Routing and the validator lottery skip a node whose beat is older than the window; silence is never
slashed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from solders.keypair import Keypair

from splitup import __version__
from splitup.market.accounts import engines_mask, version_code
from splitup.market.market import Market

log = logging.getLogger("splitup.node.heartbeat")

U32_MAX = 2**32 - 1
DEFAULT_CHAIN_HEARTBEAT_MIN = 5.0
CONFIG_TTL_S = 60.0  # the window is re-read this often (the authority may change it)


def beat_status(status: Mapping[str, Any], engines: Mapping[str, str]) -> tuple[int, int, int]:
    """(free session slots, engines mask, version) of a node's ``/status``: the most generations of any
    one of its tasks it could take now (none while draining)."""
    free = status.get("free_sessions") or {}
    if status.get("draining"):
        slots = 0
    elif free:
        slots = max(int(v) for v in free.values())
    else:
        slots = int(status.get("max_sessions", 0)) - int(status.get("sessions", 0))
    mask = engines_mask(name for name, state in engines.items() if state == "ok")
    return max(0, min(U32_MAX, slots)), mask, version_code(__version__)


class ChainHeartbeat:
    """``create_app(node, heartbeat=ChainHeartbeat(...))``: stamps the node's account while ``ready()``
    (the node is registered). ``last`` holds the slot and status of the latest beat this process sent;
    ``stats["heartbeats"]`` (the agent's counters, when given) counts the beats sent."""

    def __init__(self, market: Market, owner: Keypair, engines: Callable[[], Mapping[str, str]], *,
                 interval_s: float = DEFAULT_CHAIN_HEARTBEAT_MIN * 60, ready: Callable[[], bool] = lambda: True,
                 stats: dict[str, int] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError("the chain heartbeat interval must be positive")
        self.market, self.owner, self.engines = market, owner, engines
        self.interval_s, self.ready = interval_s, ready
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("heartbeats", 0)
        self.last: dict[str, Any] = {}
        self._sent_at: float | None = None
        self._window: tuple[float, int] | None = None  # (read at, slots)

    def window(self) -> int:
        if self._window is None or time.monotonic() - self._window[0] > CONFIG_TTL_S:
            self._window = (time.monotonic(), int(self.market.config().heartbeat_window_slots))
        return self._window[1]

    def due(self) -> bool:
        if self._sent_at is None or time.monotonic() - self._sent_at >= self.interval_s:
            return True
        window = self.window()
        return window > 0 and self.market.t.slot() - int(self.last.get("slot", 0)) >= window // 2

    @property
    def sent(self) -> int:
        return self.stats["heartbeats"]

    def __call__(self, status: dict[str, Any]) -> None:
        if self.ready() and self.due():
            self.send(status)

    def send(self, status: Mapping[str, Any]) -> bool:
        """Beat now; False (logged, retried by the next due call) when the chain refused or was away."""
        free, mask, version = beat_status(status, self.engines())
        try:
            self.market.heartbeat(self.owner, free, mask, version)
        except Exception as exc:  # the chain being away must not fill the log with tracebacks: next call retries
            log.warning("on-chain heartbeat failed: %s: %s", type(exc).__name__, exc)
            return False
        self._sent_at = time.monotonic()
        self.stats["heartbeats"] += 1
        self.last = {"slot": self.market.node(self.owner.pubkey()).last_heartbeat, "free_sessions": free,
                     "engines": mask, "version": version, "time": time.time()}
        return True
