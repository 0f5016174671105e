"""JSON-RPC over HTTP, and Solana's PubSub over a websocket, for the local chain: what wallets, dApps,
explorers and SDKs (web3.js, kit, solana-py) use, with a validator's codes and messages.

HTTP methods: sendTransaction, simulateTransaction, getLatestBlockhash, isBlockhashValid,
getAccountInfo, getMultipleAccounts, getProgramAccounts, getBalance, getSignatureStatuses,
getTransaction, getSignaturesForAddress, getBlock, getBlocks, getBlockTime, getBlockHeight, getSlot,
getEpochInfo, getEpochSchedule, getIdentity, getRecentPrioritizationFees, getFeeForMessage,
getMinimumBalanceForRentExemption, getTransactionCount, getFirstAvailableBlock, minimumLedgerSlot,
requestAirdrop, getHealth, getVersion, getGenesisHash. The websocket (``/`` on the RPC port and on the
port clients derive, RPC port + 1) serves the subscriptions of ``pubsub``.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from solders.message import from_bytes_versioned
from solders.transaction import VersionedTransaction

from splitup.market.localnet.b58 import b58decode
from splitup.market.localnet.chain import RECENT_BLOCKHASHES, LocalChain
from splitup.market.localnet.encoding import (
    account_encoding,
    check_version,
    data_slice,
    encode_account,
    encode_transaction,
    tx_version,
)
from splitup.market.localnet.fees import fee_for, writable
from splitup.market.localnet.pubsub import PubSub
from splitup.market.localnet.rpc_errors import (
    BLOCK_CLEANED_UP,
    BLOCK_NOT_AVAILABLE,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SIGNATURE_VERIFICATION_FAILURE,
    SLOT_SKIPPED,
    RpcError,
    invalid_params,
    preflight_failure,
)
from splitup.market.localnet.store import Block, TxRecord
from splitup.market.localnet.wire import (
    invalid_request,
    matches_filters,
    opts,
    parse_filters,
    parse_json,
    parse_list,
    parse_pubkey,
    parse_signature,
    u64,
)

MAX_MULTIPLE_ACCOUNTS = 100
MAX_SIGNATURES_FOR_ADDRESS = 1000
MAX_SIGNATURE_STATUSES = 256
MAX_PRIORITIZATION_ADDRESSES = 128
MAX_GET_BLOCKS_RANGE = 500_000
MAX_BATCH = 100  # requests in one JSON-RPC batch
# A validator's limits on an encoded transaction (a packet is 1232 bytes), checked before decoding: base58
# decoding is quadratic in the length, and a megabyte of it held a worker thread for minutes.
MAX_BASE58_TX, MAX_BASE64_TX, PACKET_DATA_SIZE = 1683, 1644, 1232
VERSION = {"solana-core": "2.2.0", "feature-set": 0}


class RpcHandler:
    """Dispatches one JSON-RPC request to the chain."""

    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain
        self.methods: dict[str, Callable[[list[Any]], Any]] = {
            "sendTransaction": self.send_transaction,
            "simulateTransaction": self.simulate_transaction,
            "getLatestBlockhash": self.get_latest_blockhash,
            "isBlockhashValid": lambda p: self._ctx(self.chain.blockhash_valid(self._hash(p[0]))),
            "getAccountInfo": self.get_account_info,
            "getMultipleAccounts": self.get_multiple_accounts,
            "getProgramAccounts": self.get_program_accounts,
            "getBalance": self.get_balance,
            "getSignatureStatuses": self.get_signature_statuses,
            "getTransaction": self.get_transaction,
            "getSignaturesForAddress": self.get_signatures_for_address,
            "getBlock": self.get_block,
            "getBlocks": self.get_blocks,
            "getBlockTime": lambda p: self._block(u64(p[0], "slot")).block_time,
            "getEpochInfo": self.get_epoch_info,
            "getEpochSchedule": self.get_epoch_schedule,
            "getIdentity": lambda p: {"identity": str(self.chain.identity)},
            "getRecentPrioritizationFees": self.get_recent_prioritization_fees,
            "requestAirdrop": self.request_airdrop,
            "getSlot": lambda p: self.chain.slot(),
            "getBlockHeight": lambda p: self.chain.slot(),  # the local chain skips no slot
            "getTransactionCount": lambda p: self.chain.history().transaction_count(),
            "getFirstAvailableBlock": lambda p: self.chain.history().first_block() or 0,
            "minimumLedgerSlot": lambda p: self.chain.history().first_block() or 0,
            "getMinimumBalanceForRentExemption": lambda p: self.chain.rent(u64(p[0], "data length")),
            "getHealth": lambda p: "ok",
            "getVersion": lambda p: VERSION,
            "getGenesisHash": lambda p: self.chain.genesis_hash,
            "getFeeForMessage": self.get_fee_for_message,
        }

    def _ctx(self, value: object) -> dict[str, Any]:
        return {"context": {"slot": self.chain.slot(), "apiVersion": VERSION["solana-core"]}, "value": value}

    def handle(self, req: Any) -> dict[str, Any]:
        refused = invalid_request(req)
        if refused is not None:
            return refused
        rid = req.get("id")
        method, params = req["method"], req.get("params") or []
        if not isinstance(params, list):
            params = [params]
        fn = self.methods.get(method)
        if fn is None:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": METHOD_NOT_FOUND, "message": "Method not found"}}
        try:
            return {"jsonrpc": "2.0", "id": rid, "result": fn(params)}
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": exc.to_json()}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": INVALID_PARAMS, "message": f"Invalid params: {exc}"}}

    # ---------------------------------------------------------------- decoding
    @staticmethod
    def _hash(value: object):  # noqa: ANN205 - solders Hash
        from solders.hash import Hash, ParseHashError

        try:
            return Hash.from_string(str(value))
        except (ValueError, ParseHashError) as exc:  # ParseHashError is no ValueError
            raise invalid_params(f"Invalid param: {exc}") from exc

    @staticmethod
    def _decode_tx(params: list[Any]) -> VersionedTransaction:
        raw = str(params[0])
        enc = opts(params, 1).get("encoding", "base58")
        if enc not in ("base58", "base64"):
            raise invalid_params(f"Invalid param: unsupported encoding: {enc}. Supported encodings: base58, base64")
        most = MAX_BASE58_TX if enc == "base58" else MAX_BASE64_TX
        if len(raw) > most:
            raise invalid_params(f"{enc} encoded solana_transaction::versioned::VersionedTransaction too large: "
                                 f"{len(raw)} bytes (max: encoded/raw {most}/{PACKET_DATA_SIZE})")
        try:
            data = base64.b64decode(raw, validate=True) if enc == "base64" else b58decode(raw)
            return VersionedTransaction.from_bytes(data)
        except ValueError as exc:
            raise invalid_params(
                f"failed to deserialize solana_transaction::versioned::VersionedTransaction: {exc}") from exc

    # ---------------------------------------------------------------- transactions
    def send_transaction(self, params: list[Any]) -> str:
        tx = self._decode_tx(params)
        if not opts(params, 1).get("skipPreflight", False):
            if not all(tx.verify_with_results()):
                raise RpcError(SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure")
            sim = self.chain.simulate(tx)
            if sim.err is not None:
                raise preflight_failure(sim.err, sim.logs, sim.units)
        out = self.chain.send(tx)
        if out.err == "BlockhashNotFound":  # only when preflight was skipped: it is dropped, as by a leader
            raise preflight_failure("BlockhashNotFound", [], 0)
        return out.signature

    def simulate_transaction(self, params: list[Any]) -> dict[str, Any]:
        tx = self._decode_tx(params)
        o = opts(params, 1)
        sig_verify, replace = bool(o.get("sigVerify", False)), bool(o.get("replaceRecentBlockhash", False))
        if sig_verify and replace:
            raise invalid_params("sigVerify may not be used with replaceRecentBlockhash")
        wanted = o.get("accounts")
        if wanted is not None:
            if not isinstance(wanted, dict):
                raise invalid_params("Invalid param: accounts must be an object with 'addresses'")
            most = len(tx.message.account_keys)
            if isinstance(wanted.get("addresses"), list) and len(wanted["addresses"]) > most:
                raise invalid_params(f"Too many accounts provided; max {most}")
            addresses = [parse_pubkey(a) for a in parse_list(wanted.get("addresses", []), "addresses", most)]
            enc = account_encoding(wanted, "base64")
            if enc == "base58":
                raise invalid_params("base58 encoding not supported")
        sim = self.chain.simulate(tx, sig_verify=sig_verify, check_blockhash=not replace)
        value: dict[str, Any] = {
            "err": sim.err, "logs": sim.logs, "accounts": None, "unitsConsumed": sim.units,
            "returnData": None if sim.return_data is None else {
                "programId": sim.return_data[0], "data": [base64.b64encode(sim.return_data[1]).decode(), "base64"]},
            "innerInstructions": [] if o.get("innerInstructions") else None, "replacementBlockhash": None,
            "fee": sim.fee if sim.err is None else None}
        if replace:
            blockhash, last_valid = self.chain.latest_blockhash()
            value["replacementBlockhash"] = {"blockhash": str(blockhash), "lastValidBlockHeight": last_valid}
        if wanted is not None:
            accs = []
            for key in addresses:
                acc = sim.accounts[key] if key in sim.accounts else self.chain.account(key)
                accs.append(None if acc is None else encode_account(acc, enc))
            value["accounts"] = accs
        return self._ctx(value)

    def get_fee_for_message(self, params: list[Any]) -> dict[str, Any]:
        try:
            msg = from_bytes_versioned(base64.b64decode(str(params[0]), validate=True))
        except ValueError as exc:
            raise invalid_params(f"invalid message: {exc}") from exc
        if not self.chain.blockhash_valid(msg.recent_blockhash):
            return self._ctx(None)  # the spec: null for a blockhash the node no longer knows
        return self._ctx(fee_for(msg))

    def get_transaction(self, params: list[Any]) -> dict[str, Any] | None:
        o = opts(params, 1)
        encoding = params[1] if len(params) > 1 and isinstance(params[1], str) else o.get("encoding", "json")
        with self.chain.lock:
            rec = self.chain.history().transaction(parse_signature(params[0]))
        if rec is None or not rec.tx:
            return None
        tx = VersionedTransaction.from_bytes(rec.tx)
        check_version(tx, o)
        out: dict[str, Any] = {"slot": rec.slot, "blockTime": rec.block_time,
                               "transaction": encode_transaction(rec.tx, encoding), "meta": rec.meta}
        if o.get("maxSupportedTransactionVersion") is not None:
            out["version"] = tx_version(tx)
        return out

    def get_signatures_for_address(self, params: list[Any]) -> list[dict[str, Any]]:
        address = str(parse_pubkey(params[0]))
        o = opts(params, 1)
        limit = u64(o.get("limit", MAX_SIGNATURES_FOR_ADDRESS), "limit")
        if not 1 <= limit <= MAX_SIGNATURES_FOR_ADDRESS:
            raise invalid_params(f"Invalid limit; max {MAX_SIGNATURES_FOR_ADDRESS}")
        with self.chain.lock:
            store = self.chain.history()
            before = store.transaction(parse_signature(o["before"])) if o.get("before") else None
            until = store.transaction(parse_signature(o["until"])) if o.get("until") else None
            rows = store.signatures_for(address, limit, before.seq if before else None, until.seq if until else None)
        return [{"signature": r.signature, "slot": r.slot, "err": r.meta.get("err"), "memo": None,
                 "blockTime": r.block_time, "confirmationStatus": "finalized"} for r in rows]

    def get_signature_statuses(self, params: list[Any]) -> dict[str, Any]:
        out: list[object] = []
        for sig in parse_list(params[0], "signatures", MAX_SIGNATURE_STATUSES):
            st = self.chain.signature_status(parse_signature(sig))
            if st is None:
                out.append(None)
                continue
            slot, err = st
            out.append({"slot": slot, "confirmations": None, "err": err,
                        "status": {"Ok": None} if err is None else {"Err": err},
                        "confirmationStatus": "finalized"})
        return self._ctx(out)

    def request_airdrop(self, params: list[Any]) -> str:
        lamports = u64(params[1], "lamports")
        if not 0 < lamports <= 1_000 * 10**9:
            raise invalid_params("airdrop amount must be between 1 lamport and 1000 SOL")
        try:
            return self.chain.airdrop(parse_pubkey(params[0]), lamports)
        except ValueError as exc:
            raise RpcError(-32000, str(exc)) from exc

    # ---------------------------------------------------------------- blocks and epochs
    def _block(self, slot: int) -> Block:
        current = self.chain.slot()
        if slot > current:
            raise RpcError(BLOCK_NOT_AVAILABLE, f"Block not available for slot {slot}")
        with self.chain.lock:
            store = self.chain.history()
            block, first = store.block(slot), store.first_block()
        if block is not None:
            return block
        if first is not None and slot < first:
            raise RpcError(BLOCK_CLEANED_UP,
                           f"Block {slot} cleaned up, does not exist on node. First available block: {first}")
        raise RpcError(SLOT_SKIPPED, f"Slot {slot} was skipped, or missing in long-term storage")

    def get_block(self, params: list[Any]) -> dict[str, Any]:
        block = self._block(u64(params[0], "slot"))
        o = opts(params, 1)
        encoding, details = o.get("encoding", "json"), o.get("transactionDetails", "full")
        if details not in ("full", "signatures", "none", "accounts"):
            raise invalid_params(f"Invalid param: unknown transactionDetails {details!r}")
        with self.chain.lock:
            records = self.chain.history().transactions_in(block.slot)
        out: dict[str, Any] = {"blockhash": block.blockhash, "previousBlockhash": block.previous_blockhash,
                               "parentSlot": block.parent_slot, "blockHeight": block.slot,
                               "blockTime": block.block_time}
        if o.get("rewards", True):
            out["rewards"] = []
        txs = [(r, VersionedTransaction.from_bytes(r.tx)) for r in records]
        for _, tx in txs:
            check_version(tx, o)
        if details == "signatures":
            out["signatures"] = [r.signature for r, _ in txs]
        elif details == "full":
            out["transactions"] = [self._block_tx(r, tx, encoding, o) for r, tx in txs]
        elif details == "accounts":
            out["transactions"] = [self._block_accounts(r, tx, o) for r, tx in txs]
        return out

    @staticmethod
    def _block_tx(rec: TxRecord, tx: VersionedTransaction, encoding: str, o: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"transaction": encode_transaction(rec.tx, encoding), "meta": rec.meta}
        if o.get("maxSupportedTransactionVersion") is not None:
            out["version"] = tx_version(tx)
        return out

    @staticmethod
    def _block_accounts(rec: TxRecord, tx: VersionedTransaction, o: dict[str, Any]) -> dict[str, Any]:
        msg = tx.message
        w = writable(msg)
        keys = [{"pubkey": str(k), "signer": i < msg.header.num_required_signatures, "writable": w[i],
                 "source": "transaction"} for i, k in enumerate(msg.account_keys)]
        meta = {k: rec.meta.get(k) for k in ("err", "status", "fee", "preBalances", "postBalances")}
        out: dict[str, Any] = {"transaction": {"accountKeys": keys, "signatures": [str(s) for s in tx.signatures]},
                               "meta": meta}
        if o.get("maxSupportedTransactionVersion") is not None:
            out["version"] = tx_version(tx)
        return out

    def get_blocks(self, params: list[Any]) -> list[int]:
        start = u64(params[0], "start slot")
        end = u64(params[1], "end slot") if len(params) > 1 and not isinstance(params[1], dict) else self.chain.slot()
        if end - start > MAX_GET_BLOCKS_RANGE:
            raise invalid_params(f"Slot range too large; max {MAX_GET_BLOCKS_RANGE}")
        first = self.chain.history().first_block() or 0
        return list(range(max(start, first), min(end, self.chain.slot()) + 1))

    def get_epoch_info(self, params: list[Any]) -> dict[str, Any]:
        with self.chain.lock:
            schedule = self.chain.svm.get_epoch_schedule()
            slot = self.chain.slot()
            count = self.chain.history().transaction_count()
        epoch, index = schedule.get_epoch_and_slot_index(slot)
        return {"absoluteSlot": slot, "blockHeight": slot, "epoch": epoch, "slotIndex": index,
                "slotsInEpoch": schedule.get_slots_in_epoch(epoch), "transactionCount": count}

    def get_epoch_schedule(self, params: list[Any]) -> dict[str, Any]:
        s = self.chain.svm.get_epoch_schedule()
        return {"slotsPerEpoch": s.slots_per_epoch, "leaderScheduleSlotOffset": s.leader_schedule_slot_offset,
                "warmup": s.warmup, "firstNormalEpoch": s.first_normal_epoch, "firstNormalSlot": s.first_normal_slot}

    def get_recent_prioritization_fees(self, params: list[Any]) -> list[dict[str, int]]:
        addresses = [str(parse_pubkey(a)) for a in
                     (parse_list(params[0], "addresses", MAX_PRIORITIZATION_ADDRESSES) if params else [])]
        current = self.chain.slot()
        first = max(0, current - RECENT_BLOCKHASHES + 1)
        with self.chain.lock:
            records = self.chain.history().transactions_since(first)
        # Per slot, the lowest price a landed transaction paid (for the given accounts: the highest of
        # those per-account minima), as a validator's prioritization-fee cache reports it.
        per_slot: dict[int, dict[str, int]] = {}
        for r in records:
            if not r.tx:
                continue
            msg = VersionedTransaction.from_bytes(r.tx).message
            w = writable(msg)
            locked = [str(k) for i, k in enumerate(msg.account_keys) if w[i]]
            fees = per_slot.setdefault(r.slot, {})
            fees[""] = min(fees.get("", r.priority_fee), r.priority_fee)
            for a in locked:
                fees[a] = min(fees.get(a, r.priority_fee), r.priority_fee)
        out = []
        for slot in range(first, current + 1):
            fees = per_slot.get(slot, {})
            fee = max((fees.get(a, 0) for a in addresses), default=0) if addresses else fees.get("", 0)
            out.append({"slot": slot, "prioritizationFee": fee})
        return out

    # ---------------------------------------------------------------- accounts
    def get_latest_blockhash(self, params: list[Any]) -> dict[str, Any]:
        blockhash, last_valid = self.chain.latest_blockhash()
        return self._ctx({"blockhash": str(blockhash), "lastValidBlockHeight": last_valid})

    def get_account_info(self, params: list[Any]) -> dict[str, Any]:
        o = opts(params, 1)
        enc, slice_ = account_encoding(o, "base58"), data_slice(o)
        acc = self.chain.account(parse_pubkey(params[0]))
        return self._ctx(None if acc is None else encode_account(acc, enc, slice_))

    def get_multiple_accounts(self, params: list[Any]) -> dict[str, Any]:
        keys = [parse_pubkey(k) for k in parse_list(params[0], "pubkeys", MAX_MULTIPLE_ACCOUNTS)]
        o = opts(params, 1)
        enc, slice_ = account_encoding(o, "base64"), data_slice(o)
        accs = [self.chain.account(k) for k in keys]
        return self._ctx([None if a is None else encode_account(a, enc, slice_) for a in accs])

    def get_program_accounts(self, params: list[Any]) -> Any:
        o = opts(params, 1)
        enc, slice_, filters = account_encoding(o, "base64"), data_slice(o), parse_filters(o.get("filters"))
        out = [{"pubkey": str(k), "account": encode_account(a, enc, slice_)}
               for k, a in self.chain.program_accounts(parse_pubkey(params[0])) if matches_filters(a, filters)]
        return self._ctx(out) if o.get("withContext") else out

    def get_balance(self, params: list[Any]) -> dict[str, Any]:
        acc = self.chain.account(parse_pubkey(params[0]))
        return self._ctx(0 if acc is None else acc.lamports)


def create_app(chain: LocalChain) -> FastAPI:
    app = FastAPI(title="SplitUp local network", docs_url=None, redoc_url=None)
    handler = RpcHandler(chain)
    pubsub = PubSub(chain)

    @app.post("/")
    async def rpc_raw(request: Request) -> JSONResponse:
        try:
            body = parse_json(await request.body())
        except ValueError:
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "Parse error"}})
        # the chain is synchronous and locked: run it off the event loop
        if isinstance(body, list):
            if not 0 < len(body) <= MAX_BATCH:
                return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
                    "code": -32600, "message": f"Invalid request: batch of {len(body)} requests; 1 to {MAX_BATCH}"}})
            result: Any = [await anyio.to_thread.run_sync(handler.handle, r) for r in body]
        else:
            result = await anyio.to_thread.run_sync(handler.handle, body)
        return JSONResponse(result)

    @app.websocket("/")
    async def pubsub_ws(ws: WebSocket) -> None:
        await pubsub.serve(ws)

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
        while not self._stop.wait(self.slot_s):
            self.chain.tick()
