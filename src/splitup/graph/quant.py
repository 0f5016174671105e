"""Weight-only quantisation as plain ONNX: blocked ``DequantizeLinear`` (opset 21) over int8 / int4 data.

A quantised matrix is stored as its integer values (``int8``, or ``uint4`` with a zero point, packed two
to a byte), one scale per block of ``block`` consecutive elements along the quantised axis, optionally
a zero point per block and, for llama.cpp's Q4_1, an additive minimum per block
(``w = scale * q + min``). ``DequantizeLinear(q, scale, zero_point, axis, block_size)`` is a default-domain
op the validator allows, so a node still runs data, not code; onnxruntime turns ``DequantizeLinear ->
MatMul`` into its 4/8-bit ``MatMulNBits`` kernel when it loads the graph.

Matrices used in a product are blocked along their input axis (axis 0 of the builder's (in, out)
layout), which is what the fused kernels need; tables read by row lookup (embeddings) are blocked along
rows and kept in 8 bits, because no ONNX ``Gather`` reads 4-bit tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from splitup.graph.errors import BuilderError
from splitup.units import DTYPE_CHOICES

QUANT_OPSET = 21  # DequantizeLinear with block_size, int4 / uint4 types
QUANT_IR_VERSION = 10
# Block sizes tried in order: the largest that divides the quantised axis (fewer scales, smaller shards).
DEFAULT_BLOCKS = (256, 128, 64, 32)


@dataclass(frozen=True)
class QuantFormat:
    """How a float model is converted: ``bits`` for matrices (row lookups always use 8)."""

    bits: int
    blocks: tuple[int, ...] = DEFAULT_BLOCKS

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise BuilderError(f"weights can be quantised to 8 or 4 bits, not {self.bits}")

    def block_for(self, size: int) -> int | None:
        return next((b for b in self.blocks if size % b == 0), None)


@dataclass(frozen=True)
class QuantizedArray:
    """Integer values (unpacked: int8 for signed, uint8 for unsigned 4-bit) and per-block parameters."""

    q: np.ndarray
    scale: np.ndarray
    axis: int
    block: int
    bits: int
    zero_point: np.ndarray | None = None
    minimum: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    @property
    def onnx_type(self) -> int:
        if self.bits == 8:
            return TensorProto.INT8 if self.q.dtype == np.int8 else TensorProto.UINT8
        return TensorProto.INT4 if self.q.dtype == np.int8 else TensorProto.UINT4

    @property
    def nbytes(self) -> int:
        """Stored bytes, 4-bit values packed."""
        extra = sum(a.nbytes for a in (self.scale, self.minimum) if a is not None)
        if self.zero_point is not None:
            extra += (self.zero_point.size * self.bits + 7) // 8
        return (self.q.size * self.bits + 7) // 8 + extra

    def _expand(self, a: np.ndarray) -> np.ndarray:
        return np.repeat(a, self.block, axis=self.axis)

    def dequantize(self) -> np.ndarray:
        """float32 values, computed as DequantizeLinear does (then + min)."""
        q = self.q.astype(np.float32)
        if self.zero_point is not None:
            q = q - self._expand(self.zero_point).astype(np.float32)
        w = q * self._expand(self.scale).astype(np.float32)
        if self.minimum is not None:
            w = w + self._expand(self.minimum).astype(np.float32)
        return w

    def transpose(self) -> QuantizedArray:
        t = (lambda a: None if a is None else np.ascontiguousarray(a.T))  # noqa: E731
        return QuantizedArray(t(self.q), t(self.scale), 1 - self.axis, self.block, self.bits,
                              t(self.zero_point), t(self.minimum))

    def with_scale_dtype(self, dtype: str) -> QuantizedArray:
        cast = (lambda a: None if a is None else a.astype(dtype))  # noqa: E731
        return QuantizedArray(self.q, cast(self.scale), self.axis, self.block, self.bits, self.zero_point,
                              cast(self.minimum))


def _blocks(w: np.ndarray, axis: int, block: int) -> np.ndarray:
    """(K, N) -> (K/b, b, N) for axis 0, (K, N/b, b) for axis 1: the block is always axis ``axis + 1``."""
    k, n = w.shape
    return w.reshape(k // block, block, n) if axis == 0 else w.reshape(k, n // block, block)


def quantize(w: np.ndarray, bits: int, block: int, axis: int, *, scale_dtype: str = "float32") -> QuantizedArray:
    """Round to nearest per block: symmetric int8, or asymmetric uint4 with a zero point.

    The scale is rounded to ``scale_dtype`` before the values are, so dequantising with the stored
    scale reproduces exactly what was rounded against.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[axis] % block:
        raise BuilderError(f"cannot quantise a {w.shape} array in blocks of {block} along axis {axis}")
    b = _blocks(w, axis, block)
    red = axis + 1
    if bits == 8:
        amax = np.abs(b).max(axis=red)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(scale_dtype)
        s = np.expand_dims(scale.astype(np.float32), red)
        q = np.clip(np.rint(b / s), -127, 127).astype(np.int8).reshape(w.shape)
        return QuantizedArray(q, scale, axis, block, 8)
    lo = np.minimum(b.min(axis=red), 0.0)
    hi = np.maximum(b.max(axis=red), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0).astype(scale_dtype)
    s = scale.astype(np.float32)
    zp = np.clip(np.rint(-lo / s), 0, 15).astype(np.uint8)
    q = np.clip(np.rint(b / np.expand_dims(s, red)) + np.expand_dims(zp, red), 0, 15).astype(np.uint8)
    return QuantizedArray(q.reshape(w.shape), scale, axis, block, 4, zero_point=zp)


def pack_int4(values: np.ndarray) -> bytes:
    """ONNX's int4/uint4 layout: flattened row-major, element 2i in the low nibble of byte i."""
    flat = (np.asarray(values).reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


def unpack_int4(raw: bytes, count: int, signed: bool) -> np.ndarray:
    b = np.frombuffer(raw, np.uint8)
    out = np.empty(b.size * 2, np.uint8)
    out[0::2], out[1::2] = b & 0xF, b >> 4
    out = out[:count]
    return ((out.astype(np.int8) ^ 8) - 8).astype(np.int8) if signed else out


def integer_tensor(name: str, values: np.ndarray, onnx_type: int) -> TensorProto:
    """An initializer holding quantised values, packed when they are 4-bit."""
    t = TensorProto(name=name, data_type=onnx_type, dims=list(values.shape))
    if onnx_type in (TensorProto.INT4, TensorProto.UINT4):
        t.raw_data = pack_int4(values)
    else:
        t.raw_data = np.ascontiguousarray(values).tobytes()
    return t


def raw_bytes(t: TensorProto) -> np.ndarray:
    """An initializer's stored bytes as a flat uint8 array: how a shard holds 4-bit tensors (safetensors
    has no 4-bit type; the graph's initializer keeps the real type and points at these bytes)."""
    if t.HasField("raw_data"):
        return np.frombuffer(t.raw_data, np.uint8).copy()
    from onnx import numpy_helper

    return np.frombuffer(np.ascontiguousarray(numpy_helper.to_array(t)).tobytes(), np.uint8).copy()


_FLOAT_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                "bf16": "float16", "bfloat16": "float16"}


def resolve_dtype(dtype: str, activations: str | None = None) -> tuple[str, QuantFormat | None]:
    """``--dtype`` -> (activation dtype, weight format). Float names set both; ``int8``/``int4`` set the
    weights and leave activations to ``activations`` (default float32: every engine has its kernels)."""
    acts = None if activations is None else _FLOAT_NAMES.get(activations)
    if activations is not None and acts is None:
        raise BuilderError(f"activations must be fp32 or fp16, not {activations!r}")
    if dtype in _FLOAT_NAMES:
        return acts or _FLOAT_NAMES[dtype], None
    if dtype in ("int8", "int4"):
        return acts or "float32", QuantFormat(int(dtype[3:]))
    raise BuilderError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
