"""Reaching the chain from several threads: a pool of connections the parties share."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market.market import Market
from splitup.market.transport import DEFAULT_PROGRAM_ID, Transport


class PooledTransport:
    """Connections to the chain that threads share: each call borrows an idle ``RpcTransport`` (each
    drives its own private event loop, one caller at a time) or opens one, and gives it back. Threads
    reach the chain side by side (a gateway confirms many transactions at once) instead of queueing
    behind one lock while each waits for its confirmation; connections outlive the threads that used them."""

    def __init__(self, factory: Callable[[], Transport]) -> None:
        self._factory = factory
        self._idle: queue.LifoQueue[Transport] = queue.LifoQueue()

    def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        try:
            t = self._idle.get_nowait()
        except queue.Empty:
            t = self._factory()
        try:
            return getattr(t, name)(*args, **kw)
        finally:
            self._idle.put(t)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kw: self._call(name, *args, **kw)



def connect(rpc_url: str, payer: Keypair, program_id: Pubkey = DEFAULT_PROGRAM_ID, *,
            timeout: float = 30.0, poll_s: float = 0.05) -> Market:
    """A ``Market`` over JSON-RPC that threads may share (each thread talks over its own connection)."""
    from splitup.market.rpc import RpcTransport  # solana-py: only when a party really talks to a network

    transport = PooledTransport(lambda: RpcTransport(rpc_url, timeout=timeout, poll_s=poll_s))
    return Market(transport, program_id, payer)  # type: ignore[arg-type]
