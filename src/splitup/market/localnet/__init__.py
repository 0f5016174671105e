"""The embedded default network: a local Solana-compatible validator (LiteSVM + Solana's JSON-RPC and
PubSub APIs + state persisted to SQLite after every transaction and slot).

Only constants live here, so that importing them does not pull in FastAPI/uvicorn.
"""

from pathlib import Path

DEFAULT_DIR = Path(".splitup/ledger")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8899  # the port solana-test-validator uses, so Solana tools find it too
DEFAULT_SLOT_S = 0.4  # Solana's target slot time
DEFAULT_RPC_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_HISTORY_SLOTS = 20_000  # transactions and blocks kept for getTransaction/getBlock (~2 h at 0.4 s)
