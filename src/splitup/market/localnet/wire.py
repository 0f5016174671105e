"""Small request parsers shared by the HTTP methods and the websocket subscriptions."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from solders.pubkey import Pubkey
from solders.signature import Signature

from splitup import jsonparse
from splitup.market.localnet.b58 import b58decode
from splitup.market.localnet.rpc_errors import invalid_params
from splitup.market.transport import AccountData

MAX_FILTERS = 4  # as a validator: at most four filters per getProgramAccounts / programSubscribe
# A validator's limits on a memcmp filter's bytes: 128 decoded, and what encodes 128 bytes
MAX_MEMCMP_BYTES, MAX_MEMCMP_BASE58, MAX_MEMCMP_BASE64 = 128, 175, 172
U64_MAX = 2**64 - 1
MAX_SIGNATURE_BASE58 = 88  # 64 bytes

Filter = tuple[str, int, bytes]  # ("dataSize", size, b"") or ("memcmp", offset, bytes)


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
    return jsonparse.loads(text, parse_constant=_refuse_constant, parse_float=_finite)


def invalid_request(req: Any) -> dict[str, Any] | None:
    """The JSON-RPC error for a request that is not one (JSON-RPC 2.0: a method name, and an id that is
    a string, a number or null), or None."""
    if (isinstance(req, dict) and isinstance(req.get("method"), str)
            and (req.get("id") is None or isinstance(req["id"], str | int | float) and not isinstance(req["id"], bool))):
        return None
    return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid request"}}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def u64(value: object, what: str) -> int:
    """An integer parameter (slot, size, lamports, offset...): a JSON integer from 0 to 2^64-1, as serde reads a
    u64 (no string, boolean or float)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise invalid_params(f"Invalid param: {what} must be an integer from 0 to {U64_MAX}, got {_shown(value)}")
    return value


def parse_list(value: object, what: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise invalid_params(f"Invalid param: {what} must be an array, got {_shown(value)}")
    if len(value) > most:
        raise invalid_params(f"Too many inputs provided; max {most}")
    return value


def opts(params: list[Any], index: int) -> dict[str, Any]:
    """The options object at ``index``; a null option means its default, as clients send them."""
    found = params[index] if len(params) > index and isinstance(params[index], dict) else {}
    return {k: v for k, v in found.items() if v is not None}


def parse_pubkey(value: object) -> Pubkey:
    try:
        return Pubkey.from_string(str(value))
    except ValueError as exc:
        raise invalid_params(f"Invalid param: {exc}") from exc


def parse_signature(value: object) -> str:
    """A transaction signature param, in its base58 form; refused as a validator refuses it (the length is
    checked before decoding: base58 decoding is quadratic in it)."""
    if not isinstance(value, str) or len(value) > MAX_SIGNATURE_BASE58:
        raise invalid_params(f"Invalid param: not a base58 signature: {_shown(value)}")
    try:
        return str(Signature.from_string(value))
    except ValueError as exc:
        raise invalid_params(f"Invalid param: {exc}") from exc


def _memcmp(mc: object) -> Filter:
    if not isinstance(mc, dict) or not isinstance(mc.get("bytes"), str):
        raise invalid_params("Invalid param: memcmp needs 'offset' and 'bytes' (a string)")
    offset, text, encoding = u64(mc.get("offset"), "memcmp offset"), mc["bytes"], mc.get("encoding", "base58")
    if encoding not in ("base58", "base64"):
        raise invalid_params(f"Invalid param: unknown memcmp encoding {_shown(encoding)}; expected base58 or base64")
    # checked before decoding: base58 decoding is quadratic in the length
    if len(text) > (MAX_MEMCMP_BASE58 if encoding == "base58" else MAX_MEMCMP_BASE64):
        raise invalid_params(f"Invalid param: memcmp encoded bytes too long; max {MAX_MEMCMP_BYTES} bytes")
    try:
        raw = b58decode(text) if encoding == "base58" else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise invalid_params(f"Invalid param: memcmp bytes are not {encoding}: {exc}") from exc
    if len(raw) > MAX_MEMCMP_BYTES:
        raise invalid_params(f"Invalid param: memcmp encoded bytes too long; max {MAX_MEMCMP_BYTES} bytes")
    return "memcmp", offset, raw


def parse_filters(value: object) -> list[Filter]:
    """getProgramAccounts' and programSubscribe's filters, checked when they arrive, not each time an
    account is matched (by then, for a subscription, in the chain's thread where no one can be told)."""
    if value is None:
        return []
    if isinstance(value, list) and len(value) > MAX_FILTERS:
        raise invalid_params(f"Too many filters provided; max {MAX_FILTERS}")
    out: list[Filter] = []
    for f in parse_list(value, "filters", MAX_FILTERS):
        if isinstance(f, dict) and len(f) == 1 and "dataSize" in f:
            out.append(("dataSize", u64(f["dataSize"], "dataSize"), b""))
        elif isinstance(f, dict) and len(f) == 1 and "memcmp" in f:
            out.append(_memcmp(f["memcmp"]))
        else:
            raise invalid_params(f"Invalid param: unknown filter {_shown(f)}; expected dataSize or memcmp")
    return out


def matches_filters(acc: AccountData, filters: list[Filter]) -> bool:
    for kind, n, raw in filters:
        if kind == "dataSize" and len(acc.data) != n:
            return False
        if kind == "memcmp" and acc.data[n : n + len(raw)] != raw:
            return False
    return True
