"""The embedded default network: a local Solana-compatible validator (LiteSVM + a JSON-RPC subset +
accounts persisted to SQLite after every transaction).

Only constants live here, so that importing them does not pull in FastAPI/uvicorn.
"""

from pathlib import Path

DEFAULT_DIR = Path(".splitup/ledger")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8899  # the port solana-test-validator uses, so Solana tools find it too
DEFAULT_SLOT_S = 0.4  # Solana's target slot time
DEFAULT_RPC_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
