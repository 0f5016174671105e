"""The hash a node commits on chain before it knows whether its task will be verified.

``commitment(outputs, salt)`` is sha256 over this byte string (all integers little-endian):

    b"SPLITUP-COMMIT-v1\\x00"                                   domain tag, 18 bytes
    u32 number of tensors
    for each tensor, names ordered by their UTF-8 bytes:
        u32 len(name) ++ name as UTF-8
        u8  len(dtype) ++ dtype as ASCII, numpy's little-endian code ("<f4", "<i8", "|u1", "|b1")
        u8  ndim ++ ndim x u64 dims
        u64 len(data) ++ data: the elements in C order, little-endian
    u32 len(salt) ++ salt

Every field is length-prefixed, so no two different output sets serialize to the same bytes. The salt
(16 to 1024 random bytes, revealed when the commitment is opened) keeps a low-entropy output, such as
a handful of token ids, from being guessed off the chain by hashing candidates.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping

import numpy as np

from splitup.verify.errors import BadCommitmentInput

DOMAIN_TAG = b"SPLITUP-COMMIT-v1\x00"
MIN_SALT = 16
MAX_SALT = 1024
# bool, signed and unsigned integers, IEEE floats: the kinds every engine and the C program agree on.
_KINDS = "biuf"


def canonical_dtype(dtype: np.dtype) -> str:
    """numpy's dtype code with the byte order forced to little-endian ('|' for one-byte types)."""
    dt = np.dtype(dtype)
    if dt.kind not in _KINDS:
        raise BadCommitmentInput(f"dtype {dt} cannot be committed (bool, integer or float only)")
    return dt.newbyteorder("<").str


def commitment(outputs: Mapping[str, np.ndarray], salt: bytes) -> bytes:
    """sha256 of the canonical serialization above: 32 bytes."""
    h = hashlib.sha256()
    for chunk in serialize(outputs, salt):
        h.update(chunk)
    return h.digest()


def serialize(outputs: Mapping[str, np.ndarray], salt: bytes) -> Iterator[bytes | memoryview]:
    """Yield the canonical byte string in pieces, so large tensors are hashed without a copy of all."""
    if not isinstance(salt, bytes | bytearray | memoryview):
        raise BadCommitmentInput("salt must be bytes")
    salt = bytes(salt)
    if not MIN_SALT <= len(salt) <= MAX_SALT:
        raise BadCommitmentInput(f"salt must be {MIN_SALT} to {MAX_SALT} bytes, got {len(salt)}")
    named = []
    for name, value in outputs.items():
        if not isinstance(name, str) or not name:
            raise BadCommitmentInput(f"output names must be non-empty strings, got {name!r}")
        named.append((name.encode("utf-8"), np.asarray(value)))
    named.sort(key=lambda item: item[0])
    yield DOMAIN_TAG
    yield struct.pack("<I", len(named))
    for raw_name, arr in named:
        code = canonical_dtype(arr.dtype)
        if arr.ndim > 255:
            raise BadCommitmentInput(f"tensor {raw_name.decode()} has more than 255 dimensions")
        data = np.ascontiguousarray(arr, dtype=np.dtype(code))
        yield struct.pack("<I", len(raw_name)) + raw_name
        yield struct.pack("<B", len(code)) + code.encode("ascii")
        yield struct.pack(f"<B{arr.ndim}Q", arr.ndim, *arr.shape)
        yield struct.pack("<Q", data.nbytes)
        yield memoryview(data).cast("B") if data.nbytes else b""
    yield struct.pack("<I", len(salt)) + salt
