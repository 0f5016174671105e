"""Small request parsers shared by the HTTP methods and the websocket subscriptions."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from solders.pubkey import Pubkey

from splitup.market.localnet.b58 import b58decode
from splitup.market.localnet.rpc_errors import invalid_params
from splitup.market.transport import AccountData

MAX_FILTERS = 4  # as a validator: at most four filters per getProgramAccounts / programSubscribe


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def parse_json(text: str | bytes) -> Any:
    """A request body as a validator parses it: NaN, Infinity and numbers beyond a double are not JSON
    (Python's parser accepts them, and a reply echoing one could not be written). ValueError if malformed."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError as exc:  # nested deeper than the parser's stack
        raise ValueError("nested too deeply") from exc


def invalid_request(req: Any) -> dict[str, Any] | None:
    """The JSON-RPC error for a request that is not one (JSON-RPC 2.0: a method name, and an id that is
    a string, a number or null), or None."""
    if (isinstance(req, dict) and isinstance(req.get("method"), str)
            and (req.get("id") is None or isinstance(req["id"], str | int | float) and not isinstance(req["id"], bool))):
        return None
    return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid request"}}


def opts(params: list[Any], index: int) -> dict[str, Any]:
    """The options object at ``index``; a null option means its default, as clients send them."""
    found = params[index] if len(params) > index and isinstance(params[index], dict) else {}
    return {k: v for k, v in found.items() if v is not None}


def parse_pubkey(value: object) -> Pubkey:
    try:
        return Pubkey.from_string(str(value))
    except ValueError as exc:
        raise invalid_params(f"Invalid param: {exc}") from exc


def matches_filters(acc: AccountData, filters: list[dict[str, Any]]) -> bool:
    if len(filters) > MAX_FILTERS:
        raise invalid_params(f"Too many filters provided; max {MAX_FILTERS}")
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
