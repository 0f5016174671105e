"""Byte sizes of ONNX tensors from element type and dimensions alone (no data is ever read)."""

from __future__ import annotations

from collections.abc import Iterable

from onnx import TensorProto

from splitup.graph.errors import MalformedGraph, StringTensor

# Bits per element. Sub-byte types are packed, two (or more) elements per byte.
_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
    TensorProto.UINT16: 16,
    TensorProto.INT16: 16,
    TensorProto.INT32: 32,
    TensorProto.INT64: 64,
    TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32,
    TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64,
    TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
    TensorProto.FLOAT8E4M3FN: 8,
    TensorProto.FLOAT8E4M3FNUZ: 8,
    TensorProto.FLOAT8E5M2: 8,
    TensorProto.FLOAT8E5M2FNUZ: 8,
    TensorProto.UINT4: 4,
    TensorProto.INT4: 4,
    TensorProto.FLOAT4E2M1: 4,
}


def element_bits(elem_type: int, *, where: str) -> int:
    """Bits per element, refusing strings (unbounded size) and types this build does not know."""
    if elem_type == TensorProto.STRING:
        raise StringTensor("string tensors are not allowed (their size has no static bound)", where=where)
    bits = _BITS.get(elem_type)
    if bits is None:
        raise MalformedGraph(f"unknown or unsupported element type {elem_type}", where=where)
    return bits


def element_count(dims: Iterable[int]) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def tensor_bytes(elem_type: int, dims: Iterable[int], *, where: str) -> int:
    """Exact storage bytes; Python ints, so absurd shapes cannot overflow into small numbers."""
    bits = element_bits(elem_type, where=where)
    return (element_count(dims) * bits + 7) // 8
