"""A stranger's garbage against the local ledger's JSON-RPC and PubSub websocket: whatever arrives, the
answer is a JSON-RPC response with a documented error code, the ledger stays healthy, and nothing moves
funds it should not."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from solders.keypair import Keypair
from solders.message import Message, to_bytes_versioned
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction, VersionedTransaction
from websockets.sync.client import connect

from splitup.demo.procs import free_port
from splitup.market.localnet.b58 import b58decode, b58encode
from splitup.market.localnet.chain import LocalChain
from splitup.market.localnet.run import running
from splitup.market.localnet.server import MAX_BATCH, RpcHandler

SOL = 10**9
SYSTEM = "11111111111111111111111111111111"
# JSON-RPC's own codes, and the Solana codes our methods use (-32000: a faucet refusal)
DOCUMENTED = {-32700, -32600, -32601, -32602, -32000, -32001, -32002, -32003, -32004, -32009, -32015}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


class Ledger:
    def __init__(self, url: str, chain: LocalChain, http: httpx.Client, payer: Keypair, signature: str, slot: int,
                 tx: VersionedTransaction, message_b64: str) -> None:
        self.url, self.chain, self.http, self.payer = url, chain, http, payer
        self.signature, self.slot = signature, slot  # a landed airdrop, and the slot it landed in
        self.tx = tx  # a valid transfer from payer, which the fuzz never sends unchanged
        self.message_b64 = message_b64

    def __repr__(self) -> str:
        return f"Ledger({self.url})"

    def call(self, method: str, *params: object) -> dict[str, Any]:
        return self.http.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                              "params": list(params)}).json()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    port = free_port()
    with running(tmp_path_factory.mktemp("ledger"), port, slot_s=0.05) as chain, \
            httpx.Client(timeout=20) as http:
        url = f"http://127.0.0.1:{port}"
        payer = Keypair()
        post = lambda m, *p: http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": m,  # noqa: E731
                                                  "params": list(p)}).json()
        sig = post("requestAirdrop", str(payer.pubkey()), 10 * SOL)["result"]
        for _ in range(200):
            status = post("getSignatureStatuses", [sig])["result"]["value"][0]
            if status is not None:
                break
            time.sleep(0.02)
        assert status is not None
        bh = chain.latest_blockhash()[0]
        ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=SOL))
        msg = Message.new_with_blockhash([ix], payer.pubkey(), bh)
        tx = VersionedTransaction.from_legacy(Transaction([payer], msg, bh))
        yield Ledger(url, chain, http, payer, sig, status["slot"], tx,
                     base64.b64encode(to_bytes_versioned(msg)).decode())


def _templates(lg: Ledger) -> dict[str, list[list[Any]]]:
    """Valid params for every method, from which the fuzz makes near-valid ones."""
    p, s, slot = str(lg.payer.pubkey()), lg.signature, lg.slot
    # the fuzz must never send the valid transfer itself: it would land, and move the payer's funds
    forged = bytearray(bytes(lg.tx))
    forged[1] ^= 1  # its signature's first byte: the runtime refuses it, nothing is executed
    tx_b64, tx_b58 = base64.b64encode(forged).decode(), b58encode(bytes(forged))
    none: list[list[Any]] = [[], [{"commitment": "finalized", "minContextSlot": 0}]]
    return {
        "sendTransaction": [[tx_b64, {"encoding": "base64", "skipPreflight": True}], [tx_b58],
                            [tx_b64, {"encoding": "base64", "preflightCommitment": "processed"}]],
        "simulateTransaction": [
            [base64.b64encode(bytes(lg.tx)).decode(),
             {"encoding": "base64", "sigVerify": False, "replaceRecentBlockhash": True, "innerInstructions": True,
              "accounts": {"addresses": [p], "encoding": "base64"}}],
            [b58encode(bytes(lg.tx)), {"sigVerify": True, "accounts": {"addresses": [p, SYSTEM]}}]],
        "getLatestBlockhash": none,
        "isBlockhashValid": [[str(lg.tx.message.recent_blockhash), {"commitment": "processed"}]],
        "getAccountInfo": [[p, {"encoding": "base64", "dataSlice": {"offset": 0, "length": 8}}],
                           [SYSTEM, {"encoding": "jsonParsed"}]],
        "getMultipleAccounts": [[[p, SYSTEM], {"encoding": "base64+zstd", "dataSlice": {"offset": 1, "length": 2}}]],
        "getProgramAccounts": [
            [SYSTEM, {"encoding": "base64", "withContext": True, "dataSlice": {"offset": 0, "length": 0},
                      "filters": [{"dataSize": 0}, {"memcmp": {"offset": 0, "bytes": "1"}}]}],
            [SYSTEM, {"filters": [{"memcmp": {"offset": 0, "bytes": "AA==", "encoding": "base64"}}]}]],
        "getBalance": [[p, {"commitment": "confirmed"}]],
        "getSignatureStatuses": [[[s, s], {"searchTransactionHistory": True}]],
        "getTransaction": [[s, {"encoding": "json", "maxSupportedTransactionVersion": 0}], [s, "base64"],
                           [s, {"encoding": "jsonParsed"}]],
        "getSignaturesForAddress": [[p, {"limit": 10, "before": s, "until": s}], [p]],
        "getBlock": [[slot, {"encoding": "json", "transactionDetails": "full", "maxSupportedTransactionVersion": 0,
                             "rewards": False}], [slot, {"transactionDetails": "accounts"}], [slot]],
        "getBlocks": [[max(slot - 5, 0), slot], [slot, {"commitment": "finalized"}]],
        "getBlockTime": [[slot]],
        "getEpochInfo": none, "getEpochSchedule": none, "getIdentity": none, "getSlot": none,
        "getBlockHeight": none, "getTransactionCount": none, "getFirstAvailableBlock": none,
        "minimumLedgerSlot": none, "getHealth": none, "getVersion": none, "getGenesisHash": none,
        "getRecentPrioritizationFees": [[[p, SYSTEM]], []],
        "requestAirdrop": [[str(Keypair().pubkey()), SOL // 100, {"commitment": "confirmed"}]],
        "getMinimumBalanceForRentExemption": [[165], [0, {"commitment": "finalized"}]],
        "getFeeForMessage": [[lg.message_b64, {"commitment": "processed"}]],
    }


# ---------------------------------------------------------------- strategies
_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20))
json_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                           max_size=4),
                           max_leaves=12)
_ENCODINGS = ["base58", "base64", "base64+zstd", "jsonParsed", "json", "binary", "binary64", "hex", "BASE64", ""]
_CONFIG_KEYS = ["encoding", "commitment", "filters", "dataSlice", "minContextSlot", "limit", "before", "until",
                "maxSupportedTransactionVersion", "transactionDetails", "rewards", "skipPreflight", "sigVerify",
                "replaceRecentBlockhash", "accounts", "withContext", "innerInstructions", "addresses", "offset",
                "length", "bytes", "memcmp", "dataSize", "searchTransactionHistory", "mentions"]
_numbers = st.sampled_from([0, 1, -1, 2**53, 2**63, 2**64 - 1, 2**64, -(2**63), 10**30, -(10**30), 10**300, 1.5,
                            -0.0, 1e300, math.inf, -math.inf, math.nan, True, False])
_strings = st.sampled_from(["", "0", "-1", "1e400", "0OIl", "1" * 64, "z" * 3000, "1" * 200_000, "z" * 200_000,
                            "A" * 100_000, "AA==", "!!!", "\x00", "\ud7ff" * 5, SYSTEM, SYSTEM + "1",
                            *_ENCODINGS, "all", "allWithVotes", "full", "signatures", "none", "accounts"])
_memcmp = st.fixed_dictionaries({"offset": _numbers | json_values, "bytes": _strings | json_values},
                                optional={"encoding": st.sampled_from(_ENCODINGS) | json_values})
_filter = st.one_of(st.fixed_dictionaries({"dataSize": _numbers | json_values}), st.fixed_dictionaries(
    {"memcmp": _memcmp | json_values}), json_values)
_filters = st.lists(_filter, max_size=6) | json_values | _strings
_slice = st.fixed_dictionaries({"offset": _numbers | json_values, "length": _numbers | json_values}) | json_values
nasty = st.one_of(_numbers, _strings, json_values, _filters, _slice,
                  st.dictionaries(st.sampled_from(_CONFIG_KEYS), _numbers | _strings | json_values, max_size=3))


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """``value`` with one part of it changed: replaced, dropped, or grown by something nasty."""
    kinds = ["replace"]
    if isinstance(value, list | dict) and value and depth < 4:
        kinds += ["descend", "descend", "drop"]
    if isinstance(value, list | dict):
        kinds += ["add"]
    kind = draw(st.sampled_from(kinds))
    if kind == "replace":
        return draw(nasty)
    if isinstance(value, list):
        out_l = list(value)
        if kind == "add":
            out_l.insert(draw(st.integers(0, len(out_l))), draw(nasty))
            return out_l
        i = draw(st.integers(0, len(out_l) - 1))
        if kind == "drop":
            del out_l[i]
        else:
            out_l[i] = draw(mutated(out_l[i], depth + 1))
        return out_l
    out_d = dict(value)
    if kind == "add":
        out_d[draw(st.sampled_from(_CONFIG_KEYS) | st.text(max_size=8))] = draw(nasty)
        return out_d
    key = draw(st.sampled_from(sorted(out_d)))
    if kind == "drop":
        del out_d[key]
    else:
        out_d[key] = draw(mutated(out_d[key], depth + 1))
    return out_d


@st.composite
def near_valid(draw: st.DrawFn, templates: dict[str, list[list[Any]]], method: str | None = None) -> Any:
    method = method or draw(st.sampled_from(sorted(templates)))
    params = draw(st.sampled_from(templates[method]))
    for _ in range(draw(st.integers(1, 3))):
        params = draw(mutated(params))
    return params


ids = st.one_of(st.integers(), st.text(max_size=10), st.none(), st.sampled_from(
    [2**64, 10**40, -(10**40), 1.5, math.inf, math.nan, True, {}, {"a": 1}, [], [1]]), json_values)


def _dumps(body: Any) -> bytes:
    # allow_nan: what a sloppy client sends (NaN, Infinity) is part of the garbage
    return json.dumps(body, allow_nan=True).encode()


def _strict(text: bytes) -> Any:
    """JSON as RFC 8259 and serde read it: no NaN or Infinity, no number beyond a double."""
    def refuse(c: str) -> Any:
        raise ValueError(c)

    def finite(c: str) -> float:
        if not math.isfinite(float(c)):
            raise ValueError(c)
        return float(c)
    return json.loads(text, parse_constant=refuse, parse_float=finite)


def _is_json(body: bytes) -> bool:
    try:
        _strict(body)
    except (ValueError, RecursionError):
        return False
    return True


def _check_one(req: Any, resp: Any) -> None:
    assert isinstance(resp, dict) and resp.get("jsonrpc") == "2.0", resp
    assert ("result" in resp) != ("error" in resp), resp
    if "error" in resp:
        err = resp["error"]
        assert isinstance(err, dict) and isinstance(err.get("message"), str), resp
        assert err.get("code") in DOCUMENTED, resp
    well_formed = isinstance(req, dict) and isinstance(req.get("method"), str)
    if not well_formed:
        assert resp["id"] is None and resp["error"]["code"] == -32600, resp
    elif resp.get("error", {}).get("code") != -32600:
        assert resp["id"] == req.get("id"), (req, resp)


def _post(lg: Ledger, body: bytes) -> httpx.Response:
    start = time.monotonic()
    r = lg.http.post(lg.url, content=body, headers={"content-type": "application/json"})
    assert time.monotonic() - start < 10, "the ledger took too long to refuse garbage"
    return r


def _check_exchange(lg: Ledger, body: bytes) -> Any:
    r = _post(lg, body)
    assert r.status_code == 200, (body[:300], r.status_code, r.text[:300])
    resp = _strict(r.content)
    if not _is_json(body):
        assert resp == {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
        return resp
    req = _strict(body)
    if isinstance(req, list):
        if not req or len(req) > MAX_BATCH:
            assert isinstance(resp, dict) and resp["error"]["code"] == -32600, resp
            return resp
        assert isinstance(resp, list) and len(resp) == len(req), resp
        for q, a in zip(req, resp, strict=True):
            _check_one(q, a)
    else:
        _check_one(req, resp)
    return resp


def _still_healthy(lg: Ledger, payer_balance: int | None = None) -> None:
    assert lg.call("getHealth") == {"jsonrpc": "2.0", "id": 1, "result": "ok"}
    got = lg.call("getBalance", str(lg.payer.pubkey()))["result"]["value"]
    assert got == (payer_balance if payer_balance is not None else 10 * SOL)


# ---------------------------------------------------------------- HTTP
def test_every_method_has_templates(ledger: Ledger) -> None:
    assert set(_templates(ledger)) == set(RpcHandler(ledger.chain).methods)
    for method, variants in _templates(ledger).items():
        for params in variants:
            resp = ledger.call(method, *params)
            assert "error" not in resp or method == "sendTransaction", (method, params, resp)


@FUZZ
@given(body=st.one_of(json_values.map(_dumps), st.binary(max_size=200),
                      st.text(max_size=200).map(str.encode), st.sampled_from(
                          [b"", b"NaN", b"[NaN]", b"1e400", b'{"id": Infinity, "method": "getHealth"}', b"[]",
                           b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe", b'"\\ud800"', b"[1,2,3]"])))
def test_any_body(ledger: Ledger, body: bytes) -> None:
    _check_exchange(ledger, body)
    _still_healthy(ledger)


@FUZZ
@given(data=st.data())
def test_near_valid_params(ledger: Ledger, data: st.DataObject) -> None:
    templates = _templates(ledger)
    method = data.draw(st.sampled_from(sorted(templates)))
    params = data.draw(near_valid(templates, method) | json_values)
    req = {"jsonrpc": "2.0", "id": data.draw(st.integers() | st.text(max_size=5)), "method": method, "params": params}
    resp = _check_exchange(ledger, _dumps(req))
    event(f"{method}: {resp.get('error', {}).get('code', 'result') if isinstance(resp, dict) else 'batch'}")
    _still_healthy(ledger)


@FUZZ
@given(data=st.data())
def test_batches_and_ids(ledger: Ledger, data: st.DataObject) -> None:
    templates = _templates(ledger)
    good = st.sampled_from(sorted(templates)).flatmap(
        lambda m: st.sampled_from(templates[m]).map(lambda p, m=m: {"method": m, "params": p}))
    bad = st.one_of(near_valid(templates).map(lambda p: {"method": "getBalance", "params": p}),
                    st.builds(lambda m: {"method": m}, st.text(max_size=10) | json_values), json_values)

    def request(body: Any) -> Any:
        if not isinstance(body, dict):
            return body
        out = {"jsonrpc": "2.0", **body}
        if data.draw(st.booleans()):
            out["id"] = data.draw(ids)
        return out
    batch = data.draw(st.lists((good | bad).map(request), min_size=0, max_size=MAX_BATCH + 2))
    _check_exchange(ledger, _dumps(batch))
    _still_healthy(ledger)


def test_airdrops_refuse_what_they_should(ledger: Ledger) -> None:
    """Only an amount a faucet may give moves funds; everything else is refused before the faucet."""
    to = str(Keypair().pubkey())
    for amount in (0, -1, 1000 * SOL + 1, 2**64, 10**30, 1.5, True, "5", None, [5], {"x": 5}):
        resp = ledger.call("requestAirdrop", to, amount)
        assert resp["error"]["code"] == -32602, (amount, resp)
    body = b'{"jsonrpc":"2.0","id":1,"method":"requestAirdrop","params":["%s",1e400]}' % to.encode()
    assert _strict(_post(ledger, body).content)["error"]["code"] == -32700
    time.sleep(0.1)
    assert ledger.call("getBalance", to)["result"]["value"] == 0


# ---------------------------------------------------------------- websocket
_WS_METHODS = ["accountSubscribe", "programSubscribe", "signatureSubscribe", "slotSubscribe", "logsSubscribe",
               "accountUnsubscribe", "programUnsubscribe", "signatureUnsubscribe", "slotUnsubscribe",
               "logsUnsubscribe"]


def _ws_templates(lg: Ledger) -> dict[str, list[list[Any]]]:
    p = str(lg.payer.pubkey())
    return {
        "accountSubscribe": [[p, {"encoding": "base64", "commitment": "confirmed"}], [p],
                             [p, {"encoding": "base58", "dataSlice": {"offset": 0, "length": 4}}]],
        "programSubscribe": [[SYSTEM, {"encoding": "base64", "filters": [
            {"dataSize": 0}, {"memcmp": {"offset": 0, "bytes": "1"}}]}], [SYSTEM]],
        "signatureSubscribe": [[lg.signature, {"commitment": "finalized"}], [b58encode(bytes(64))]],
        "slotSubscribe": [[]],
        "logsSubscribe": [["all"], [{"mentions": [p]}, {"commitment": "processed"}], ["allWithVotes"]],
        **{m: [[1], [2**63]] for m in _WS_METHODS if m.endswith("Unsubscribe")},
    }


def _replies(ws: Any, n: int) -> list[dict[str, Any]]:
    """The next ``n`` replies (messages with an id, skipping notifications)."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = _strict(ws.recv(timeout=5).encode())
        if isinstance(msg, dict) and "method" in msg and "id" not in msg:
            continue
        out.append(msg)
    return out


def _ws_expected(body: bytes | str) -> int:
    raw = body.encode() if isinstance(body, str) else body
    if not _is_json(raw):
        return 1
    req = _strict(raw)
    return len(req) if isinstance(req, list) and 0 < len(req) <= MAX_BATCH else 1


def _airdrop_lands(lg: Ledger) -> None:
    """A transaction after the garbage still executes and is reported as landed."""
    to = str(Keypair().pubkey())
    resp = lg.call("requestAirdrop", to, SOL // 100)
    assert "result" in resp, resp
    assert lg.call("getBalance", to)["result"]["value"] == SOL // 100


@FUZZ
@given(data=st.data())
def test_websocket_garbage(ledger: Ledger, data: st.DataObject) -> None:
    templates = _ws_templates(ledger)
    near = st.sampled_from(_WS_METHODS).flatmap(
        lambda m: st.sampled_from(templates[m]).flatmap(mutated).map(lambda p, m=m: {"method": m, "params": p}))
    valid = st.sampled_from(_WS_METHODS).flatmap(
        lambda m: st.sampled_from(templates[m]).map(lambda p, m=m: {"method": m, "params": p}))
    reqs = st.builds(lambda b, i: {"jsonrpc": "2.0", "id": i, **b} if isinstance(b, dict) and "method" in b else b,
                     near | valid | json_values, ids)
    messages = data.draw(st.lists(st.one_of(
        reqs.map(_dumps), st.lists(reqs, max_size=5).map(_dumps), st.binary(max_size=50),
        st.sampled_from([b"", b"NaN", b"[]", b'{"id": NaN, "method": "slotSubscribe"}', b"[" * 100_000])),
        min_size=1, max_size=4))
    with connect(ledger.url.replace("http", "ws"), max_size=None) as ws:
        for m in messages:
            as_text = data.draw(st.booleans())
            if as_text:
                try:
                    frame: bytes | str = m.decode()
                except UnicodeDecodeError:
                    continue
            else:
                frame = m
            ws.send(frame)
            replies = _replies(ws, _ws_expected(m))
            if not _is_json(m):
                assert replies[0]["error"]["code"] == -32700, replies
                continue
            sent = _strict(m)
            if isinstance(sent, list) and not 0 < len(sent) <= MAX_BATCH:
                assert replies[0]["error"]["code"] == -32600, replies
                continue
            for req, resp in zip(sent if isinstance(sent, list) else [sent], replies, strict=True):
                _check_one(req, resp)
        _airdrop_lands(ledger)
        ws.send(_dumps({"jsonrpc": "2.0", "id": "ok", "method": "slotSubscribe"}))
        assert isinstance(_replies(ws, 1)[0]["result"], int)
    _still_healthy(ledger)


# ---------------------------------------------------------------- regressions (each found by the fuzz above)
def _raw(lg: Ledger, body: bytes) -> dict[str, Any]:
    r = _post(lg, body)
    assert r.status_code == 200, (body[:200], r.status_code)
    return _strict(r.content)


@pytest.mark.parametrize("body", [b'{"jsonrpc":"2.0","id":NaN,"method":"getHealth"}',
                                  b'{"jsonrpc":"2.0","id":1e400,"method":"getHealth"}',
                                  b'{"jsonrpc":"2.0","id":1,"method":"getBlockTime","params":[-Infinity]}'])
def test_non_finite_numbers_are_a_parse_error(ledger: Ledger, body: bytes) -> None:
    # were a 500: echoed back, they made the response unserializable (or int() overflowed)
    assert _raw(ledger, body)["error"] == {"code": -32700, "message": "Parse error"}


@pytest.mark.parametrize("rid", [{"a": 1}, [1], True])
def test_an_id_that_is_not_a_string_or_number_is_an_invalid_request(ledger: Ledger, rid: object) -> None:
    resp = _raw(ledger, _dumps({"jsonrpc": "2.0", "id": rid, "method": "getHealth"}))
    assert resp["id"] is None and resp["error"]["code"] == -32600


def test_an_empty_batch_is_an_invalid_request(ledger: Ledger) -> None:
    resp = _raw(ledger, b"[]")  # was [], which no client can match to anything
    assert resp["id"] is None and resp["error"]["code"] == -32600


@pytest.mark.parametrize(("method", "params"), [
    ("getBlockTime", [-(10**30)]), ("getBlockTime", [-1]), ("getBlockTime", [1.0]), ("getBlock", [2**64]),
    ("getBlocks", [0, -5]), ("getBlocks", ["1"]),
    ("getMinimumBalanceForRentExemption", [-1]), ("getMinimumBalanceForRentExemption", [2**64]),
    ("getMinimumBalanceForRentExemption", [False]),
    ("getSignaturesForAddress", [SYSTEM, {"limit": 10**30}]), ("getSignaturesForAddress", [SYSTEM, {"limit": 0}]),
    ("getAccountInfo", [SYSTEM, {"dataSlice": {"offset": 2**64, "length": 1}}]),
    ("getAccountInfo", [SYSTEM, {"dataSlice": {"offset": True, "length": 1}}]),
])
def test_numbers_out_of_range_or_of_the_wrong_type_are_invalid_params(ledger: Ledger, method: str,
                                                                      params: list[Any]) -> None:
    # were 500s (OverflowError from SQLite, int() or the runtime), or a cleaned-up block for slot -1
    resp = ledger.call(method, *params)
    assert resp["error"]["code"] == -32602, resp


@pytest.mark.parametrize("filters", [
    [{"memcmp": {"offset": 0, "bytes": 5}}], [{"dataSize": -1}], [{"dataSize": 2**64}], "dataSize",
    [{"memcmp": {"offset": -1, "bytes": "1"}}], [{"memcmp": {"offset": 0, "bytes": "1" * 176}}],
    [{"memcmp": {"offset": 0, "bytes": "AA==", "encoding": "hex"}}], [{}], {"dataSize": 0}, [{"dataSize": 0}] * 5,
])
def test_bad_filters_are_invalid_params(ledger: Ledger, filters: object) -> None:
    # were 500s, or silently matched everything, and were only checked when an account was there to match
    for owner in (SYSTEM, str(Keypair().pubkey())):
        resp = ledger.call("getProgramAccounts", owner, {"filters": filters})
        assert resp["error"]["code"] == -32602, resp


@pytest.mark.parametrize(("method", "encoding", "text"), [
    ("sendTransaction", "base58", "z" * 1_000_000), ("simulateTransaction", "base58", "z" * 1_000_000),
    ("sendTransaction", "base64", "A" * 1_000_000)])
def test_an_oversized_transaction_is_refused_at_once(ledger: Ledger, method: str, encoding: str, text: str) -> None:
    # base58 decoding is quadratic: a megabyte held a worker thread for minutes, and forty such requests
    # would hold them all
    start = time.monotonic()
    resp = ledger.call(method, text, {"encoding": encoding})
    assert resp["error"]["code"] == -32602 and "too large" in resp["error"]["message"], resp
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("blockhash", ["x", "1" * 31, SYSTEM + "1", 5, None])
def test_is_blockhash_valid_with_a_bad_hash_is_invalid_params(ledger: Ledger, blockhash: object) -> None:
    # solders' ParseHashError is no ValueError: it was a 500
    assert ledger.call("isBlockhashValid", blockhash)["error"]["code"] == -32602


@pytest.mark.parametrize(("method", "params"), [
    ("getSignatureStatuses", ["abc"]), ("getMultipleAccounts", [SYSTEM]), ("getMultipleAccounts", [{SYSTEM: 1}]),
    ("getRecentPrioritizationFees", [SYSTEM]),
])
def test_a_string_where_a_list_belongs_is_invalid_params(ledger: Ledger, method: str, params: list[Any]) -> None:
    # was read character by character: a status per letter
    assert ledger.call(method, *params)["error"]["code"] == -32602


@pytest.mark.parametrize("accounts", [[], "x", 5, {"addresses": SYSTEM}])
def test_simulate_with_accounts_not_an_object_is_invalid_params(ledger: Ledger, accounts: object) -> None:
    resp = ledger.call("simulateTransaction", base64.b64encode(bytes(ledger.tx)).decode(),
                       {"encoding": "base64", "accounts": accounts})
    assert resp["error"]["code"] == -32602, resp  # a list or string was an AttributeError: a 500


def _ws(lg: Ledger) -> Any:
    return connect(lg.url.replace("http", "ws"), max_size=None)


@pytest.mark.parametrize(("frame", "code"), [
    (b"\x00\x01", -32700), (b'{"jsonrpc":"2.0","id":1,"method":"slotSubscribe"}', None), ("[]", -32600),
    ('{"jsonrpc":"2.0","id":1,"method":"slotUnsubscribe","params":[1e400]}', -32700),
    ('{"jsonrpc":"2.0","id":NaN,"method":"slotSubscribe"}', -32700),
    ('{"jsonrpc":"2.0","id":1,"method":"slotUnsubscribe","params":[-1]}', -32602),
    ('{"jsonrpc":"2.0","id":1,"method":"slotUnsubscribe","params":[1.5]}', -32602),
])
def test_websocket_refusals(ledger: Ledger, frame: bytes | str, code: int | None) -> None:
    # a binary frame and an infinite id crashed the connection's handler, an empty batch went unanswered,
    # NaN was echoed (not JSON)
    with _ws(ledger) as ws:
        ws.send(frame)
        reply = _replies(ws, 1)[0]
        if code is None:
            assert isinstance(reply["result"], int)
        else:
            assert reply["error"]["code"] == code, reply
        ws.send(_dumps({"jsonrpc": "2.0", "id": 2, "method": "slotSubscribe"}))
        assert isinstance(_replies(ws, 1)[0]["result"], int)


def test_a_subscription_with_bad_filters_is_refused_and_breaks_no_transaction(ledger: Ledger) -> None:
    # was accepted, then raised in the chain's thread while notifying: every transaction touching a
    # system account answered 500 although it had landed
    with _ws(ledger) as ws:
        ws.send(_dumps({"jsonrpc": "2.0", "id": 1, "method": "programSubscribe",
                        "params": [SYSTEM, {"filters": [{"memcmp": {"offset": 0, "bytes": 5}}]}]}))
        assert _replies(ws, 1)[0]["error"]["code"] == -32602
        _airdrop_lands(ledger)


def test_an_account_notification_in_base58_of_a_large_account_breaks_no_transaction(ledger: Ledger) -> None:
    # base58 is accountSubscribe's default; the 128-byte limit of getAccountInfo raised in the chain's
    # thread while notifying, and the sender of the transaction (which had landed) was told -32602
    from solders.system_program import CreateAccountParams, create_account

    payer, new = Keypair(), Keypair()
    assert "result" in ledger.call("requestAirdrop", str(payer.pubkey()), SOL)
    with _ws(ledger) as ws:
        ws.send(_dumps({"jsonrpc": "2.0", "id": 1, "method": "accountSubscribe", "params": [str(new.pubkey())]}))
        assert isinstance(_replies(ws, 1)[0]["result"], int)
        bh = ledger.chain.latest_blockhash()[0]
        ix = create_account(CreateAccountParams(from_pubkey=payer.pubkey(), to_pubkey=new.pubkey(), lamports=SOL // 10,
                                                space=200, owner=payer.pubkey()))
        tx = Transaction([payer, new], Message.new_with_blockhash([ix], payer.pubkey(), bh), bh)
        resp = ledger.call("sendTransaction", base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"})
        assert resp.get("result") == str(tx.signatures[0]), resp
        while True:
            note = _strict(ws.recv(timeout=5).encode())
            if note.get("method") == "accountNotification":
                break
        data, enc = note["params"]["result"]["value"]["data"]
        assert enc == "base58" and len(b58decode(data)) == 200


def test_a_failing_listener_does_not_fail_the_transaction_it_hears_of(tmp_path, caplog):
    """The ledger has changed by the time listeners hear of it: a listener's failure is logged, and the sender
    is told its transaction landed (told otherwise, it would send a landed transfer again)."""
    from solders.keypair import Keypair

    from splitup.market.localnet.chain import ChainListener

    class Broken(ChainListener):
        def on_transaction(self, record, accounts):  # noqa: ANN001 - the protocol's
            raise RuntimeError("a subscriber's bug")

        def on_slot(self, slot, parent):  # noqa: ANN001
            raise RuntimeError("a subscriber's bug")

    chain = LocalChain(tmp_path / "ledger")
    try:
        chain.add_listener(Broken())
        to = Keypair().pubkey()
        chain.airdrop(to, 10**9)  # raises if the transfer is reported failed
        chain.tick()
        assert chain.svm.get_balance(to) == 10**9
        assert sum("a chain listener failed" in r.getMessage() for r in caplog.records) == 2
    finally:
        chain.close()


@pytest.mark.parametrize("sig", ["abc", "1" * 88, "z" * 100_000, 5, None, ["x"]])
def test_a_malformed_signature_is_invalid_params(ledger: Ledger, sig: object) -> None:
    # were looked up as they came (a status of null for "abc", as if it might land yet)
    for method, params in (("getSignatureStatuses", [[sig]]), ("getTransaction", [sig]),
                           ("getSignaturesForAddress", [str(ledger.payer.pubkey()), {"before": sig}])):
        if sig is None and method != "getSignatureStatuses":
            continue  # null is an absent option there
        resp = ledger.call(method, *params)
        assert resp["error"]["code"] == -32602, (method, resp)
    assert ledger.call("getSignatureStatuses", [ledger.signature])["result"]["value"][0]["err"] is None
    assert ledger.call("getTransaction", ledger.signature)["result"]["slot"] == ledger.slot
