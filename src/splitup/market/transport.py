"""How the client reaches a Solana runtime: in-process LiteSVM, or any JSON-RPC endpoint.

The ``Market`` facade only needs the small ``Transport`` protocol below, so the same client code runs
against LiteSVM in tests, the embedded local validator, devnet or mainnet.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Protocol

from solders.account import Account
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from splitup.market.errors import error_from

#: The address the program is deployed at by default on local networks (its own keypair-free id).
DEFAULT_PROGRAM_ID = Pubkey.from_string("SpLitUpMarket111111111111111111111111111111")
SLOT_HASHES_KEPT = 512


def program_bytes() -> bytes:
    """The committed, reproducibly built program shipped inside the package."""
    return resources.files("splitup.market").joinpath("splitup_market.so").read_bytes()


@dataclass(frozen=True)
class AccountData:
    lamports: int
    data: bytes
    owner: Pubkey
    executable: bool = False


@dataclass
class TxResult:
    signature: str
    compute_units: int = 0
    logs: list[str] = field(default_factory=list)
    address: Pubkey | None = None  # the account an instruction created, when it created one


@dataclass(frozen=True)
class ChainTx:
    """A landed transaction as a history reader needs it: when, whether it failed, what it called, and
    how many lamports each account gained or lost."""

    signature: str
    slot: int
    block_time: int | None
    err: object | None
    calls: list[tuple[Pubkey, bytes, list[Pubkey]]]  # (program, instruction data, accounts) per instruction
    deltas: dict[Pubkey, int]
    fee: int = 0
    fee_payer: Pubkey | None = None


class Transport(Protocol):
    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        """Sign with ``signers`` (the first pays the fee), send, and wait until processed; raise MarketError."""
        ...

    def get_account(self, key: Pubkey) -> AccountData | None: ...

    def get_accounts(self, keys: Sequence[Pubkey]) -> list[AccountData | None]: ...

    def program_accounts(self, program_id: Pubkey) -> list[tuple[Pubkey, AccountData]]: ...

    def balance(self, key: Pubkey) -> int: ...

    def rent_exempt(self, space: int) -> int:
        """Lamports an account of ``space`` data bytes needs to be rent-exempt."""
        ...

    def slot(self) -> int: ...

    def airdrop(self, key: Pubkey, lamports: int) -> None: ...

    def advance(self, slots: int) -> None:
        """Let at least ``slots`` slots pass (instantly on LiteSVM, by waiting on a real cluster)."""
        ...

    def history(self, address: Pubkey, limit: int = 1000) -> list[ChainTx] | None:
        """The newest landed transactions that touched ``address`` (as far as the cluster keeps them);
        None where the runtime keeps no such index."""
        ...


def _from_solders(acc: Account | None) -> AccountData | None:
    if acc is None or (acc.lamports == 0 and not acc.data):
        return None
    return AccountData(acc.lamports, bytes(acc.data), acc.owner, acc.executable)


def next_slot_hash(previous: Hash, slot: int) -> Hash:
    """A stand-in for a bank hash. Fresh OS randomness goes into each one: a hash chained only from the
    previous one and the slot would let a node compute future slot hashes and grind its draw."""
    return Hash(hashlib.sha256(bytes(previous) + slot.to_bytes(8, "little") + os.urandom(32)).digest())


class LiteSvmTransport:
    """The real Solana runtime (SVM, loaders, System program) in-process, with the program deployed."""

    def __init__(self, program_id: Pubkey = DEFAULT_PROGRAM_ID, program: bytes | None = None,
                 svm: LiteSVM | None = None) -> None:
        self.svm = svm or LiteSVM()
        self.program_id = program_id
        if program is not None or svm is None:
            self.svm.add_program(program_id, program if program is not None else program_bytes())

    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        # a fresh blockhash per transaction, so that repeating an identical instruction is a new transaction
        self.svm.expire_blockhash()
        blockhash = self.svm.latest_blockhash()
        msg = Message.new_with_blockhash(list(instructions), signers[0].pubkey(), blockhash)
        tx = Transaction(unique_signers(signers), msg, blockhash)
        res = self.svm.send_transaction(tx)
        if not isinstance(res, TransactionMetadata):
            raise error_from(res.err(), list(res.meta().logs()))
        return TxResult(str(tx.signatures[0]), res.compute_units_consumed(), list(res.logs()))

    def latest_blockhash(self) -> Hash:
        self.svm.expire_blockhash()
        return self.svm.latest_blockhash()

    def send_signed(self, tx: Transaction) -> TxResult:
        """Send a transaction signed elsewhere (by several parties)."""
        res = self.svm.send_transaction(tx)
        if not isinstance(res, TransactionMetadata):
            raise error_from(res.err(), list(res.meta().logs()))
        return TxResult(str(tx.signatures[0]), res.compute_units_consumed(), list(res.logs()))

    def get_account(self, key: Pubkey) -> AccountData | None:
        return _from_solders(self.svm.get_account(key))

    def get_accounts(self, keys: Sequence[Pubkey]) -> list[AccountData | None]:
        return [self.get_account(k) for k in keys]

    def program_accounts(self, program_id: Pubkey) -> list[tuple[Pubkey, AccountData]]:
        out = []
        for key, acc in self.svm.get_program_accounts(program_id):
            data = _from_solders(acc)
            if data is not None:
                out.append((key, data))
        return out

    def balance(self, key: Pubkey) -> int:
        return self.svm.get_balance(key) or 0

    def rent_exempt(self, space: int) -> int:
        return int(self.svm.minimum_balance_for_rent_exemption(space))

    def slot(self) -> int:
        return int(self.svm.get_clock().slot)

    def airdrop(self, key: Pubkey, lamports: int) -> None:
        res = self.svm.airdrop(key, lamports)
        if not isinstance(res, TransactionMetadata):
            raise error_from(res.err())

    def history(self, address: Pubkey, limit: int = 1000) -> list[ChainTx] | None:
        return None  # LiteSVM keeps no index of transactions by account

    def advance(self, slots: int) -> None:
        """Move the clock ``slots`` forward and record a slot hash for each new slot, as a bank would."""
        start = self.slot()
        target = start + max(slots, 1)
        hashes = list(self.svm.get_slot_hashes())
        prev = hashes[0][1] if hashes else Hash.default()
        for s in range(max(start + 1, target - SLOT_HASHES_KEPT + 1), target + 1):
            prev = next_slot_hash(prev, s)
            hashes.insert(0, (s, prev))
        self.svm.set_slot_hashes(hashes[:SLOT_HASHES_KEPT])
        self.svm.warp_to_slot(target)


def unique_signers(signers: Sequence[Keypair]) -> list[Keypair]:
    """Signers once each, in order (the first pays): a transaction lists each signature once."""
    seen: set[Pubkey] = set()
    out = []
    for k in signers:
        if k.pubkey() not in seen:
            seen.add(k.pubkey())
            out.append(k)
    return out
