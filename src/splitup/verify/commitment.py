"""The hashes a node commits to: its salted transcript, and what each call handed on.

The on-chain commitment of a task (``splitup.verify.transcript.Transcript.commitment``) is the call tree
of ``splitup.market.calls`` over each call's ``handoff_digest`` and a *body*, ``commitment(every
transcript tensor, salt)``. ``commitment(outputs, salt)`` is sha256 over this byte string (all integers
little-endian):

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

``handoff_digest(tensors)`` is sha256 over the tensors one call sent to the next node (or back to the
client), unsalted (sender and receiver both compute it, and it is signed, not published):
``b"SPLITUP-HANDOFF-v1\x00"``, u32 count, then per tensor by name as above but with numpy's dtype *name*
("float32", "bfloat16", ...: every type a hop may carry), and the raw bytes in C order.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping

import numpy as np

from splitup.verify.errors import BadCommitmentInput

DOMAIN_TAG = b"SPLITUP-COMMIT-v1\x00"
HANDOFF_TAG = b"SPLITUP-HANDOFF-v1\x00"
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


def handoff_digest(tensors: Mapping[str, np.ndarray]) -> bytes:
    """sha256 of what one call handed on (the module docstring): what its sender signs and commits."""
    h = hashlib.sha256(HANDOFF_TAG + struct.pack("<I", len(tensors)))
    for raw_name, arr in sorted(((str(k).encode("utf-8"), np.asarray(v)) for k, v in tensors.items()),
                                key=lambda item: item[0]):
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(arr)
        kind = data.dtype.name.encode("ascii")
        h.update(struct.pack("<I", len(raw_name)) + raw_name + struct.pack("<B", len(kind)) + kind)
        h.update(struct.pack(f"<B{data.ndim}Q", data.ndim, *data.shape) + struct.pack("<Q", data.nbytes))
        if data.nbytes:
            h.update(memoryview(data.reshape(-1).view(np.uint8)))
    return h.digest()
