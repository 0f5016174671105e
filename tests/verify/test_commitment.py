"""The commitment's canonical serialization, cross-checked by an independent encoder."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitup.verify.commitment import commitment
from splitup.verify.errors import BadCommitmentInput

SALT = bytes(range(16))


def reference_encoding(outputs: dict[str, np.ndarray], salt: bytes) -> bytes:
    """docs/posp.md's layout written out longhand, the way the C side would."""
    out = bytearray(b"SPLITUP-COMMIT-v1\x00")
    out += len(outputs).to_bytes(4, "little")
    for name in sorted(outputs, key=lambda n: n.encode()):
        arr = outputs[name]
        raw = name.encode()
        code = arr.dtype.newbyteorder("<").str.encode()
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes(order="C")
        out += len(raw).to_bytes(4, "little") + raw
        out += bytes([len(code)]) + code
        out += bytes([arr.ndim]) + b"".join(d.to_bytes(8, "little") for d in arr.shape)
        out += len(data).to_bytes(8, "little") + data
    out += len(salt).to_bytes(4, "little") + salt
    return bytes(out)


def test_pinned_vector() -> None:
    # Changing this digest is a protocol change: the chain holds commitments made with the old one.
    out = {"logits": np.arange(6, dtype=np.float32).reshape(2, 3), "tokens": np.array([7, 1], dtype=np.int64)}
    assert commitment(out, SALT).hex() == "52d9bc893a652f8dd2cc7ff427d0c2bc5558701fffbdb04bb98c5244cc8fb33c"
    assert commitment(out, SALT) == hashlib.sha256(reference_encoding(out, SALT)).digest()


DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i8", ">i4", "|u1", "|i1", "|b1", "<u2"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), DTYPES.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))), max_size=4),
    st.binary(min_size=16, max_size=64))
def test_matches_independent_encoder(outputs: dict[str, np.ndarray], salt: bytes) -> None:
    assert commitment(outputs, salt) == hashlib.sha256(reference_encoding(outputs, salt)).digest()


def test_invariant_to_insertion_order_byte_order_and_layout() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([1, 2, 3], dtype=np.int32)
    h = commitment({"a": a, "b": b}, SALT)
    assert commitment({"b": b, "a": a}, SALT) == h
    assert commitment({"a": a.astype(">f4"), "b": b.astype(">i4")}, SALT) == h
    fortran = np.asfortranarray(a)
    assert commitment({"a": fortran, "b": b}, SALT) == h
    assert commitment({"a": a.T.copy().T, "b": b}, SALT) == h


@pytest.mark.parametrize(
    "other",
    [
        {"a": np.arange(12, dtype=np.float32).reshape(4, 3)},  # shape
        {"a": np.arange(12, dtype=np.float32).reshape(12)},  # rank
        {"a": np.arange(12, dtype=np.int32).reshape(3, 4)},  # dtype, same bytes length
        {"A": np.arange(12, dtype=np.float32).reshape(3, 4)},  # name
        {"a": np.arange(1, 13, dtype=np.float32).reshape(3, 4)},  # values
        {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(0, np.float32)},  # extra empty
        # The same bytes split differently across two tensors.
        {"a": np.arange(6, dtype=np.float32).reshape(3, 2), "a2": np.arange(6, 12, dtype=np.float32).reshape(3, 2)},
    ],
)
def test_any_change_changes_the_hash(other: dict) -> None:
    base = {"a": np.arange(12, dtype=np.float32).reshape(3, 4)}
    assert commitment(other, SALT) != commitment(base, SALT)


def test_salt_matters_and_is_checked() -> None:
    out = {"y": np.ones(3, np.float32)}
    assert commitment(out, SALT) != commitment(out, SALT[::-1])
    for bad in (b"", b"x" * 15, b"x" * 1025):
        with pytest.raises(BadCommitmentInput, match="salt"):
            commitment(out, bad)
    with pytest.raises(BadCommitmentInput):
        commitment(out, "not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [np.array(["a"]), np.array([1 + 2j]), np.array([object()], dtype=object)])
def test_uncommittable_dtypes(value: np.ndarray) -> None:
    with pytest.raises(BadCommitmentInput, match="dtype"):
        commitment({"y": value}, SALT)


def test_bad_names() -> None:
    with pytest.raises(BadCommitmentInput, match="names"):
        commitment({"": np.ones(1)}, SALT)
    with pytest.raises(BadCommitmentInput, match="names"):
        commitment({1: np.ones(1)}, SALT)  # type: ignore[dict-item]


def test_scalar_tensor_layout() -> None:
    enc = reference_encoding({"s": np.array(2.5, np.float64)}, SALT)
    assert struct.pack("<B", 0) + struct.pack("<Q", 8) + struct.pack("<d", 2.5) in enc
    assert commitment({"s": np.array(2.5, np.float64)}, SALT) == hashlib.sha256(enc).digest()
