"""Reaching the chain from several threads: one locked transport per party, wallets from anything."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market.market import Market
from splitup.market.transport import DEFAULT_PROGRAM_ID, AccountData, ChainTx, Transport, TxResult
from splitup.market.wallet import load_keypair

T = TypeVar("T")

WalletLike = Keypair | Path | str


class LockedTransport:
    """Serialises every call: ``RpcTransport`` drives one private event loop, which one thread may run at a time."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self._lock = threading.RLock()

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        return self._locked(self.inner.send, instructions, signers)

    def get_account(self, key: Pubkey) -> AccountData | None:
        return self._locked(self.inner.get_account, key)

    def get_accounts(self, keys: Sequence[Pubkey]) -> list[AccountData | None]:
        return self._locked(self.inner.get_accounts, keys)

    def program_accounts(self, program_id: Pubkey) -> list[tuple[Pubkey, AccountData]]:
        return self._locked(self.inner.program_accounts, program_id)

    def balance(self, key: Pubkey) -> int:
        return self._locked(self.inner.balance, key)

    def rent_exempt(self, space: int) -> int:
        return self._locked(self.inner.rent_exempt, space)

    def slot(self) -> int:
        return self._locked(self.inner.slot)

    def airdrop(self, key: Pubkey, lamports: int) -> None:
        self._locked(self.inner.airdrop, key, lamports)

    def advance(self, slots: int) -> None:
        self._locked(self.inner.advance, slots)

    def history(self, address: Pubkey, limit: int = 1000) -> list[ChainTx] | None:
        return self._locked(self.inner.history, address, limit)


def as_keypair(wallet: WalletLike) -> Keypair:
    """A keypair, or the path of a Solana CLI keypair file."""
    return wallet if isinstance(wallet, Keypair) else load_keypair(Path(wallet).expanduser())


def connect(rpc_url: str, payer: Keypair, program_id: Pubkey = DEFAULT_PROGRAM_ID, *,
            timeout: float = 30.0, poll_s: float = 0.05) -> Market:
    """A ``Market`` over JSON-RPC whose transport may be shared between threads."""
    from splitup.market.rpc import RpcTransport  # solana-py: only when a party really talks to a network

    return Market(LockedTransport(RpcTransport(rpc_url, timeout=timeout, poll_s=poll_s)), program_id, payer)
