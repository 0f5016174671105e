"""Start the local network: ``python -m splitup.market.localnet`` or ``splitup ledger start``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from splitup.market.localnet import DEFAULT_DIR, DEFAULT_PORT, DEFAULT_SLOT_S
from splitup.market.localnet.chain import LocalChain
from splitup.market.localnet.server import Ticker, create_app


def serve(directory: Path = DEFAULT_DIR, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          slot_s: float = DEFAULT_SLOT_S) -> None:
    """Run until interrupted. State lives in ``directory/ledger.sqlite3``."""
    chain = LocalChain(directory)
    ticker = Ticker(chain, slot_s)
    ticker.start()
    logging.getLogger("splitup.ledger").info("local network at http://%s:%d, slot %d", host, port, chain.slot())
    try:
        uvicorn.run(create_app(chain), host=host, port=port, log_level="warning")
    finally:
        ticker.stop()
        chain.close()


@contextmanager
def running(directory: Path, port: int, host: str = "127.0.0.1", slot_s: float = 0.05) -> Iterator[LocalChain]:
    """An in-process local network for tests and demos; stopped on exit."""
    chain = LocalChain(directory)
    ticker = Ticker(chain, slot_s)
    server = uvicorn.Server(uvicorn.Config(create_app(chain), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="splitup-ledger-http", daemon=True)
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
