"""Small request parsers shared by the HTTP methods and the websocket subscriptions."""

from __future__ import annotations

import base64
from typing import Any

from solders.pubkey import Pubkey

from splitup.market.localnet.b58 import b58decode
from splitup.market.localnet.rpc_errors import invalid_params
from splitup.market.transport import AccountData

MAX_FILTERS = 4  # as a validator: at most four filters per getProgramAccounts / programSubscribe


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
