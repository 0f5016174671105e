"""The local chain: LiteSVM (the real SVM, loaders and System program) with our program deployed, a
clock that produces slots, slot hashes and blockhashes, and durable state.

Thread-safe: every public method takes the chain's lock, because the RPC server calls it from a
thread pool while the clock ticks in its own thread.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from solders.account import Account
from solders.hash import Hash
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata
from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError

from splitup.market.localnet.store import LedgerStore
from splitup.market.transport import (
    DEFAULT_PROGRAM_ID,
    SLOT_HASHES_KEPT,
    AccountData,
    next_slot_hash,
    program_bytes,
)

UPGRADEABLE_LOADER = Pubkey.from_string("BPFLoaderUpgradeab1e11111111111111111111111")
PROGRAMDATA_HEADER = 45  # UpgradeableLoaderState::ProgramData: tag, slot, Option<authority>
RECENT_BLOCKHASHES = 150  # as on Solana: a transaction must use one of the last 150 blockhashes
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
    return _variant(err)


@dataclass
class TxOutcome:
    signature: str
    err: object | None  # JSON-shaped error, None on success
    logs: list[str]
    units: int


class LocalChain:
    def __init__(self, directory: Path, program_id: Pubkey = DEFAULT_PROGRAM_ID, program: bytes | None = None) -> None:
        self.lock = threading.RLock()
        self.program_id = program_id
        self.store = LedgerStore(directory / "ledger.sqlite3")
        self.svm = LiteSVM().with_sigverify(True).with_blockhash_check(False).with_transaction_history(100_000)
        self.svm.add_program(program_id, program if program is not None else program_bytes())
        programdata = Pubkey.find_program_address([bytes(program_id)], UPGRADEABLE_LOADER)[0]
        self.builtin = {program_id, programdata}
        self.recent: deque[Hash] = deque(maxlen=RECENT_BLOCKHASHES)
        self._restore()
        self.recent.append(self.svm.latest_blockhash())

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
            slot, hashes = clock
            if hashes:
                self.svm.set_slot_hashes(hashes)
            self.svm.warp_to_slot(slot)

    def close(self) -> None:
        with self.lock:
            self.store.close()

    # ---------------------------------------------------------------- clock
    def slot(self) -> int:
        with self.lock:
            return int(self.svm.get_clock().slot)

    def tick(self, persist: bool = True) -> int:
        """Produce the next slot: its slot hash, a fresh blockhash, the clock moved on."""
        with self.lock:
            slot = int(self.svm.get_clock().slot) + 1
            hashes = list(self.svm.get_slot_hashes())
            prev = hashes[0][1] if hashes else Hash.default()
            hashes.insert(0, (slot, next_slot_hash(prev, slot)))
            hashes = hashes[:SLOT_HASHES_KEPT]
            self.svm.set_slot_hashes(hashes)
            self.svm.warp_to_slot(slot)
            self.svm.expire_blockhash()
            self.recent.append(self.svm.latest_blockhash())
            if persist:
                self.store.save_clock(slot, hashes)
            return slot

    def latest_blockhash(self) -> Hash:
        with self.lock:
            return self.recent[-1]

    # ---------------------------------------------------------------- state
    def account(self, key: Pubkey) -> AccountData | None:
        with self.lock:
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
    def _persist(self, keys: list[Pubkey], signature: str, err: object | None) -> None:
        touched: list[tuple[Pubkey, AccountData | None]] = []
        for key in dict.fromkeys(keys):
            acc = self.svm.get_account(key)
            if key in self.builtin or (acc is not None and acc.owner in NATIVE_OWNERS):
                continue  # the market program and sysvars are rebuilt at start, not restored
            gone = acc is None or (acc.lamports == 0 and not acc.data)
            touched.append((key, None if gone else AccountData(acc.lamports, bytes(acc.data), acc.owner,
                                                               acc.executable)))
        hashes = list(self.svm.get_slot_hashes())
        self.store.commit(touched, int(self.svm.get_clock().slot), hashes,
                          (signature, None if err is None else json.dumps(err)))

    def simulate(self, tx: VersionedTransaction) -> TxOutcome | None:
        """Preflight: the outcome if the transaction would fail, else None. Changes nothing."""
        with self.lock:
            if tx.message.recent_blockhash not in self.recent:
                return TxOutcome(str(tx.signatures[0]), "BlockhashNotFound", [], 0)
            res = self.svm.simulate_transaction(tx)
            if not isinstance(res, FailedTransactionMetadata):
                return None
            meta = res.meta()
            return TxOutcome(str(tx.signatures[0]), error_json(res.err()), list(meta.logs()),
                             int(meta.compute_units_consumed()))

    def send(self, tx: VersionedTransaction) -> TxOutcome:
        """Execute and durably record the transaction (failed ones too: they pay their fee)."""
        with self.lock:
            sig = str(tx.signatures[0])
            if tx.message.recent_blockhash not in self.recent:
                return TxOutcome(sig, "BlockhashNotFound", [], 0)
            res = self.svm.send_transaction(tx)
            if isinstance(res, TransactionMetadata):
                out = TxOutcome(sig, None, list(res.logs()), int(res.compute_units_consumed()))
            else:
                err = error_json(res.err())
                if isinstance(err, str) and err in NOT_EXECUTED:
                    return TxOutcome(sig, err, [], 0)
                meta = res.meta()
                out = TxOutcome(sig, err, list(meta.logs()), int(meta.compute_units_consumed()))
            self._persist(list(tx.message.account_keys), sig, out.err)
            return out

    def airdrop(self, key: Pubkey, lamports: int) -> str:
        with self.lock:
            res = self.svm.airdrop(key, lamports)
            if not isinstance(res, TransactionMetadata):
                raise ValueError(f"airdrop failed: {error_json(res.err())}")
            sig = str(res.signature())
            self._persist([key], sig, None)
            return sig
