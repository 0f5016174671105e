"""JSON-RPC over HTTP for the local chain: the subset of Solana's API that our client (solana-py) uses.

Methods: sendTransaction, simulateTransaction (failure check only), getLatestBlockhash,
isBlockhashValid, getAccountInfo, getMultipleAccounts, getProgramAccounts, getBalance,
getSignatureStatuses, requestAirdrop, getSlot, getBlockHeight, getMinimumBalanceForRentExemption,
getHealth, getVersion, getGenesisHash, getFeeForMessage.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from splitup.market.localnet.b58 import b58decode, b58encode
from splitup.market.localnet.chain import LocalChain
from splitup.market.transport import AccountData

U64_MAX = 2**64 - 1
FEE_PER_SIGNATURE = 5_000


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _opts(params: list[Any], index: int) -> dict[str, Any]:
    return params[index] if len(params) > index and isinstance(params[index], dict) else {}


def _pubkey(value: object) -> Pubkey:
    try:
        return Pubkey.from_string(str(value))
    except ValueError as exc:
        raise RpcError(-32602, f"Invalid param: {exc}") from exc


def _encode_account(acc: AccountData, encoding: str) -> dict[str, Any]:
    if encoding == "base58":
        data: object = [b58encode(acc.data), "base58"]
    else:
        data = [base64.b64encode(acc.data).decode(), "base64"]
    return {"lamports": acc.lamports, "owner": str(acc.owner), "data": data, "executable": acc.executable,
            "rentEpoch": U64_MAX, "space": len(acc.data)}


def _matches(acc: AccountData, filters: list[dict[str, Any]]) -> bool:
    for f in filters:
        if "dataSize" in f and len(acc.data) != int(f["dataSize"]):
            return False
        if "memcmp" in f:
            mc = f["memcmp"]
            raw = (base64.b64decode(mc["bytes"]) if mc.get("encoding") == "base64"
                   else b58decode(mc["bytes"]))
            off = int(mc.get("offset", 0))
            if acc.data[off : off + len(raw)] != raw:
                return False
    return True


class RpcHandler:
    """Dispatches one JSON-RPC request to the chain."""

    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain
        self.methods: dict[str, Callable[[list[Any]], Any]] = {
            "sendTransaction": self.send_transaction,
            "simulateTransaction": self.simulate_transaction,
            "getLatestBlockhash": self.get_latest_blockhash,
            "isBlockhashValid": self.is_blockhash_valid,
            "getAccountInfo": self.get_account_info,
            "getMultipleAccounts": self.get_multiple_accounts,
            "getProgramAccounts": self.get_program_accounts,
            "getBalance": self.get_balance,
            "getSignatureStatuses": self.get_signature_statuses,
            "requestAirdrop": self.request_airdrop,
            "getSlot": lambda p: self.chain.slot(),
            "getBlockHeight": lambda p: self.chain.slot(),
            "getMinimumBalanceForRentExemption": lambda p: self.chain.rent(int(p[0])),
            "getHealth": lambda p: "ok",
            "getVersion": lambda p: {"solana-core": "2.0.0-splitup-localnet", "feature-set": 0},
            "getGenesisHash": lambda p: "SpLitUpLocaLNet11111111111111111111111111111",
            "getFeeForMessage": self.get_fee_for_message,
        }

    def _ctx(self, value: object) -> dict[str, Any]:
        return {"context": {"slot": self.chain.slot(), "apiVersion": "2.0.0"}, "value": value}

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        rid = req.get("id")
        method, params = req.get("method"), req.get("params") or []
        fn = self.methods.get(str(method))
        if fn is None:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"Method not found: {method}"}}
        try:
            return {"jsonrpc": "2.0", "id": rid, "result": fn(params)}
        except RpcError as exc:
            err: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                err["data"] = exc.data
            return {"jsonrpc": "2.0", "id": rid, "error": err}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"Invalid params: {exc}"}}

    def _decode_tx(self, params: list[Any]) -> VersionedTransaction:
        raw = str(params[0])
        enc = _opts(params, 1).get("encoding", "base58")
        data = base64.b64decode(raw) if enc == "base64" else b58decode(raw)
        try:
            return VersionedTransaction.from_bytes(data)
        except ValueError as exc:
            raise RpcError(-32602, f"invalid transaction: {exc}") from exc

    def send_transaction(self, params: list[Any]) -> str:
        tx = self._decode_tx(params)
        if not _opts(params, 1).get("skipPreflight", False):
            failed = self.chain.simulate(tx)
            if failed is not None:
                raise RpcError(-32002, f"Transaction simulation failed: {failed.err}", {
                    "err": failed.err, "logs": failed.logs, "accounts": None, "unitsConsumed": failed.units,
                    "returnData": None, "innerInstructions": None, "replacementBlockhash": None})
        out = self.chain.send(tx)
        if out.err == "BlockhashNotFound":
            raise RpcError(-32002, "Transaction simulation failed: Blockhash not found",
                           {"err": "BlockhashNotFound", "logs": [], "accounts": None, "unitsConsumed": 0,
                            "returnData": None, "innerInstructions": None, "replacementBlockhash": None})
        return out.signature

    def simulate_transaction(self, params: list[Any]) -> dict[str, Any]:
        tx = self._decode_tx(params)
        failed = self.chain.simulate(tx)
        value = {"err": None, "logs": [], "accounts": None, "unitsConsumed": 0, "returnData": None,
                 "innerInstructions": None, "replacementBlockhash": None}
        if failed is not None:
            value.update(err=failed.err, logs=failed.logs, unitsConsumed=failed.units)
        return self._ctx(value)

    def get_latest_blockhash(self, params: list[Any]) -> dict[str, Any]:
        return self._ctx({"blockhash": str(self.chain.latest_blockhash()), "lastValidBlockHeight": self.chain.slot() + 150})

    def is_blockhash_valid(self, params: list[Any]) -> dict[str, Any]:
        with self.chain.lock:
            return self._ctx(any(str(h) == str(params[0]) for h in self.chain.recent))

    def get_account_info(self, params: list[Any]) -> dict[str, Any]:
        acc = self.chain.account(_pubkey(params[0]))
        enc = _opts(params, 1).get("encoding", "base64")
        return self._ctx(None if acc is None else _encode_account(acc, enc))

    def get_multiple_accounts(self, params: list[Any]) -> dict[str, Any]:
        enc = _opts(params, 1).get("encoding", "base64")
        accs = [self.chain.account(_pubkey(k)) for k in params[0]]
        return self._ctx([None if a is None else _encode_account(a, enc) for a in accs])

    def get_program_accounts(self, params: list[Any]) -> Any:
        opts = _opts(params, 1)
        enc, filters = opts.get("encoding", "base64"), opts.get("filters") or []
        out = [{"pubkey": str(k), "account": _encode_account(a, enc)}
               for k, a in self.chain.program_accounts(_pubkey(params[0])) if _matches(a, filters)]
        return self._ctx(out) if opts.get("withContext") else out

    def get_balance(self, params: list[Any]) -> dict[str, Any]:
        acc = self.chain.account(_pubkey(params[0]))
        return self._ctx(0 if acc is None else acc.lamports)

    def get_signature_statuses(self, params: list[Any]) -> dict[str, Any]:
        out: list[object] = []
        for sig in params[0]:
            st = self.chain.signature_status(str(sig))
            if st is None:
                out.append(None)
                continue
            slot, err = st
            out.append({"slot": slot, "confirmations": None, "err": err,
                        "status": {"Ok": None} if err is None else {"Err": err},
                        "confirmationStatus": "finalized"})
        return self._ctx(out)

    def request_airdrop(self, params: list[Any]) -> str:
        lamports = int(params[1])
        if not 0 < lamports <= 1_000 * 10**9:
            raise RpcError(-32602, "airdrop amount must be between 1 lamport and 1000 SOL")
        try:
            return self.chain.airdrop(_pubkey(params[0]), lamports)
        except ValueError as exc:
            raise RpcError(-32000, str(exc)) from exc

    def get_fee_for_message(self, params: list[Any]) -> dict[str, Any]:
        from solders.message import Message

        msg = Message.from_bytes(base64.b64decode(str(params[0])))
        return self._ctx(FEE_PER_SIGNATURE * msg.header.num_required_signatures)


def create_app(chain: LocalChain) -> FastAPI:
    app = FastAPI(title="SplitUp local network", docs_url=None, redoc_url=None)
    handler = RpcHandler(chain)

    @app.post("/")
    async def rpc_raw(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
        # the chain is synchronous and locked: run it off the event loop
        if isinstance(body, list):
            result: Any = [await anyio.to_thread.run_sync(handler.handle, r) for r in body]
        else:
            result = await anyio.to_thread.run_sync(handler.handle, body)
        return JSONResponse(result)

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


class Ticker:
    """Produces a slot every ``slot_s`` seconds in a daemon thread."""

    def __init__(self, chain: LocalChain, slot_s: float) -> None:
        self.chain, self.slot_s = chain, slot_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="splitup-ledger-clock", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.slot_s):
            n += 1
            self.chain.tick(persist=n % 10 == 0)  # transactions persist the clock anyway
