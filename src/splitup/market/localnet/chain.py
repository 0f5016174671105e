"""The local chain: LiteSVM (the real SVM, loaders and System program) with our program deployed, a
clock that produces slots, slot hashes and blockhashes, durable state and a bounded history.

Thread-safe: every public method takes the chain's lock, because the RPC server calls it from a
thread pool while the clock ticks in its own thread. Listeners (the websocket subscriptions) are
called under the lock, in the order things happened, and must only hand the event on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from solders.account import Account
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata
from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError

from splitup.market.localnet import DEFAULT_HISTORY_SLOTS
from splitup.market.localnet.fees import compute_budget
from splitup.market.localnet.store import Block, Clock, LedgerStore, TxRecord
from splitup.market.transport import (
    DEFAULT_PROGRAM_ID,
    SLOT_HASHES_KEPT,
    AccountData,
    next_slot_hash,
    program_bytes,
)

log = logging.getLogger("splitup.ledger")
UPGRADEABLE_LOADER = Pubkey.from_string("BPFLoaderUpgradeab1e11111111111111111111111")
PROGRAMDATA_HEADER = 45  # UpgradeableLoaderState::ProgramData: tag, slot, Option<authority>
RECENT_BLOCKHASHES = 150  # as on Solana: a transaction must use one of the last 150 blockhashes
MIN_HISTORY_SLOTS = 2 * RECENT_BLOCKHASHES  # duplicates are refused by signature within a blockhash's life
FAUCET_REFILL = 10_000 * 10**9  # lamports the faucet takes from the runtime's pool when it runs low
FAUCET_FEE_RESERVE = 10**9
NATIVE_OWNERS = {
    Pubkey.from_string("Sysvar1111111111111111111111111111111111111"),
    Pubkey.from_string("NativeLoader1111111111111111111111111111111"),
}
# Refusals before execution: nothing happened, so nothing is recorded (and no fee is charged).
NOT_EXECUTED = {"BlockhashNotFound", "AlreadyProcessed", "SignatureFailure", "AccountNotFound",
                "InsufficientFundsForFee", "SanitizeFailure", "MissingSignatureForFee"}


def _variant(obj: object) -> str:
    """'TransactionErrorFieldless.BlockhashNotFound' -> 'BlockhashNotFound'."""
    return str(obj).rsplit(".", 1)[-1]


def error_json(err: object) -> object:
    """A runtime error in the JSON shape Solana's RPC uses (what solders/solana-py parse back)."""
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        detail: object = {"Custom": inner.code} if isinstance(inner, InstructionErrorCustom) else _variant(inner)
        return {"InstructionError": [err.index, detail]}
    name = type(err).__name__
    if name.startswith("TransactionError") and name != "TransactionErrorFieldless" and hasattr(err, "to_json"):
        return {name.removeprefix("TransactionError"): json.loads(err.to_json())}  # errors with fields
    return _variant(err)


def _return_data(meta: TransactionMetadata) -> tuple[str, bytes] | None:
    rd = meta.return_data()
    data = bytes(rd.data)
    return (str(rd.program_id), data) if data else None


@dataclass
class TxOutcome:
    signature: str
    err: object | None  # JSON-shaped error, None on success
    logs: list[str]
    units: int
    fee: int = 0
    return_data: tuple[str, bytes] | None = None
    accounts: dict[Pubkey, AccountData | None] = field(default_factory=dict)  # simulation: state after


class ChainListener:
    """What the websocket subscriptions hear about: every executed transaction and every new slot."""

    def on_transaction(self, record: TxRecord, accounts: dict[Pubkey, AccountData | None]) -> None: ...

    def on_slot(self, slot: int, parent: int) -> None: ...


class LocalChain:
    def __init__(self, directory: Path, program_id: Pubkey = DEFAULT_PROGRAM_ID, program: bytes | None = None,
                 history_slots: int = DEFAULT_HISTORY_SLOTS) -> None:
        if history_slots < MIN_HISTORY_SLOTS:
            raise ValueError(f"history_slots must be at least {MIN_HISTORY_SLOTS} (two blockhash lifetimes), "
                             f"got {history_slots}")
        self.lock = threading.RLock()
        self.program_id = program_id
        self.history_slots = history_slots
        self.store = LedgerStore(directory / "ledger.sqlite3")
        # Blockhashes are ours (random, persisted), not LiteSVM's deterministic chain, which restarts from
        # genesis with every process and would make old transactions valid again after a restart.
        self.svm = LiteSVM().with_sigverify(True).with_blockhash_check(False).with_transaction_history(0)
        self.svm.add_program(program_id, program if program is not None else program_bytes())
        programdata = Pubkey.find_program_address([bytes(program_id)], UPGRADEABLE_LOADER)[0]
        self.builtin = {program_id, programdata}
        self.recent: deque[tuple[Hash, int]] = deque(maxlen=RECENT_BLOCKHASHES)
        self.listeners: list[ChainListener] = []
        self.block_time = int(time.time())
        self.genesis_hash, self.identity, self.faucet = self._genesis()
        self._restore()

    def _genesis(self) -> tuple[str, Pubkey, Keypair]:
        genesis, identity = self.store.get_meta("genesis_hash"), self.store.get_meta("identity")
        faucet = self.store.get_meta("faucet")
        if genesis is None or identity is None or faucet is None:
            genesis = str(Hash(hashlib.sha256(b"splitup-localnet" + os.urandom(32)).digest()))
            identity = str(Keypair().pubkey())
            faucet = str(Keypair())
            self.store.put_meta("genesis_hash", genesis)
            self.store.put_meta("identity", identity)
            self.store.put_meta("faucet", faucet)
        return genesis, Pubkey.from_string(identity), Keypair.from_base58_string(faucet)

    def _restore(self) -> None:
        stored = dict(self.store.accounts())
        for key, acc in stored.items():
            if not acc.executable:
                self.svm.set_account(key, Account(acc.lamports, acc.data, acc.owner, False))
        # Programs deployed through the upgradeable loader: setting their accounts is not enough, the
        # runtime's program cache must load the ELF kept in their ProgramData account (after 45 bytes).
        for key, acc in stored.items():
            if acc.executable and acc.owner == UPGRADEABLE_LOADER and len(acc.data) == 36 and acc.data[0] == 2:
                data_key = Pubkey.from_bytes(acc.data[4:36])
                programdata = stored.get(data_key)
                if programdata is None:
                    continue
                self.svm.add_program_with_loader(key, programdata.data[PROGRAMDATA_HEADER:], UPGRADEABLE_LOADER)
                self.svm.set_account(key, Account(acc.lamports, acc.data, acc.owner, True))
                self.svm.set_account(data_key, Account(programdata.lamports, programdata.data, programdata.owner,
                                                       False))
        clock = self.store.clock()
        if clock is not None:
            if clock.slot_hashes:
                self.svm.set_slot_hashes(clock.slot_hashes)
            self.svm.warp_to_slot(clock.slot)
            self.recent.extend(clock.blockhashes)
        if not self.recent:
            # A new ledger: its first slot is a block too (transactions can land in it before any tick).
            slot = self.slot()
            genesis_block = self._new_blockhash(Hash.default(), slot)
            self.recent.append((genesis_block, slot))
            self.store.save_slot(self._clock(), Block(slot, str(genesis_block), max(slot - 1, 0), str(Hash.default()),
                                                      self.block_time), self.history_slots)

    def add_listener(self, listener: ChainListener) -> None:
        with self.lock:
            self.listeners.append(listener)

    def close(self) -> None:
        with self.lock:
            self.store.close()

    # ---------------------------------------------------------------- clock
    def slot(self) -> int:
        with self.lock:
            return int(self.svm.get_clock().slot)

    @staticmethod
    def _new_blockhash(previous: Hash, slot: int) -> Hash:
        return Hash(hashlib.sha256(bytes(previous) + slot.to_bytes(8, "little") + os.urandom(32)).digest())

    def _clock(self) -> Clock:
        return Clock(int(self.svm.get_clock().slot), list(self.svm.get_slot_hashes()), list(self.recent))

    def tick(self) -> int:
        """Produce the next slot: its slot hash, a fresh blockhash, the clock moved on, all durable."""
        with self.lock:
            parent = int(self.svm.get_clock().slot)
            slot = parent + 1
            hashes = list(self.svm.get_slot_hashes())
            prev = hashes[0][1] if hashes else Hash.default()
            hashes.insert(0, (slot, next_slot_hash(prev, slot)))
            self.svm.set_slot_hashes(hashes[:SLOT_HASHES_KEPT])
            self.svm.warp_to_slot(slot)
            previous_blockhash = self.recent[-1][0]
            blockhash = self._new_blockhash(previous_blockhash, slot)
            self.recent.append((blockhash, slot))
            self.block_time = int(time.time())
            self.store.save_slot(self._clock(), Block(slot, str(blockhash), parent, str(previous_blockhash),
                                                      self.block_time), self.history_slots)
            self._tell(lambda listener: listener.on_slot(slot, parent))
            return slot

    def latest_blockhash(self) -> tuple[Hash, int]:
        """The newest blockhash and the last block height (slot) at which it is still valid."""
        with self.lock:
            h, made = self.recent[-1]
            return h, made + RECENT_BLOCKHASHES

    def blockhash_valid(self, blockhash: Hash) -> bool:
        with self.lock:
            return any(h == blockhash for h, _ in self.recent)

    # ---------------------------------------------------------------- state
    def account(self, key: Pubkey) -> AccountData | None:
        with self.lock:
            return self._account(key)

    def _account(self, key: Pubkey) -> AccountData | None:
        acc = self.svm.get_account(key)
        if acc is None or (acc.lamports == 0 and not acc.data and not acc.executable):
            return None
        return AccountData(acc.lamports, bytes(acc.data), acc.owner, acc.executable)

    def program_accounts(self, owner: Pubkey) -> list[tuple[Pubkey, AccountData]]:
        with self.lock:
            pairs = self.svm.get_program_accounts(owner)
        return [(k, AccountData(a.lamports, bytes(a.data), a.owner, a.executable)) for k, a in pairs if a.lamports]

    def rent(self, size: int) -> int:
        with self.lock:
            return int(self.svm.minimum_balance_for_rent_exemption(size))

    def signature_status(self, sig: str) -> tuple[int, object | None] | None:
        with self.lock:
            row = self.store.signature(sig)
        if row is None:
            return None
        return row[0], (json.loads(row[1]) if row[1] is not None else None)

    # ---------------------------------------------------------------- transactions
    def _persist(self, keys: list[Pubkey], signature: str, err: object | None,
                 record: TxRecord | None = None) -> dict[Pubkey, AccountData | None]:
        touched: dict[Pubkey, AccountData | None] = {}
        for key in dict.fromkeys(keys):
            acc = self.svm.get_account(key)
            if key in self.builtin or (acc is not None and acc.owner in NATIVE_OWNERS):
                continue  # the market program and sysvars are rebuilt at start, not restored
            gone = acc is None or (acc.lamports == 0 and not acc.data)
            touched[key] = None if gone else AccountData(acc.lamports, bytes(acc.data), acc.owner, acc.executable)
        self.store.commit(touched.items(), self._clock(), (signature, None if err is None else json.dumps(err)),
                          record, keys)
        return touched

    def _refusal(self, tx: VersionedTransaction, check_blockhash: bool) -> str | None:
        sig = str(tx.signatures[0])
        if check_blockhash and not any(h == tx.message.recent_blockhash for h, _ in self.recent):
            return "BlockhashNotFound"
        if self.store.signature(sig) is not None:
            return "AlreadyProcessed"
        return None

    def simulate(self, tx: VersionedTransaction, *, sig_verify: bool = True,
                 check_blockhash: bool = True) -> TxOutcome:
        """Run the transaction against the current state without changing it; ``err`` None on success."""
        with self.lock:
            sig = str(tx.signatures[0])
            refused = self._refusal(tx, check_blockhash)
            if refused is not None:
                return TxOutcome(sig, refused, [], 0)
            self.svm.with_sigverify(sig_verify)
            try:
                res = self.svm.simulate_transaction(tx)
            finally:
                self.svm.with_sigverify(True)
            if isinstance(res, FailedTransactionMetadata):
                meta = res.meta()
                return TxOutcome(sig, error_json(res.err()), list(meta.logs()), int(meta.compute_units_consumed()),
                                 int(meta.fee()), _return_data(meta))
            meta = res.meta()
            after = {k: (None if a.lamports == 0 and not a.data
                         else AccountData(a.lamports, bytes(a.data), a.owner, a.executable))
                     for k, a in res.post_accounts()}
            return TxOutcome(sig, None, list(meta.logs()), int(meta.compute_units_consumed()), int(meta.fee()),
                             _return_data(meta), after)

    def send(self, tx: VersionedTransaction) -> TxOutcome:
        """Execute and durably record the transaction (failed ones too: they pay their fee)."""
        with self.lock:
            sig = str(tx.signatures[0])
            refused = self._refusal(tx, True)
            if refused is not None:
                return TxOutcome(sig, refused, [], 0)
            keys = list(tx.message.account_keys)
            pre = [self.svm.get_balance(k) or 0 for k in keys]
            res = self.svm.send_transaction(tx)
            if isinstance(res, TransactionMetadata):
                meta, err = res, None
            else:
                err = error_json(res.err())
                if isinstance(err, str) and err in NOT_EXECUTED:
                    return TxOutcome(sig, err, [], 0)
                meta = res.meta()
            out = TxOutcome(sig, err, list(meta.logs()), int(meta.compute_units_consumed()), int(meta.fee()),
                            _return_data(meta))
            post = [self.svm.get_balance(k) or 0 for k in keys]
            record = TxRecord(sig, int(self.svm.get_clock().slot), self.block_time, bytes(tx), {
                "err": err, "status": {"Ok": None} if err is None else {"Err": err}, "fee": out.fee,
                "preBalances": pre, "postBalances": post, "innerInstructions": [], "logMessages": out.logs,
                "preTokenBalances": [], "postTokenBalances": [], "rewards": [],
                "loadedAddresses": {"writable": [], "readonly": []}, "computeUnitsConsumed": out.units,
                "returnData": None if out.return_data is None else {
                    "programId": out.return_data[0], "data": [base64.b64encode(out.return_data[1]).decode(), "base64"]},
            }, compute_budget(tx.message)[1])
            touched = self._persist(keys, sig, err, record)
            self._tell(lambda listener: listener.on_transaction(record, touched))
            return out

    def _tell(self, event: Callable[[ChainListener], None]) -> None:
        """Tell every listener; one that fails is logged and is not the transaction's or the slot's failure:
        the ledger has changed already, and a sender told its landed transfer failed would send it again."""
        for listener in self.listeners:
            try:
                event(listener)
            except Exception:
                log.exception("a chain listener failed on an event (the event itself stands)")

    def airdrop(self, key: Pubkey, lamports: int) -> str:
        """A transfer from the network's faucet, executed and recorded like any transaction."""
        with self.lock:
            if (self.svm.get_balance(self.faucet.pubkey()) or 0) < lamports + FAUCET_FEE_RESERVE:
                res = self.svm.airdrop(self.faucet.pubkey(), lamports + FAUCET_REFILL)
                if not isinstance(res, TransactionMetadata):
                    raise ValueError(f"airdrop failed: {error_json(res.err())}")
            blockhash = self.recent[-1][0]
            ix = transfer(TransferParams(from_pubkey=self.faucet.pubkey(), to_pubkey=key, lamports=lamports))
            tx = VersionedTransaction.from_legacy(
                Transaction([self.faucet], Message.new_with_blockhash([ix], self.faucet.pubkey(), blockhash), blockhash))
            out = self.send(tx)
            if out.err is not None:
                raise ValueError(f"airdrop failed: {out.err}")
            return out.signature

    def history(self) -> LedgerStore:
        """The durable store, for the history queries of the RPC server (use under ``lock``)."""
        return self.store
