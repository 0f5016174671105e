"""Base58 (Bitcoin alphabet), as Solana's RPC uses for keys, signatures and small data."""

from __future__ import annotations

ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, r = divmod(n, 58)
        out.append(ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return (ALPHABET[:1] * pad + bytes(reversed(out))).decode()


def b58decode(text: str) -> bytes:
    n = 0
    for c in text.encode():
        if c not in _INDEX:
            raise ValueError(f"invalid base58 character {chr(c)!r}")
        n = n * 58 + _INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body
