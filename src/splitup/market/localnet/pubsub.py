"""Solana's PubSub websocket API over the local chain: account, program, signature, slot and logs
subscriptions with their unsubscribes, as web3.js, kit and solana-py speak it.

The local chain confirms and finalizes a transaction in the slot that executes it, so every
commitment level is notified at once. Events arrive from the chain's threads (under its lock) and are
handed to each connection's event loop; a slow client's queue is bounded and it is disconnected when
the queue overflows rather than holding up the chain.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from splitup.market.localnet.chain import ChainListener, LocalChain
from splitup.market.localnet.encoding import account_encoding, data_slice, encode_account
from splitup.market.localnet.rpc_errors import (
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RpcError,
    invalid_params,
)
from splitup.market.localnet.store import TxRecord
from splitup.market.localnet.wire import (
    Filter,
    invalid_request,
    matches_filters,
    parse_filters,
    parse_json,
    parse_pubkey,
    u64,
)
from splitup.market.transport import AccountData

QUEUE_LIMIT = 4096  # notifications waiting for one client before it is dropped as too slow
MAX_SUBSCRIPTIONS = 1024  # per connection
MAX_BATCH = 100  # requests in one message, as over HTTP

_KINDS = {"account", "program", "signature", "slot", "logs"}


@dataclass
class _Sub:
    id: int
    kind: str
    conn: _Connection
    key: str | None = None  # account, program or signature; for logs: the mentioned address or None
    encoding: str = "base64"
    slice_: tuple[int, int] | None = None
    filters: list[Filter] | None = None
    votes: bool = False


class _Connection:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_LIMIT)
        self.subs: dict[int, _Sub] = {}
        self.after: list[str] = []  # notifications due right after the current reply

    def push(self, text: str | None) -> None:
        """From any thread: queue a message, or close the connection if the client cannot keep up."""
        def put() -> None:
            try:
                self.queue.put_nowait(text)
            except asyncio.QueueFull:
                self.queue = asyncio.Queue(1)
                self.queue.put_nowait(None)
        try:
            self.loop.call_soon_threadsafe(put)
        except RuntimeError:
            pass  # the connection's loop is closed: it is going away


def _notification(method: str, sub: int, result: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": {"result": result, "subscription": sub}})


class PubSub(ChainListener):
    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.subs: dict[int, _Sub] = {}
        chain.add_listener(self)

    # ---------------------------------------------------------------- chain events (chain thread)
    def _snapshot(self) -> list[_Sub]:
        with self._lock:
            return list(self.subs.values())

    def on_slot(self, slot: int, parent: int) -> None:
        for s in self._snapshot():
            if s.kind == "slot":
                s.conn.push(_notification("slotNotification", s.id, {"parent": parent, "root": slot, "slot": slot}))

    def on_transaction(self, record: TxRecord, accounts: dict[Pubkey, AccountData | None]) -> None:
        ctx = {"slot": record.slot}
        err = record.meta.get("err")
        keys = [str(k) for k in VersionedTransaction.from_bytes(record.tx).message.account_keys] if record.tx else []
        changed = {str(k): a for k, a in accounts.items()}
        done: list[int] = []
        for s in self._snapshot():
            if s.kind == "signature" and s.key == record.signature:
                s.conn.push(_notification("signatureNotification", s.id, {"context": ctx, "value": {"err": err}}))
                done.append(s.id)
            elif s.kind == "account" and s.key in changed:
                acc = changed[s.key]
                value = (encode_account(acc, s.encoding, s.slice_, base58_limit=False) if acc is not None else
                         {"lamports": 0, "owner": "11111111111111111111111111111111", "data": ["", "base64"],
                          "executable": False, "rentEpoch": 2**64 - 1, "space": 0})
                s.conn.push(_notification("accountNotification", s.id, {"context": ctx, "value": value}))
            elif s.kind == "program":
                for key, acc in changed.items():
                    if acc is not None and str(acc.owner) == s.key and matches_filters(acc, s.filters or []):
                        s.conn.push(_notification("programNotification", s.id, {
                            "context": ctx, "value": {"pubkey": key, "account": encode_account(
                                acc, s.encoding, s.slice_, base58_limit=False)}}))
            elif s.kind == "logs" and record.tx and (s.key is None or s.key in keys):
                s.conn.push(_notification("logsNotification", s.id, {"context": ctx, "value": {
                    "signature": record.signature, "err": err, "logs": record.meta.get("logMessages", [])}}))
        for sid in done:  # a signature subscription ends with its one notification
            self._drop(sid)

    # ---------------------------------------------------------------- requests (event loop)
    def _add(self, sub: _Sub) -> int:
        if len(sub.conn.subs) >= MAX_SUBSCRIPTIONS:
            raise invalid_params(f"too many subscriptions on this connection (at most {MAX_SUBSCRIPTIONS})")
        with self._lock:
            self.subs[sub.id] = sub
        sub.conn.subs[sub.id] = sub
        return sub.id

    def _drop(self, sid: int) -> bool:
        with self._lock:
            sub = self.subs.pop(sid, None)
        if sub is None:
            return False
        sub.conn.subs.pop(sid, None)
        return True

    def subscribe(self, conn: _Connection, method: str, params: list[Any]) -> Any:
        opts = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        sid = next(self._ids)
        if method == "accountSubscribe":
            key = str(parse_pubkey(params[0]))
            return self._add(_Sub(sid, "account", conn, key, account_encoding(opts, "base58"), data_slice(opts)))
        if method == "programSubscribe":
            key = str(parse_pubkey(params[0]))
            return self._add(_Sub(sid, "program", conn, key, account_encoding(opts, "base58"), data_slice(opts),
                                  parse_filters(opts.get("filters"))))
        if method == "signatureSubscribe":
            sig = str(params[0])
            status = self.chain.signature_status(sig)
            if status is None:
                return self._add(_Sub(sid, "signature", conn, sig))
            # landed before the subscription: answer, then notify at once (the caller sends in this order)
            conn.after.append(_notification("signatureNotification", sid, {"context": {"slot": status[0]},
                                                                          "value": {"err": status[1]}}))
            return sid
        if method == "slotSubscribe":
            return self._add(_Sub(sid, "slot", conn))
        if method == "logsSubscribe":
            flt = params[0] if params else "all"
            if flt in ("all", "allWithVotes"):
                return self._add(_Sub(sid, "logs", conn, None, votes=flt == "allWithVotes"))
            if isinstance(flt, dict) and isinstance(flt.get("mentions"), list) and len(flt["mentions"]) == 1:
                return self._add(_Sub(sid, "logs", conn, str(parse_pubkey(flt["mentions"][0]))))
            raise invalid_params("Invalid Request: Only 1 address supported")
        kind = method.removesuffix("Unsubscribe")
        if kind in _KINDS and method.endswith("Unsubscribe"):
            sid_ = u64(params[0], "subscription id")
            sub = conn.subs.get(sid_)
            if sub is None or sub.kind != kind or not self._drop(sid_):
                raise invalid_params("Invalid subscription id.")
            return True
        raise RpcError(METHOD_NOT_FOUND, "Method not found")

    def close(self, conn: _Connection) -> None:
        for sid in list(conn.subs):
            self._drop(sid)

    async def serve(self, ws: WebSocket) -> None:
        await ws.accept()
        conn = _Connection(asyncio.get_running_loop())
        sender = asyncio.create_task(self._send_loop(ws, conn))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                # a binary frame is read as UTF-8 JSON too (receive_text raised KeyError on one)
                text = msg.get("text") if msg.get("text") is not None else msg.get("bytes") or b""
                # Under the chain's lock, so that no notification of a new subscription can be queued
                # before the reply that tells the client its id.
                with self.chain.lock:
                    for reply in self._handle(conn, text):
                        conn.push(reply)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.close(conn)
            sender.cancel()

    @staticmethod
    async def _send_loop(ws: WebSocket, conn: _Connection) -> None:
        try:
            while True:
                text = await conn.queue.get()
                if text is None:
                    await ws.close(code=1008, reason="client too slow: notification queue overflowed")
                    return
                await ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            return

    def _handle(self, conn: _Connection, text: str | bytes) -> list[str]:
        try:
            body = parse_json(text)
        except ValueError:
            return [json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "Parse error"}})]
        if isinstance(body, list) and not 0 < len(body) <= MAX_BATCH:
            return [json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                "code": INVALID_REQUEST, "message": f"Invalid request: batch of {len(body)} requests; 1 to {MAX_BATCH}"}})]
        reqs = body if isinstance(body, list) else [body]
        out = []
        for req in reqs:
            out.append(json.dumps(self._one(conn, req)))
            out += conn.after
            conn.after.clear()
        return out

    def _one(self, conn: _Connection, req: Any) -> dict[str, Any]:
        refused = invalid_request(req)
        if refused is not None:
            return refused
        rid, params = req.get("id"), req.get("params") or []
        if not isinstance(params, list):
            params = [params]
        try:
            result = self.subscribe(conn, req["method"], params)
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": exc.to_json()}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": invalid_params(f"Invalid params: {exc}").to_json()}
        return {"jsonrpc": "2.0", "id": rid, "result": result}


def websocket_route(pubsub: PubSub) -> Callable[[WebSocket], Any]:
    async def route(ws: WebSocket) -> None:
        await pubsub.serve(ws)
    return route
