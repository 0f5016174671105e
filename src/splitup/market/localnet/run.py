"""Start the local network: ``python -m splitup.market.localnet`` or ``splitup ledger start``.

One server answers JSON-RPC (POST) and the PubSub websocket on the RPC port, and the websocket again
on RPC port + 1, where web3.js and kit look for it by default.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from splitup.market.localnet import DEFAULT_DIR, DEFAULT_HISTORY_SLOTS, DEFAULT_PORT, DEFAULT_SLOT_S
from splitup.market.localnet.chain import LocalChain
from splitup.market.localnet.server import Ticker, create_app


class PortInUse(OSError):
    """The RPC or websocket port is taken; the message names it."""


def _bind(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        s.close()
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    s.listen(2048)
    s.setblocking(False)
    return s


def _server(chain: LocalChain, host: str) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(create_app(chain), host=host, log_level="warning", ws="websockets-sansio"))


def serve(directory: Path = DEFAULT_DIR, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          slot_s: float = DEFAULT_SLOT_S, ws_port: int | None = None,
          history_slots: int = DEFAULT_HISTORY_SLOTS) -> None:
    """Run until interrupted. State lives in ``directory/ledger.sqlite3``."""
    sockets = [_bind(host, port), _bind(host, ws_port if ws_port is not None else port + 1)]
    chain = LocalChain(directory, history_slots=history_slots)
    ticker = Ticker(chain, slot_s)
    ticker.start()
    logging.getLogger("splitup.ledger").info("local network at http://%s:%d, slot %d", host, port, chain.slot())
    try:
        _server(chain, host).run(sockets=sockets)
    finally:
        ticker.stop()
        chain.close()


@contextmanager
def running(directory: Path, port: int, host: str = "127.0.0.1", slot_s: float = 0.05,
            ws_port: int | None = None, history_slots: int = DEFAULT_HISTORY_SLOTS) -> Iterator[LocalChain]:
    """An in-process local network for tests and demos; stopped on exit. The websocket also listens
    on ``ws_port`` (default: ``port + 1``, or none if that port is taken)."""
    sockets = [_bind(host, port)]
    try:
        sockets.append(_bind(host, ws_port if ws_port is not None else port + 1))
    except PortInUse:
        if ws_port is not None:
            raise
    chain = LocalChain(directory, history_slots=history_slots)
    ticker = Ticker(chain, slot_s)
    server = _server(chain, host)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name="splitup-ledger-http",
                              daemon=True)
    ticker.start()
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the local network could not start on {host}:{port}")
            threading.Event().wait(0.02)
        yield chain
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        ticker.stop()
        chain.close()
