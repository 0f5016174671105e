"""JSON-RPC transport through ``solana-py``: the same client code against the embedded local network,
devnet or mainnet (``--rpc-url``).

solana-py's client is asynchronous; the facade is synchronous, so this transport owns a private event
loop and runs each call to completion on it. Use one transport per thread.

A sent transaction is confirmed through the cluster's PubSub websocket (``signatureSubscribe`` on the
port clients derive: RPC port + 1, or ``ws_url``), which answers the moment the transaction lands;
where no websocket answers, the transport falls back to polling ``getSignatureStatuses``.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solana.rpc.websocket_api import SolanaWsClient
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.rpc.responses import SignatureNotification
from solders.signature import Signature
from solders.transaction import Transaction

from splitup.market.errors import MarketError, TransactionFailed, error_from
from splitup.market.localnet import DEFAULT_RPC_URL
from splitup.market.transport import AccountData, ChainTx, TxResult, unique_signers

T = TypeVar("T")


def _logs_of(exc: RPCException) -> list[str]:
    data = getattr(exc.args[0], "data", None) if exc.args else None
    logs = getattr(data, "logs", None)
    return list(logs) if logs else []


def ws_url_for(http_url: str) -> str:
    """The PubSub URL Solana clients derive from an RPC URL: ws(s) scheme, and port + 1 where one is given."""
    u = urllib.parse.urlsplit(http_url)
    host = f"[{u.hostname}]" if u.hostname and ":" in u.hostname else (u.hostname or "")
    netloc = f"{host}:{u.port + 1}" if u.port else host
    return urllib.parse.urlunsplit(("wss" if u.scheme == "https" else "ws", netloc, u.path, u.query, ""))


class RpcTransport:
    def __init__(self, url: str = DEFAULT_RPC_URL, timeout: float = 30.0, poll_s: float = 0.2,
                 skip_preflight: bool = False, ws_url: str | None = None) -> None:
        """``skip_preflight`` sends failing transactions anyway: they land (paying their fee) with logs."""
        self.url = url
        self.ws_url = ws_url or ws_url_for(url)
        self._ws_unavailable = False
        self.confirmed_by_subscription = 0
        self.skip_preflight = skip_preflight
        self.poll_s = poll_s
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        # plain HTTP/1.1: what every Solana RPC endpoint (and our local one) speaks
        self.client = AsyncClient(url, commitment=Confirmed, timeout=timeout, http2=False)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop.run_until_complete(coro)
        except RPCException as exc:
            raise error_from(exc, _logs_of(exc)) from exc
        except MarketError:
            raise
        except Exception as exc:  # transport failures: connection refused, timeouts, bad responses
            raise TransactionFailed(f"RPC {self.url}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.close()

    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        blockhash = self._run(self.client.get_latest_blockhash()).value.blockhash
        msg = Message.new_with_blockhash(list(instructions), signers[0].pubkey(), blockhash)
        tx = Transaction(unique_signers(signers), msg, blockhash)
        sig = self._run(self.client.send_raw_transaction(bytes(tx), TxOpts(preflight_commitment=Confirmed, skip_preflight=self.skip_preflight))).value
        self._confirm(sig)
        return TxResult(str(sig))

    def latest_blockhash(self) -> Any:
        return self._run(self.client.get_latest_blockhash()).value.blockhash

    def send_signed(self, tx: Transaction) -> TxResult:
        """Send a transaction signed elsewhere (by several parties) and wait until processed."""
        opts = TxOpts(preflight_commitment=Confirmed, skip_preflight=self.skip_preflight)
        sig = self._run(self.client.send_raw_transaction(bytes(tx), opts)).value
        self._confirm(sig)
        return TxResult(str(sig))

    def _confirm(self, sig: Signature) -> None:
        if not self._ws_unavailable:
            try:
                self._loop.run_until_complete(self._confirm_by_subscription(sig))
                return
            except MarketError:
                raise
            except Exception:  # no PubSub endpoint, or it went away: ask by polling from now on
                self._ws_unavailable = True
        self._confirm_by_polling(sig)

    async def _confirm_by_subscription(self, sig: Signature) -> None:
        # A connection per confirmation (a loopback handshake costs about a millisecond): none is left
        # open for the interpreter to find pending when a process ends without closing its transports.
        async with SolanaWsClient(self.ws_url, request_timeout=self.timeout, open_timeout=5) as ws:
            sub = await ws.signature_subscribe(signature=sig, commitment=Confirmed)
            deadline = time.monotonic() + self.timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransactionFailed(f"transaction {sig} not confirmed within {self.timeout} s")
                try:
                    note = await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError as exc:
                    raise TransactionFailed(f"transaction {sig} not confirmed within {self.timeout} s") from exc
                if isinstance(note, SignatureNotification) and note.subscription == sub.subscription_id:
                    if note.result.value.err is not None:
                        raise error_from(note.result.value.err)
                    self.confirmed_by_subscription += 1
                    return

    def _confirm_by_polling(self, sig: Signature) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            status = self._run(self.client.get_signature_statuses([sig])).value[0]
            if status is not None and status.confirmation_status is not None:
                if status.err is not None:
                    raise error_from(status.err)
                return
            time.sleep(self.poll_s)
        raise TransactionFailed(f"transaction {sig} not confirmed within {self.timeout} s")

    def get_account(self, key: Pubkey) -> AccountData | None:
        acc = self._run(self.client.get_account_info(key, encoding="base64")).value
        return None if acc is None else AccountData(acc.lamports, bytes(acc.data), acc.owner, acc.executable)

    def get_accounts(self, keys: Sequence[Pubkey]) -> list[AccountData | None]:
        out: list[AccountData | None] = []
        for start in range(0, len(keys), 100):  # the RPC limit per call
            res = self._run(self.client.get_multiple_accounts(list(keys[start : start + 100]), encoding="base64"))
            out += [None if a is None else AccountData(a.lamports, bytes(a.data), a.owner, a.executable)
                    for a in res.value]
        return out

    def program_accounts(self, program_id: Pubkey) -> list[tuple[Pubkey, AccountData]]:
        res = self._run(self.client.get_program_accounts(program_id, encoding="base64"))
        return [(k.pubkey, AccountData(k.account.lamports, bytes(k.account.data), k.account.owner,
                                       k.account.executable)) for k in res.value]

    def balance(self, key: Pubkey) -> int:
        return int(self._run(self.client.get_balance(key)).value)

    def rent_exempt(self, space: int) -> int:
        return int(self._run(self.client.get_minimum_balance_for_rent_exemption(space)).value)

    def slot(self) -> int:
        return int(self._run(self.client.get_slot()).value)

    def airdrop(self, key: Pubkey, lamports: int) -> None:
        sig = self._run(self.client.request_airdrop(key, lamports)).value
        self._confirm(sig)

    def advance(self, slots: int) -> None:
        target = self.slot() + max(slots, 1)
        deadline = time.monotonic() + self.timeout + slots * 0.5
        while self.slot() < target:
            if time.monotonic() > deadline:
                raise TransactionFailed(f"the cluster did not reach slot {target}")
            time.sleep(self.poll_s)

    def history(self, address: Pubkey, limit: int = 1000) -> list[ChainTx]:
        sigs = self._run(self.client.get_signatures_for_address(address, limit=min(limit, 1000))).value
        out: list[ChainTx] = []
        for info in sigs:
            got = self._run(self.client.get_transaction(info.signature, encoding="base64",
                                                        max_supported_transaction_version=0)).value
            if got is None or got.transaction.meta is None:
                continue
            tx = got.transaction.transaction
            msg = tx.message  # type: ignore[union-attr]  # base64 decodes to a VersionedTransaction
            keys = list(msg.account_keys)
            meta = got.transaction.meta
            calls = [(keys[ix.program_id_index], bytes(ix.data), [keys[i] for i in bytes(ix.accounts)])
                     for ix in msg.instructions]
            deltas = {k: post - pre for k, pre, post in zip(keys, meta.pre_balances, meta.post_balances, strict=False)
                      if post != pre}
            out.append(ChainTx(str(info.signature), got.slot, got.block_time, meta.err, calls, deltas, meta.fee,
                               keys[0] if keys else None))
        return out

