"""Accounts and transactions in the encodings of Solana's RPC spec: base58, base64, base64+zstd and
jsonParsed for accounts (with ``dataSlice``), json, jsonParsed, base64 and base58 for transactions."""

from __future__ import annotations

import base64
from typing import Any

import zstandard
from solders.message import Message, MessageV0
from solders.transaction import VersionedTransaction

from splitup.market.localnet.b58 import b58encode
from splitup.market.localnet.fees import writable
from splitup.market.localnet.rpc_errors import (
    UNSUPPORTED_TRANSACTION_VERSION,
    RpcError,
    invalid_params,
)
from splitup.market.localnet.wire import u64
from splitup.market.transport import AccountData

U64_MAX = 2**64 - 1
ACCOUNT_ENCODINGS = ("base58", "base64", "base64+zstd", "jsonParsed")
TX_ENCODINGS = ("json", "jsonParsed", "base64", "base58")
BASE58_LIMIT = 128  # bytes: a validator refuses base58 for larger account data


def data_slice(opts: dict[str, Any]) -> tuple[int, int] | None:
    ds = opts.get("dataSlice")
    if ds is None:
        return None
    if not isinstance(ds, dict):
        raise invalid_params("Invalid param: dataSlice needs integer 'offset' and 'length'")
    return u64(ds.get("offset"), "dataSlice offset"), u64(ds.get("length"), "dataSlice length")


def account_encoding(opts: dict[str, Any], default: str = "base64") -> str:
    enc = str(opts.get("encoding", default))
    if enc not in ACCOUNT_ENCODINGS:
        raise invalid_params(f"Invalid param: unknown encoding {enc!r}; expected one of {', '.join(ACCOUNT_ENCODINGS)}")
    return enc


def encode_account(acc: AccountData, encoding: str, slice_: tuple[int, int] | None = None,
                   base58_limit: bool = True) -> dict[str, Any]:
    """``base58_limit``: refuse base58 of more than 128 bytes, as a validator's getAccountInfo does (its
    subscriptions have no such limit: a notification has no one to refuse)."""
    data = acc.data if slice_ is None else acc.data[slice_[0] : slice_[0] + slice_[1]]
    if encoding == "base58":
        if base58_limit and len(data) > BASE58_LIMIT:
            raise invalid_params("Encoded binary (base 58) data should be less than 128 bytes, "
                                 "please use Base64 encoding.")
        encoded: object = [b58encode(data), "base58"]
    elif encoding == "base64+zstd":
        encoded = [base64.b64encode(zstandard.ZstdCompressor().compress(data)).decode(), "base64+zstd"]
    else:  # base64, and jsonParsed for accounts no parser knows (all of ours): the spec falls back to it
        encoded = [base64.b64encode(data).decode(), "base64"]
    return {"lamports": acc.lamports, "owner": str(acc.owner), "data": encoded, "executable": acc.executable,
            "rentEpoch": U64_MAX, "space": len(acc.data)}


def tx_version(tx: VersionedTransaction) -> str | int:
    return 0 if isinstance(tx.message, MessageV0) else "legacy"


def check_version(tx: VersionedTransaction, opts: dict[str, Any]) -> None:
    """A v0 transaction is only shown to clients that declare they can read it, as a validator does."""
    if tx_version(tx) == 0 and opts.get("maxSupportedTransactionVersion") is None:
        raise RpcError(UNSUPPORTED_TRANSACTION_VERSION,
                       "Transaction version (0) is not supported by the requesting client. Please try the request "
                       "again with the following configuration parameter: \"maxSupportedTransactionVersion\": 0")


def _message_json(msg: Message | MessageV0, parsed: bool) -> dict[str, Any]:
    keys = [str(k) for k in msg.account_keys]
    h = msg.header
    if parsed:
        w = writable(msg)
        account_keys: list[Any] = [{"pubkey": k, "signer": i < h.num_required_signatures, "writable": w[i],
                                    "source": "transaction"} for i, k in enumerate(keys)]
        instructions: list[dict[str, Any]] = [
            {"programId": keys[ix.program_id_index], "accounts": [keys[a] for a in bytes(ix.accounts)],
             "data": b58encode(bytes(ix.data)), "stackHeight": None} for ix in msg.instructions]
    else:
        account_keys = keys
        instructions = [{"programIdIndex": ix.program_id_index, "accounts": list(bytes(ix.accounts)),
                         "data": b58encode(bytes(ix.data)), "stackHeight": None} for ix in msg.instructions]
    out: dict[str, Any] = {"accountKeys": account_keys, "recentBlockhash": str(msg.recent_blockhash),
                           "instructions": instructions}
    if not parsed:
        out["header"] = {"numRequiredSignatures": h.num_required_signatures,
                         "numReadonlySignedAccounts": h.num_readonly_signed_accounts,
                         "numReadonlyUnsignedAccounts": h.num_readonly_unsigned_accounts}
    if isinstance(msg, MessageV0):
        out["addressTableLookups"] = [
            {"accountKey": str(t.account_key), "writableIndexes": list(bytes(t.writable_indexes)),
             "readonlyIndexes": list(bytes(t.readonly_indexes))} for t in msg.address_table_lookups]
    return out


def encode_transaction(raw: bytes, encoding: str) -> Any:
    if encoding not in TX_ENCODINGS:
        raise invalid_params(f"Invalid param: unknown encoding {encoding!r}; expected one of {', '.join(TX_ENCODINGS)}")
    if encoding == "base64":
        return [base64.b64encode(raw).decode(), "base64"]
    if encoding == "base58":
        return [b58encode(raw), "base58"]
    tx = VersionedTransaction.from_bytes(raw)
    return {"signatures": [str(s) for s in tx.signatures],
            "message": _message_json(tx.message, encoding == "jsonParsed")}
