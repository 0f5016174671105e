"""Durable account state of the local network in SQLite.

Each transaction's writes are committed (WAL, synchronous=FULL) before the RPC call that caused them
returns, so a validator killed with SIGKILL restarts with everything it ever confirmed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from solders.hash import Hash
from solders.pubkey import Pubkey

from splitup.market.transport import AccountData

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    pubkey TEXT PRIMARY KEY, lamports TEXT NOT NULL, data BLOB NOT NULL, owner TEXT NOT NULL,
    executable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS signatures (signature TEXT PRIMARY KEY, slot INTEGER NOT NULL, err TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LedgerStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def commit(self, accounts: Iterable[tuple[Pubkey, AccountData | None]], slot: int,
               slot_hashes: list[tuple[int, Hash]], signature: tuple[str, str | None] | None = None) -> None:
        """Write the accounts a transaction touched (None: deleted), the clock and its status, atomically."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for key, acc in accounts:
                if acc is None:
                    cur.execute("DELETE FROM accounts WHERE pubkey = ?", (str(key),))
                else:
                    cur.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?)",
                                (str(key), str(acc.lamports), acc.data, str(acc.owner), int(acc.executable)))
            if signature is not None:
                cur.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?, ?)", (signature[0], slot, signature[1]))
            self._put_clock(cur, slot, slot_hashes)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def save_clock(self, slot: int, slot_hashes: list[tuple[int, Hash]]) -> None:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        self._put_clock(cur, slot, slot_hashes)
        cur.execute("COMMIT")

    @staticmethod
    def _put_clock(cur: sqlite3.Cursor, slot: int, slot_hashes: list[tuple[int, Hash]]) -> None:
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('slot', ?)", (str(slot),))
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('slot_hashes', ?)",
                    (json.dumps([[s, str(h)] for s, h in slot_hashes]),))

    def accounts(self) -> Iterator[tuple[Pubkey, AccountData]]:
        for key, lamports, data, owner, executable in self.db.execute("SELECT * FROM accounts"):
            yield Pubkey.from_string(key), AccountData(int(lamports), bytes(data), Pubkey.from_string(owner),
                                                       bool(executable))

    def clock(self) -> tuple[int, list[tuple[int, Hash]]] | None:
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if "slot" not in rows:
            return None
        hashes = [(int(s), Hash.from_string(h)) for s, h in json.loads(rows.get("slot_hashes", "[]"))]
        return int(rows["slot"]), hashes

    def signature(self, sig: str) -> tuple[int, str | None] | None:
        row = self.db.execute("SELECT slot, err FROM signatures WHERE signature = ?", (sig,)).fetchone()
        return None if row is None else (int(row[0]), row[1])
