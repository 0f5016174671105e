"""Durable state of the local network in SQLite: accounts, the clock, recent blockhashes and a bounded
history of transactions and blocks.

Each transaction's writes (its accounts, its status and its history record) are committed in one
SQLite transaction (WAL, synchronous=FULL) before the RPC call that caused them returns, and every
slot's clock and blockhashes are committed as the slot is produced, so a validator killed with SIGKILL
restarts at the slot it had reached, with everything it ever confirmed and every blockhash it handed
out still valid for its 150-slot window.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
CREATE TABLE IF NOT EXISTS transactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, signature TEXT UNIQUE NOT NULL, slot INTEGER NOT NULL,
    block_time INTEGER NOT NULL, tx BLOB NOT NULL, meta TEXT NOT NULL, priority_fee INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS transactions_slot ON transactions (slot);
CREATE TABLE IF NOT EXISTS address_signatures (
    address TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (address, seq));
CREATE TABLE IF NOT EXISTS blocks (
    slot INTEGER PRIMARY KEY, blockhash TEXT NOT NULL, parent_slot INTEGER NOT NULL,
    previous_blockhash TEXT NOT NULL, block_time INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class TxRecord:
    """One executed transaction as the history keeps it: its wire bytes and its status meta (RPC JSON)."""

    signature: str
    slot: int
    block_time: int
    tx: bytes
    meta: dict[str, object]
    priority_fee: int  # micro-lamports per compute unit the transaction offered
    seq: int = 0


@dataclass(frozen=True)
class Block:
    slot: int
    blockhash: str
    parent_slot: int
    previous_blockhash: str
    block_time: int


@dataclass(frozen=True)
class Clock:
    slot: int
    slot_hashes: list[tuple[int, Hash]]
    blockhashes: list[tuple[Hash, int]]  # recent blockhashes, oldest first, with the slot that made each


class LedgerStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def commit(self, accounts: Iterable[tuple[Pubkey, AccountData | None]], clock: Clock,
               signature: tuple[str, str | None] | None = None, record: TxRecord | None = None,
               addresses: Iterable[Pubkey] = ()) -> None:
        """Write the accounts a transaction touched (None: deleted), the clock, its status and history, atomically."""
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
                cur.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?, ?)",
                            (signature[0], clock.slot, signature[1]))
            if record is not None:
                cur.execute("INSERT INTO transactions (signature, slot, block_time, tx, meta, priority_fee) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (record.signature, record.slot, record.block_time, record.tx,
                             json.dumps(record.meta), record.priority_fee))
                seq = cur.lastrowid
                cur.executemany("INSERT OR IGNORE INTO address_signatures VALUES (?, ?)",
                                [(str(a), seq) for a in dict.fromkeys(addresses)])
                cur.execute("INSERT INTO meta VALUES ('transaction_count', '1') ON CONFLICT (key) "
                            "DO UPDATE SET value = CAST(value AS INTEGER) + 1")
            self._put_clock(cur, clock)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def save_slot(self, clock: Clock, block: Block, keep_slots: int) -> None:
        """Record a produced slot (clock, blockhashes, its block) and drop history older than ``keep_slots``."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            self._put_clock(cur, clock)
            cur.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)",
                        (block.slot, block.blockhash, block.parent_slot, block.previous_blockhash, block.block_time))
            horizon = clock.slot - keep_slots
            if horizon > 0 and clock.slot % 64 == 0:  # pruning in batches keeps each slot's write small
                cur.execute("DELETE FROM address_signatures WHERE seq IN "
                            "(SELECT seq FROM transactions WHERE slot < ?)", (horizon,))
                cur.execute("DELETE FROM transactions WHERE slot < ?", (horizon,))
                cur.execute("DELETE FROM blocks WHERE slot < ?", (horizon,))
                cur.execute("DELETE FROM signatures WHERE slot < ?", (horizon,))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    @staticmethod
    def _put_clock(cur: sqlite3.Cursor, clock: Clock) -> None:
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('slot', ?)", (str(clock.slot),))
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('slot_hashes', ?)",
                    (json.dumps([[s, str(h)] for s, h in clock.slot_hashes]),))
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('blockhashes', ?)",
                    (json.dumps([[str(h), s] for h, s in clock.blockhashes]),))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def accounts(self) -> Iterator[tuple[Pubkey, AccountData]]:
        for key, lamports, data, owner, executable in self.db.execute(
                "SELECT pubkey, lamports, data, owner, executable FROM accounts"):
            yield Pubkey.from_string(key), AccountData(int(lamports), bytes(data), Pubkey.from_string(owner),
                                                       bool(executable))

    def clock(self) -> Clock | None:
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if "slot" not in rows:
            return None
        hashes = [(int(s), Hash.from_string(h)) for s, h in json.loads(rows.get("slot_hashes", "[]"))]
        blockhashes = [(Hash.from_string(h), int(s)) for h, s in json.loads(rows.get("blockhashes", "[]"))]
        return Clock(int(rows["slot"]), hashes, blockhashes)

    def signature(self, sig: str) -> tuple[int, str | None] | None:
        row = self.db.execute("SELECT slot, err FROM signatures WHERE signature = ?", (sig,)).fetchone()
        return None if row is None else (int(row[0]), row[1])

    # ---------------------------------------------------------------- history
    @staticmethod
    def _record(row: tuple) -> TxRecord:
        seq, sig, slot, block_time, tx, meta, fee = row
        return TxRecord(sig, int(slot), int(block_time), bytes(tx), json.loads(meta), int(fee), int(seq))

    _TX_COLUMNS = "seq, signature, slot, block_time, tx, meta, priority_fee"

    def transaction(self, sig: str) -> TxRecord | None:
        row = self.db.execute(f"SELECT {self._TX_COLUMNS} FROM transactions WHERE signature = ?", (sig,)).fetchone()
        return None if row is None else self._record(row)

    def transactions_in(self, slot: int) -> list[TxRecord]:
        rows = self.db.execute(f"SELECT {self._TX_COLUMNS} FROM transactions WHERE slot = ? ORDER BY seq", (slot,))
        return [self._record(r) for r in rows]

    def transactions_since(self, first_slot: int) -> list[TxRecord]:
        rows = self.db.execute(f"SELECT {self._TX_COLUMNS} FROM transactions WHERE slot >= ? ORDER BY seq",
                               (first_slot,))
        return [self._record(r) for r in rows]

    def signatures_for(self, address: str, limit: int, before_seq: int | None,
                       until_seq: int | None) -> list[TxRecord]:
        """Newest first, strictly older than ``before_seq`` and strictly newer than ``until_seq``."""
        rows = self.db.execute(
            f"SELECT {', '.join('t.' + c for c in self._TX_COLUMNS.split(', '))} FROM address_signatures a "
            "JOIN transactions t ON t.seq = a.seq WHERE a.address = ? AND a.seq < ? AND a.seq > ? "
            "ORDER BY a.seq DESC LIMIT ?",
            (address, before_seq if before_seq is not None else 2**62, until_seq or 0, limit))
        return [self._record(r) for r in rows]

    def block(self, slot: int) -> Block | None:
        row = self.db.execute("SELECT slot, blockhash, parent_slot, previous_blockhash, block_time FROM blocks "
                              "WHERE slot = ?", (slot,)).fetchone()
        return None if row is None else Block(int(row[0]), row[1], int(row[2]), row[3], int(row[4]))

    def first_block(self) -> int | None:
        row = self.db.execute("SELECT MIN(slot) FROM blocks").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def transaction_count(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'transaction_count'").fetchone()
        return 0 if row is None else int(row[0])
