"""A tinygrad-flavoured builder that emits ONNX graphs.

Model families are written once against this API: with parameters bound to arrays the result is a
runnable model, with shape-only parameters it is a planning graph of any size (LLaMA-70B included)
whose weights never exist in memory.

Conventions the rest of SplitUp relies on:
- symbolic input dimensions are strings; their maxima go to ``metadata_props["splitup.dim_max"]``;
- shape-only parameters are initializers whose data is external, at ``SHAPE_ONLY_LOCATION``;
- stateful inputs (KV cache) are paired with the outputs that replace them in
  ``metadata_props["splitup.state"]`` (``{"past.0.key": "present.0.key", ...}``);
- every node and parameter name starts with the builder scope it was made in (``layers.3.attn...``),
  which is how plans report layers.

Graphs stay shape-inferable with concrete inputs: dynamic lengths flow through ``Shape``,
``ConstantOfShape``, ``CumSum`` and ``Trilu`` (never ``Range`` or data-dependent ``Slice``), so the
validator can bound every intermediate tensor.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitup.graph.errors import BuilderError
from splitup.graph.meta import DIM_MAX_KEY, STATE_KEY
from splitup.graph.quant import (
    QUANT_IR_VERSION,
    QUANT_OPSET,
    QuantFormat,
    QuantizedArray,
    integer_tensor,
    quantize,
)

Dim = int | str
Shape = tuple[Dim, ...]

OPSET = 18
SHAPE_ONLY_LOCATION = "weights.safetensors"

DTYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int4": TensorProto.INT4,
    "uint4": TensorProto.UINT4,
    "bool": TensorProto.BOOL,
}
FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


def dtype_name(dtype: str | np.dtype | type) -> str:
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise BuilderError(f"unknown dtype {dtype!r}") from exc
    if name not in DTYPES:
        raise BuilderError(f"unsupported dtype {name!r}; use one of {sorted(DTYPES)}")
    return name


def _dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    return f"{a}+{b}"


def _broadcast(a: Shape, b: Shape) -> Shape:
    out: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif isinstance(x, int) and isinstance(y, int):
            raise BuilderError(f"shapes {a} and {b} do not broadcast")
        else:
            # Two different symbols: the graph is only valid when they agree at run time.
            out.append(x if isinstance(x, str) else y)
    return tuple(reversed(out))


class Tensor:
    """A value in the graph under construction. Operators add nodes to the owning context."""

    __slots__ = ("ctx", "name", "shape", "dtype")

    def __init__(self, ctx: TensorContext, name: str, shape: Shape, dtype: str) -> None:
        self.ctx = ctx
        self.name = name
        self.shape = tuple(shape)
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _axis(self, axis: int) -> int:
        if not -self.ndim <= axis < max(self.ndim, 1):
            raise BuilderError(f"axis {axis} out of range for {self}")
        return axis % max(self.ndim, 1)

    def _other(self, other: Tensor | float | int) -> Tensor:
        if isinstance(other, Tensor):
            return other
        return self.ctx.constant(np.array(other, dtype=self.dtype))

    def _binary(self, op: str, other: Tensor | float | int, out_dtype: str | None = None) -> Tensor:
        o = self._other(other)
        if o.dtype != self.dtype:
            raise BuilderError(f"{op}: dtype mismatch {self.dtype} vs {o.dtype} ({self.name}, {o.name})")
        return self.ctx.op(op, [self, o], _broadcast(self.shape, o.shape), out_dtype or self.dtype)

    def _unary(self, op: str, **attrs: Any) -> Tensor:
        return self.ctx.op(op, [self], self.shape, self.dtype, **attrs)

    # arithmetic
    def __add__(self, o: Tensor | float) -> Tensor:
        return self._binary("Add", o)

    def __radd__(self, o: float) -> Tensor:
        return self._other(o)._binary("Add", self)

    def __sub__(self, o: Tensor | float) -> Tensor:
        return self._binary("Sub", o)

    def __rsub__(self, o: float) -> Tensor:
        return self._other(o)._binary("Sub", self)

    def __mul__(self, o: Tensor | float) -> Tensor:
        return self._binary("Mul", o)

    def __rmul__(self, o: float) -> Tensor:
        return self._other(o)._binary("Mul", self)

    def __truediv__(self, o: Tensor | float) -> Tensor:
        return self._binary("Div", o)

    def __rtruediv__(self, o: float) -> Tensor:
        return self._other(o)._binary("Div", self)

    def __pow__(self, o: Tensor | float) -> Tensor:
        return self._binary("Pow", o)

    def __neg__(self) -> Tensor:
        return self._unary("Neg")

    def __matmul__(self, o: Tensor | QuantizedParameter) -> Tensor:
        return self.matmul(o)

    # comparisons produce bool tensors
    def __lt__(self, o: Tensor | float) -> Tensor:
        return self._binary("Less", o, "bool")

    def __le__(self, o: Tensor | float) -> Tensor:
        return self._binary("LessOrEqual", o, "bool")

    def __gt__(self, o: Tensor | float) -> Tensor:
        return self._binary("Greater", o, "bool")

    def __ge__(self, o: Tensor | float) -> Tensor:
        return self._binary("GreaterOrEqual", o, "bool")

    def eq(self, o: Tensor | float) -> Tensor:
        return self._binary("Equal", o, "bool")

    def matmul(self, o: Tensor | QuantizedParameter) -> Tensor:
        if isinstance(o, QuantizedParameter):
            return o.rmatmul(self)
        if self.ndim < 2 or o.ndim < 2:
            raise BuilderError(f"matmul needs rank >= 2 operands, got {self.shape} @ {o.shape}")
        k1, k2 = self.shape[-1], o.shape[-2]
        if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
            raise BuilderError(f"matmul inner dimensions differ: {self.shape} @ {o.shape}")
        if o.dtype != self.dtype:
            raise BuilderError(f"matmul dtype mismatch {self.dtype} vs {o.dtype}")
        batch = _broadcast(self.shape[:-2], o.shape[:-2])
        return self.ctx.op("MatMul", [self, o], (*batch, self.shape[-2], o.shape[-1]), self.dtype)

    def linear(self, weight: Tensor | QuantizedParameter, bias: Tensor | None = None) -> Tensor:
        """``x @ weight + bias`` with weight stored as (in_features, out_features)."""
        out = self.matmul(weight)
        return out + bias if bias is not None else out

    # elementwise functions
    def relu(self) -> Tensor:
        return self._unary("Relu")

    def sigmoid(self) -> Tensor:
        return self._unary("Sigmoid")

    def tanh(self) -> Tensor:
        return self._unary("Tanh")

    def exp(self) -> Tensor:
        return self._unary("Exp")

    def log(self) -> Tensor:
        return self._unary("Log")

    def sqrt(self) -> Tensor:
        return self._unary("Sqrt")

    def erf(self) -> Tensor:
        return self._unary("Erf")

    def abs(self) -> Tensor:
        return self._unary("Abs")

    def reciprocal(self) -> Tensor:
        return self._unary("Reciprocal")

    def silu(self) -> Tensor:
        return self * self.sigmoid()

    def gelu(self, approximate: str = "none") -> Tensor:
        """Decomposed so that it runs on opset 18 engines; ``tanh`` is GPT-2's ``gelu_new``."""
        if approximate == "tanh":
            inner = (self + self * self * self * 0.044715) * math.sqrt(2.0 / math.pi)
            return self * 0.5 * (inner.tanh() + 1.0)
        if approximate != "none":
            raise BuilderError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
        return self * 0.5 * ((self * (1.0 / math.sqrt(2.0))).erf() + 1.0)

    def softmax(self, axis: int = -1) -> Tensor:
        return self._unary("Softmax", axis=self._axis(axis))

    def cast(self, dtype: str) -> Tensor:
        dtype = dtype_name(dtype)
        return self.ctx.op("Cast", [self], self.shape, dtype, to=DTYPES[dtype])

    # reductions and normalisations
    def _reduce(self, op: str, axis: int | Sequence[int], keepdim: bool) -> Tensor:
        axes = sorted({self._axis(a) for a in ([axis] if isinstance(axis, int) else axis)})
        shape = tuple(
            (1 if keepdim else None) if i in axes else d for i, d in enumerate(self.shape)
        )
        ax = self.ctx.constant(np.array(axes, dtype=np.int64))
        out_shape = tuple(d for d in shape if d is not None)
        return self.ctx.op(op, [self, ax], out_shape, self.dtype, keepdims=int(keepdim))

    def mean(self, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:
        return self._reduce("ReduceMean", axis, keepdim)

    def sum(self, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:
        return self._reduce("ReduceSum", axis, keepdim)

    def max(self, axis: int | Sequence[int] = -1, keepdim: bool = False) -> Tensor:
        return self._reduce("ReduceMax", axis, keepdim)

    def layernorm(self, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
        inputs = [self, weight] + ([bias] if bias is not None else [])
        return self.ctx.op("LayerNormalization", inputs, self.shape, self.dtype, axis=-1, epsilon=eps)

    def rmsnorm(self, weight: Tensor, eps: float = 1e-6) -> Tensor:
        """LLaMA's RMSNorm, decomposed (RMSNormalization needs opset 23, which few engines run)."""
        return self * ((self * self).mean(-1, keepdim=True) + eps).sqrt().reciprocal() * weight

    # shape manipulation
    def reshape(self, *shape: Dim | Sequence[Dim]) -> Tensor:
        """Reshape; a symbolic entry equal to the input's dimension at that index is kept (ONNX ``0``)."""
        if len(shape) == 1 and isinstance(shape[0], list | tuple):
            shape = tuple(shape[0])
        spec: list[int] = []
        out: list[Dim] = []
        for i, d in enumerate(shape):
            if isinstance(d, str):
                if i < self.ndim and self.shape[i] == d:
                    spec.append(0)
                    out.append(d)
                    continue
                spec.append(-1)
                out.append(d)
            elif d == -1:
                spec.append(-1)
                out.append(self._infer_minus_one(shape))
            else:
                spec.append(int(d))
                out.append(int(d))
        if spec.count(-1) > 1:
            raise BuilderError(f"reshape {self.shape} -> {shape}: at most one dimension can be inferred")
        return self.ctx.op(
            "Reshape", [self, self.ctx.constant(np.array(spec, dtype=np.int64))], tuple(out), self.dtype
        )

    def _infer_minus_one(self, shape: Sequence[Dim]) -> Dim:
        known = [d for d in shape if isinstance(d, int) and d != -1]
        if all(isinstance(d, int) for d in self.shape):
            total = math.prod(int(d) for d in self.shape)
            rest = math.prod(known) if known else 1
            if rest == 0 or total % rest:
                raise BuilderError(f"cannot reshape {self.shape} into {tuple(shape)}")
            return total // rest
        return "*".join(str(d) for d in self.shape if d not in shape) or 1

    def permute(self, *dims: int) -> Tensor:
        if len(dims) == 1 and isinstance(dims[0], list | tuple):
            dims = tuple(dims[0])
        perm = [self._axis(d) for d in dims]
        if sorted(perm) != list(range(self.ndim)):
            raise BuilderError(f"permute {dims} is not a permutation of {self.ndim} axes")
        return self.ctx.op("Transpose", [self], tuple(self.shape[p] for p in perm), self.dtype, perm=perm)

    def transpose(self, a: int = -2, b: int = -1) -> Tensor:
        perm = list(range(self.ndim))
        a, b = self._axis(a), self._axis(b)
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute(*perm)

    @property
    def T(self) -> Tensor:  # noqa: N802 - numpy's name
        return self.transpose()

    def unsqueeze(self, axis: int) -> Tensor:
        axis = axis % (self.ndim + 1)
        shape = (*self.shape[:axis], 1, *self.shape[axis:])
        ax = self.ctx.constant(np.array([axis], dtype=np.int64))
        return self.ctx.op("Unsqueeze", [self, ax], shape, self.dtype)

    def squeeze(self, axis: int) -> Tensor:
        axis = self._axis(axis)
        if self.shape[axis] != 1:
            raise BuilderError(f"cannot squeeze axis {axis} of {self.shape}")
        ax = self.ctx.constant(np.array([axis], dtype=np.int64))
        return self.ctx.op("Squeeze", [self, ax], self.shape[:axis] + self.shape[axis + 1 :], self.dtype)

    def expand(self, *shape: int) -> Tensor:
        """Broadcast to ``shape``; entries of 1 keep the input's (possibly symbolic) dimension."""
        target = self.ctx.constant(np.array(shape, dtype=np.int64))
        return self.ctx.op("Expand", [self, target], _broadcast(self.shape, tuple(shape)), self.dtype)

    def flatten(self, start: int = 1) -> Tensor:
        start = self._axis(start)
        tail = self.shape[start:]
        flat: Dim = math.prod(tail) if all(isinstance(d, int) for d in tail) else "*".join(map(str, tail))
        return self.ctx.op("Flatten", [self], (*self.shape[:start], flat), self.dtype, axis=start)

    def cat(self, *others: Tensor, axis: int = 0) -> Tensor:
        return self.ctx.cat([self, *others], axis=axis)

    def gather(self, indices: Tensor, axis: int = 0) -> Tensor:
        """``self`` indexed along ``axis`` by integer ``indices`` (an embedding lookup when axis=0)."""
        axis = self._axis(axis)
        shape = (*self.shape[:axis], *indices.shape, *self.shape[axis + 1 :])
        return self.ctx.op("Gather", [self, indices], shape, self.dtype, axis=axis)

    def where(self, x: Tensor | float, y: Tensor | float) -> Tensor:
        """``x`` where this boolean tensor is true, else ``y``."""
        if self.dtype != "bool":
            raise BuilderError(f"where needs a bool condition, got {self.dtype}")
        xt = x if isinstance(x, Tensor) else None
        yt = y if isinstance(y, Tensor) else None
        ref = xt or yt
        if ref is None:
            raise BuilderError("where needs at least one tensor branch")
        xt = xt or ref._other(x)  # type: ignore[arg-type]
        yt = yt or ref._other(y)  # type: ignore[arg-type]
        shape = _broadcast(_broadcast(self.shape, xt.shape), yt.shape)
        return self.ctx.op("Where", [self, xt, yt], shape, ref.dtype)

    def __getitem__(self, index: Any) -> Tensor:
        """Static slicing: ints, slices with constant bounds and steps, and ``...``."""
        items = list(index) if isinstance(index, tuple) else [index]
        if Ellipsis in items:
            i = items.index(Ellipsis)
            items = items[:i] + [slice(None)] * (self.ndim - len(items) + 1) + items[i + 1 :]
        if len(items) > self.ndim:
            raise BuilderError(f"too many indices for {self}")
        out = self
        drop: list[int] = []
        for axis, it in enumerate(items):
            if isinstance(it, int):
                out = out._slice_axis(axis, it, it + 1 if it != -1 else None, 1)
                drop.append(axis)
            elif isinstance(it, slice):
                if it != slice(None):
                    out = out._slice_axis(axis, it.start, it.stop, it.step or 1)
            else:
                raise BuilderError(f"unsupported index {it!r}; use ints and constant slices")
        for axis in reversed(drop):
            out = out.squeeze(axis)
        return out

    def _slice_axis(self, axis: int, start: int | None, stop: int | None, step: int) -> Tensor:
        big = np.iinfo(np.int64).max
        s = 0 if start is None else start
        e = (big if step > 0 else -big) if stop is None else stop
        dim = self.shape[axis]
        if isinstance(dim, int):
            new: Dim = len(range(*slice(start, stop, step).indices(dim)))
        else:
            new = f"{dim}[{s}:{'' if stop is None else stop}:{step}]"
        c = self.ctx.constant
        inputs = [
            self,
            c(np.array([s], np.int64)),
            c(np.array([e], np.int64)),
            c(np.array([axis], np.int64)),
            c(np.array([step], np.int64)),
        ]
        shape = self.shape[:axis] + (new,) + self.shape[axis + 1 :]
        return self.ctx.op("Slice", inputs, shape, self.dtype)

    def dim_size(self, axis: int) -> Tensor:
        """The run-time size of one axis as an int64 scalar (for masks and positions)."""
        axis = self._axis(axis)
        one = self.ctx.op("Shape", [self], (1,), "int64", start=axis, end=axis + 1)
        return one.squeeze(0)

    # convolutional layers (NCHW)
    def conv2d(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
    ) -> Tensor:
        n, _, h, w = self.shape
        cout, _, kh, kw = weight.shape
        oh = _conv_out(h, kh, stride, padding, dilation)
        ow = _conv_out(w, kw, stride, padding, dilation)
        inputs = [self, weight] + ([bias] if bias is not None else [])
        return self.ctx.op(
            "Conv", inputs, (n, cout, oh, ow), self.dtype,
            strides=[stride, stride], pads=[padding] * 4, dilations=[dilation, dilation], group=groups,
        )

    def _pool(self, op: str, kernel: int, stride: int | None, padding: int) -> Tensor:
        stride = stride or kernel
        n, c, h, w = self.shape
        shape = (n, c, _conv_out(h, kernel, stride, padding, 1), _conv_out(w, kernel, stride, padding, 1))
        return self.ctx.op(
            op, [self], shape, self.dtype, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[padding] * 4
        )

    def max_pool2d(self, kernel: int = 2, stride: int | None = None, padding: int = 0) -> Tensor:
        return self._pool("MaxPool", kernel, stride, padding)

    def avg_pool2d(self, kernel: int = 2, stride: int | None = None, padding: int = 0) -> Tensor:
        return self._pool("AveragePool", kernel, stride, padding)

    def global_avg_pool(self) -> Tensor:
        return self.ctx.op("GlobalAveragePool", [self], (*self.shape[:2], 1, 1), self.dtype)


class QuantizedParameter:
    """A 2-D weight stored in 8 or 4 bits and read through ``DequantizeLinear``.

    Its uses are ``x @ w`` (``Tensor.matmul`` / ``linear``) and ``w.gather(ids)``; the first one lays out
    its storage: blocks along the input axis (axis 0) for a product, which engines fuse into quantised
    kernels, or 8-bit blocks along rows for a lookup (ONNX ``Gather`` has no 4-bit types). A weight
    whose axis no block size divides stays a plain float parameter.
    """

    ndim = 2

    def __init__(self, ctx: TensorContext, name: str, shape: tuple[int, ...], dtype: str, fmt: QuantFormat,
                 data: np.ndarray | QuantizedArray | None) -> None:
        if len(shape) != 2:
            raise BuilderError(f"quantised parameter {name!r} must be 2-D, got {shape}")
        if data is not None and tuple(data.shape) != shape:
            raise BuilderError(f"parameter {name!r}: data shape {data.shape} != declared {shape}")
        self.ctx, self.name, self.shape, self.dtype, self.fmt = ctx, name, shape, dtype, fmt
        self._data = data
        self._axis: int | None = None
        self._parts: tuple[int, Tensor, Tensor, Tensor | None, Tensor | None] | Tensor | None = None

    def __repr__(self) -> str:
        return f"QuantizedParameter({self.name!r}, shape={self.shape}, bits={self.fmt.bits})"

    def _store(self, axis: int, bits: int) -> tuple[int, Tensor, Tensor, Tensor | None, Tensor | None] | Tensor:
        """(block, q, scale, zero point, minimum) initializers, or the float parameter it falls back to."""
        if self._parts is not None:
            if self._axis != axis:
                raise BuilderError(f"{self.name}: used both in a product and as a lookup table")
            return self._parts
        self._axis = axis
        data = self._data
        if isinstance(data, QuantizedArray):
            if data.axis != axis:
                raise BuilderError(f"{self.name}: quantised along axis {data.axis}, this use needs axis {axis}")
            qa: QuantizedArray | None = data.with_scale_dtype(self.dtype)
            block, bits = data.block, data.bits
            signed = data.q.dtype == np.int8
        else:
            found = self.fmt.block_for(self.shape[axis])
            if found is None:
                self._parts = self.ctx._register(self.name, self.shape, self.dtype, data)
                return self._parts
            block, signed = found, bits == 8
            qa = None if data is None else quantize(data, bits, block, axis, scale_dtype=self.dtype)
        qtype = ("int8" if signed else "uint8") if bits == 8 else ("int4" if signed else "uint4")
        bshape = list(self.shape)
        bshape[axis] //= block
        reg = self.ctx._register
        q = reg(self.name, self.shape, qtype, None if qa is None else qa.q)
        scale = reg(f"{self.name}_scale", bshape, self.dtype, None if qa is None else qa.scale)
        has_zp = (qa.zero_point is not None) if qa is not None else not signed
        zp = reg(f"{self.name}_zero_point", bshape, qtype, None if qa is None else qa.zero_point) if has_zp else None
        mn = None
        if qa is not None and qa.minimum is not None:
            mn = reg(f"{self.name}_min", bshape, self.dtype, qa.minimum)
        self.ctx.opset = max(self.ctx.opset, QUANT_OPSET)
        self._parts = (block, q, scale, zp, mn)
        return self._parts

    def __getitem__(self, index: Any) -> Tensor:
        """Any other use reads the weight as a plain float parameter (e.g. BERT's one-row token types)."""
        if self._parts is None:
            data = self._data.dequantize() if isinstance(self._data, QuantizedArray) else self._data
            self._axis, self._parts = -1, self.ctx._register(self.name, self.shape, self.dtype, data)
        if not isinstance(self._parts, Tensor):
            raise BuilderError(f"{self.name}: a quantised weight can only be multiplied by or looked up")
        return self._parts[index]

    def _dequantize(self, q: Tensor, scale: Tensor, zp: Tensor | None, axis: int, block: int) -> Tensor:
        inputs = [q, scale] + ([zp] if zp is not None else [])
        return self.ctx.op("DequantizeLinear", inputs, q.shape, self.dtype, axis=axis, block_size=block)

    def rmatmul(self, x: Tensor) -> Tensor:
        """``x @ w``; a Q4_1 minimum adds ``blocksum(x) @ min``, which equals ``x @ (scale*q + min)``
        while leaving ``DequantizeLinear -> MatMul`` intact for the engines' fused kernels."""
        parts = self._store(0, self.fmt.bits)
        if isinstance(parts, Tensor):
            return x.matmul(parts)
        block, q, scale, zp, mn = parts
        out = x.matmul(self._dequantize(q, scale, zp, 0, block))
        if mn is not None:
            k = int(self.shape[0])
            sums = x.reshape(*x.shape[:-1], k // block, block).sum(-1)
            out = out + sums.matmul(mn)
        return out

    def gather(self, indices: Tensor, axis: int = 0) -> Tensor:
        """Rows ``indices`` dequantised: the 8-bit rows and their scales are gathered, then dequantised."""
        if axis != 0:
            raise BuilderError(f"{self.name}: quantised lookups read rows (axis 0), not axis {axis}")
        parts = self._store(1, 8)
        if isinstance(parts, Tensor):
            return parts.gather(indices)
        block, q, scale, zp, mn = parts
        gz = zp.gather(indices) if zp is not None else None
        rows = self._dequantize(q.gather(indices), scale.gather(indices), gz, indices.ndim, block)
        if mn is None:
            return rows
        lead, width = rows.shape[:-1], int(self.shape[1])
        blocked = rows.reshape(*lead, width // block, block) + mn.gather(indices).unsqueeze(-1)
        return blocked.reshape(*lead, width)



def _conv_out(size: Dim, kernel: int, stride: int, padding: int, dilation: int) -> Dim:
    if not isinstance(size, int):
        return f"conv({size})"
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        raise BuilderError(f"convolution/pool window {kernel} does not fit input size {size}")
    return out


class TensorContext:
    """Collects inputs, parameters and nodes; ``compile_to_graph`` turns them into an ONNX model."""

    def __init__(self, name: str = "splitup", opset: int = OPSET) -> None:
        self.name = name
        self.opset = opset
        self.inputs: list[Tensor] = []
        self.params: dict[str, Tensor] = {}
        self._param_data: dict[str, np.ndarray | None] = {}
        self._constants: dict[tuple[str, bytes, tuple[int, ...]], Tensor] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.dim_max: dict[str, int] = {}
        self.state: dict[str, str] = {}
        self._names: set[str] = set()
        self._counter = 0
        self._scope: list[str] = []

    # naming
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of everything made inside, e.g. ``with ctx.scope("layers.3"):``."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _scoped(self, name: str) -> str:
        return ".".join([*self._scope, name])

    def _fresh(self, base: str) -> str:
        self._counter += 1
        name = self._scoped(f"{base}_{self._counter}")
        self._names.add(name)
        return name

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise BuilderError(f"name {name!r} is already used in this graph")
        self._names.add(name)
        return name

    # leaves
    def declare_dim(self, name: str, maximum: int) -> None:
        if maximum <= 0:
            raise BuilderError(f"dimension {name!r} needs a positive maximum, got {maximum}")
        self.dim_max[name] = int(maximum)

    def add_graph_input(
        self, name: str, shape: Sequence[Dim], dtype: str = "float32", max_dims: Mapping[str, int] | None = None
    ) -> Tensor:
        """A model input. Symbolic dims (strings) need a maximum, here or via ``declare_dim``."""
        for k, v in (max_dims or {}).items():
            self.declare_dim(k, v)
        for d in shape:
            if isinstance(d, str) and d not in self.dim_max:
                raise BuilderError(f"input {name!r}: symbolic dimension {d!r} has no declared maximum")
            if isinstance(d, int) and d < 0:
                raise BuilderError(f"input {name!r}: negative dimension {d}")
        t = Tensor(self, self._claim(name), tuple(shape), dtype_name(dtype))
        self.inputs.append(t)
        return t

    def parameter(
        self, name: str, shape: Sequence[int], dtype: str = "float32", data: np.ndarray | None = None
    ) -> Tensor:
        """A named weight. Without ``data`` it is shape-only (a planning graph)."""
        return self._register(self._claim(self._scoped(name)), shape, dtype, data)

    def _register(self, full: str, shape: Sequence[int], dtype: str, data: np.ndarray | None) -> Tensor:
        dtype = dtype_name(dtype)
        shape = tuple(int(d) for d in shape)
        if data is not None:
            data = np.asarray(data)
            if tuple(data.shape) != shape:
                raise BuilderError(f"parameter {full!r}: data shape {data.shape} != declared {shape}")
            if dtype in ("int4", "uint4"):
                data = data.astype(np.int8 if dtype == "int4" else np.uint8)  # unpacked; packed when written
            elif dtype_name(data.dtype) != dtype:
                data = data.astype(dtype)
        t = Tensor(self, full, shape, dtype)
        self.params[full] = t
        self._param_data[full] = data
        return t

    def quantized_parameter(
        self, name: str, shape: Sequence[int], dtype: str, fmt: QuantFormat,
        data: np.ndarray | QuantizedArray | None = None,
    ) -> QuantizedParameter:
        """A 2-D weight stored in ``fmt.bits`` (or as the given ``QuantizedArray``), dequantised to
        ``dtype``; its storage is laid out at its first use (product or row lookup)."""
        return QuantizedParameter(self, self._claim(self._scoped(name)), tuple(int(d) for d in shape),
                                  dtype_name(dtype), fmt, data)

    def bind(self, name: str, data: np.ndarray) -> None:
        """Give a shape-only parameter its values (importers use this)."""
        if name not in self.params:
            raise BuilderError(f"no parameter named {name!r}")
        p = self.params[name]
        data = np.asarray(data)
        if tuple(data.shape) != p.shape:
            raise BuilderError(f"parameter {name!r}: data shape {data.shape} != declared {p.shape}")
        self._param_data[name] = np.ascontiguousarray(data.astype(p.dtype, copy=False))

    def constant(self, value: np.ndarray | float | int, dtype: str | None = None) -> Tensor:
        arr = np.asarray(value, dtype=dtype) if dtype else np.asarray(value)
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        if key not in self._constants:
            name = self._fresh("const")
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(arr, name))
            )
            self._constants[key] = Tensor(self, name, arr.shape, dtype_name(arr.dtype))
        return self._constants[key]

    def op(self, op_type: str, inputs: Sequence[Tensor], shape: Sequence[Dim], dtype: str, **attrs: Any) -> Tensor:
        """Add one ONNX node with a single output of the given (tracked) shape and dtype."""
        for t in inputs:
            if t.ctx is not self:
                raise BuilderError(f"{op_type}: tensor {t.name!r} belongs to another context")
        out = self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, [t.name for t in inputs], [out], name=out, **attrs))
        return Tensor(self, out, tuple(shape), dtype)

    def cat(self, tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
        first = tensors[0]
        axis = first._axis(axis)
        size: Dim = 0
        for t in tensors:
            if t.ndim != first.ndim or t.dtype != first.dtype:
                raise BuilderError(f"cat: {t} does not match {first}")
            size = _dim_add(size, t.shape[axis])
        shape = first.shape[:axis] + (size,) + first.shape[axis + 1 :]
        return self.op("Concat", list(tensors), shape, first.dtype, axis=axis)

    def carry_state(self, past: Tensor, present: Tensor) -> None:
        """Declare that output ``present`` replaces input ``past`` on the next call (KV cache)."""
        self.state[past.name] = present.name

    # compilation
    def compile_to_graph(
        self,
        outputs: Mapping[str, Tensor] | Sequence[Tensor],
        *,
        validate: bool = True,
        limits: Any = None,
    ) -> onnx.ModelProto:
        """The ONNX model computing ``outputs`` (named by the mapping's keys), validated by default."""
        named = dict(outputs) if isinstance(outputs, Mapping) else {t.name: t for t in outputs}
        if not named:
            raise BuilderError("compile_to_graph needs at least one output")
        nodes = [_copy(n) for n in self.nodes]
        producer = {o: n for n in nodes for o in n.output}
        renames: dict[str, str] = {}
        out_infos = []
        for out_name, t in named.items():
            if out_name != t.name:
                if out_name in self._names or out_name in renames.values():
                    raise BuilderError(f"output name {out_name!r} is already used in this graph")
                if t.name in producer and t.name not in renames:
                    # Renaming the producer's output (not appending an Identity at the end) keeps the
                    # tensor's lifetime where it is made: a late Identity would make it cross every cut.
                    renames[t.name] = out_name
                else:
                    nodes.append(helper.make_node("Identity", [renames.get(t.name, t.name)], [out_name],
                                                  name=f"{out_name}.identity"))
            out_infos.append(_value_info(out_name, t.shape, t.dtype))
        for n in nodes:
            n.input[:] = [renames.get(x, x) for x in n.input]
            n.output[:] = [renames.get(x, x) for x in n.output]
        nodes = _reachable(nodes, set(named))
        used = {i for n in nodes for i in n.input}
        initializers = [self._initializer(n) for n in self.params if n in used]
        graph = helper.make_graph(
            nodes,
            self.name,
            [_value_info(t.name, t.shape, t.dtype) for t in self.inputs],
            out_infos,
            initializer=initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="splitup"
        )
        # The exact IR version of the opset keeps older onnxruntime builds able to load the model.
        model.ir_version = min(model.ir_version, QUANT_IR_VERSION if self.opset >= QUANT_OPSET else 9)
        meta = {DIM_MAX_KEY: json.dumps(self.dim_max, sort_keys=True)}
        state = {k: v for k, v in self.state.items() if v in named}
        if state:
            meta[STATE_KEY] = json.dumps(state, sort_keys=True)
        helper.set_model_props(model, meta)
        if validate:
            from splitup.graph.validate import validate_model

            validate_model(model, **({"limits": limits} if limits is not None else {}))
        return model

    def _initializer(self, name: str) -> TensorProto:
        t = self.params[name]
        data = self._param_data[name]
        if data is not None and t.dtype in ("int4", "uint4"):
            return integer_tensor(name, data, DTYPES[t.dtype])
        if data is not None:
            return numpy_helper.from_array(np.ascontiguousarray(data), name)
        tp = TensorProto(name=name, data_type=DTYPES[t.dtype], dims=list(t.shape))
        tp.data_location = TensorProto.EXTERNAL
        entry = tp.external_data.add()
        entry.key, entry.value = "location", SHAPE_ONLY_LOCATION
        return tp


def _value_info(name: str, shape: Shape, dtype: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, DTYPES[dtype], list(shape))


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(node)
    return c


def _reachable(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Nodes needed for ``outputs``, in their original (topological) order."""
    producer = {o: n for n in nodes for o in n.output}
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(node.input)
    return [n for n in nodes if n.name in needed]
