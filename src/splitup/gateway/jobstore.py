"""The gateway's jobs on disk (SQLite): closed jobs vanish from the chain and a gateway may be killed at
any moment, so every job it posted is written down before the client hears of it, with its state and,
once closed, its final report. A restarted gateway reads them back and winds up the ones it left."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = "CREATE TABLE IF NOT EXISTS jobs (address TEXT PRIMARY KEY, created REAL NOT NULL, body TEXT NOT NULL)"


class JobStore:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a job the chain escrowed must survive a SIGKILL
        self.db.execute(SCHEMA)
        self._lock = threading.Lock()

    def put(self, address: str, created: float, body: dict[str, Any]) -> None:
        text = json.dumps(body, separators=(",", ":"))
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", (address, created, text))

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT body FROM jobs ORDER BY created").fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()
