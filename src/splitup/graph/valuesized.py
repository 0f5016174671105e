"""Upper bounds for outputs sized by the values of an input whose range is declared (``splitup.graph.values``).

Each rule is the op's own size formula taken at the worst end of the ranges: ``Expand`` ``hi`` where the
data's dim is 1 (a larger dim stays), ``Tile`` ``dim * hi``, ``ConstantOfShape`` ``hi`` per axis, ``Range``
``ceil(span / smallest |delta|)`` (a delta range that holds 0 bounds nothing), ``Pad`` ``dim + begin + end``,
``Resize`` ``sizes`` or ``ceil(dim * scale)``, ``OneHot`` ``depth``, ``CenterCropPad`` the target shape,
``Col2Im`` the image shape, ``AffineGrid`` the size, ``MaxUnpool`` the output shape, ``DFT``/``STFT`` the
transform length and the frame count, ``Reshape`` of an empty tensor its target shape. The bound is never
below the true size for any feed in range; the node checks every feed against the range before running, and
the byte caps still apply to the bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from onnx import NodeProto, ValueInfoProto

from splitup.graph.bounds import int_attr, static_dims
from splitup.graph.values import Ranges, span


def _input(node: NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _strs(node: NodeProto, name: str, default: str) -> str:
    return next((a.s.decode() for a in node.attribute if a.name == name), default)


def _ints(node: NodeProto, name: str) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == name), None)


def value_bounds(node: NodeProto, known: Mapping[str, ValueInfoProto], ranges: Mapping[str, Ranges]
                 ) -> list[list[int]] | None:
    """Per-output bounds of a value-sized op whose sizing inputs have ranges, or None."""
    rule = _RULES.get(node.op_type)
    if rule is None:
        return None
    try:
        bounds = rule(node, known, ranges)
    except (IndexError, ValueError, ZeroDivisionError, OverflowError):  # odd inputs: leave it unbounded
        return None
    if bounds is None or any(d < 0 for b in bounds for d in b):
        return None
    return [b for b, o in zip(bounds, node.output, strict=False) if o]


def _vector(node: NodeProto, i: int, known: Mapping[str, ValueInfoProto], ranges: Mapping[str, Ranges]
            ) -> list[tuple[float, float]] | None:
    """The range of each element of a 1-D (or scalar) sizing input, or None."""
    name = _input(node, i)
    dims = static_dims(known.get(name)) if name else None
    if dims is None or len(dims) > 1 or name not in ranges:
        return None
    length, r = (dims[0] if dims else 1), ranges[name]
    if len(r) == length:
        return list(r)
    return [span(r)] * length


def _hi(r: tuple[float, float]) -> int:
    return max(0, math.floor(r[1]))


def _top(v: list[tuple[float, float]]) -> int:
    """The largest value any element may take (0 for an empty vector)."""
    return max((_hi(r) for r in v), default=0)


def _expand(node, known, ranges):  # noqa: ANN001, ANN202 - one signature for every rule
    x, shape = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    if x is None or shape is None:
        return None
    rank = max(len(x), len(shape))
    padded = [1] * (rank - len(x)) + x
    target = [None] * (rank - len(shape)) + shape
    # Broadcasting keeps a data dim above 1 (the value must be 1 or that dim), else takes the shape value.
    return [[d if t is None or d > 1 else max(d, _hi(t)) for d, t in zip(padded, target, strict=True)]]


def _tile(node, known, ranges):  # noqa: ANN001, ANN202
    x, reps = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    if x is None or reps is None or len(reps) != len(x):
        return None
    return [[d * _hi(r) for d, r in zip(x, reps, strict=True)]]


def _constant_of_shape(node, known, ranges):  # noqa: ANN001, ANN202
    shape = _vector(node, 0, known, ranges)
    return None if shape is None else [[_hi(r) for r in shape]]


def _range(node, known, ranges):  # noqa: ANN001, ANN202
    if any(_input(node, i) not in ranges for i in range(3)):
        return None
    (s_lo, s_hi), (l_lo, l_hi), (d_lo, d_hi) = (span(ranges[node.input[i]]) for i in range(3))
    if d_lo <= 0 <= d_hi:
        return None  # a delta that may be 0 (or tend to it) bounds no length
    step = d_lo if d_lo > 0 else -d_hi
    return [[math.ceil(max(l_hi - s_lo, s_hi - l_lo, 0) / step)]]


def _pad(node, known, ranges):  # noqa: ANN001, ANN202
    x, pads = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    if x is None or pads is None:
        return None
    if len(pads) == 2 * len(x) and not _input(node, 3):  # begins then ends, one per axis
        return [[d + _hi(pads[i]) + _hi(pads[i + len(x)]) for i, d in enumerate(x)]]
    return [[d + 2 * _top(pads) for d in x]]  # axes chosen by data: any axis may get the most; negatives shrink


def _resize(node, known, ranges):  # noqa: ANN001, ANN202
    x = static_dims(known.get(node.input[0]))
    if x is None:
        return None
    axes = [a % len(x) for a in _ints(node, "axes") or range(len(x))]
    if _input(node, 3):
        sizes = _vector(node, 3, known, ranges)
        if sizes is None or len(sizes) != len(axes):
            return None
        per_axis = dict(zip(axes, sizes, strict=True))
        if _strs(node, "keep_aspect_ratio_policy", "stretch") != "not_smaller":
            # stretch: each axis its size; not_larger: no axis beyond its size.
            return [[_hi(per_axis[i]) if i in per_axis else d for i, d in enumerate(x)]]
        # not_smaller scales every axis by the largest sizes/dim ratio, at most the largest size (dims >= 1).
        return [[d * _top(sizes) if i in per_axis else d for i, d in enumerate(x)]]
    scales = _vector(node, 2, known, ranges)
    if scales is None or len(scales) != len(axes):
        return None
    factor = 1.0
    if _strs(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        roi = ranges.get(_input(node, 1))
        if roi is None:
            return None
        lo, hi = span(roi)
        factor = max(0.0, hi - lo)  # the crop's extent, as a fraction of the axis
    per_axis = dict(zip(axes, scales, strict=True))
    return [[math.ceil(d * max(0.0, per_axis[i][1]) * factor) if i in per_axis else d for i, d in enumerate(x)]]


def _one_hot(node, known, ranges):  # noqa: ANN001, ANN202
    idx, depth = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    if idx is None or depth is None:
        return None
    axis = int_attr(node, "axis", -1)
    if not -len(idx) - 1 <= axis <= len(idx):
        return None
    axis %= len(idx) + 1
    return [[*idx[:axis], _top(depth), *idx[axis:]]]


def _center_crop_pad(node, known, ranges):  # noqa: ANN001, ANN202
    x, shape = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    if x is None or shape is None:
        return None
    axes = [a % len(x) for a in _ints(node, "axes") or range(len(x))]
    if len(axes) != len(shape):
        return None
    per_axis = dict(zip(axes, shape, strict=True))
    return [[_hi(per_axis[i]) if i in per_axis else d for i, d in enumerate(x)]]


def _col2im(node, known, ranges):  # noqa: ANN001, ANN202
    x, image, block = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges), _vector(node, 2, known, ranges)
    # A block dim of 0 would divide by zero in the kernel: the range must exclude it.
    if x is None or len(x) != 3 or image is None or block is None or min(r[0] for r in block) < 1:
        return None
    # Channels are the input's second dim over the block's element count (each block dim at least 1).
    return [[x[0], x[1], *[_hi(r) for r in image]]]


def _affine_grid(node, known, ranges):  # noqa: ANN001, ANN202
    theta, size = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    if theta is None or size is None or len(size) not in (4, 5):
        return None
    spatial = len(size) - 2
    return [[max(theta[0], _hi(size[0])), *[_hi(r) for r in size[2:]], spatial]]


def _max_unpool(node, known, ranges):  # noqa: ANN001, ANN202
    x, shape = static_dims(known.get(node.input[0])), _vector(node, 2, known, ranges)
    if x is None or shape is None or len(shape) != len(x):
        return None
    return [[max(d, _hi(r)) for d, r in zip(x, shape, strict=True)]]


def _dft(node, known, ranges):  # noqa: ANN001, ANN202
    x = static_dims(known.get(node.input[0]))
    if x is None or len(x) < 2:
        return None
    length = _vector(node, 1, known, ranges) if _input(node, 1) else None
    if _input(node, 1) and length is None:
        return None
    n = _top(length) if length is not None else 0
    # Any axis but the last may be the transformed one (the axis may be data); its length is the input's
    # or dft_length, an inverse one-sided transform at most twice the input's.
    return [[2 * max(d, n) for d in x[:-1]] + [2]]


def _stft(node, known, ranges):  # noqa: ANN001, ANN202
    signal, step = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    window = static_dims(known.get(_input(node, 2))) if _input(node, 2) else None
    frame = _vector(node, 3, known, ranges) if _input(node, 3) else None
    # A step of 0 would divide by zero in the kernel: the range must exclude it.
    if signal is None or len(signal) != 3 or step is None or span(tuple(step))[0] < 1:
        return None
    if frame is not None:
        lo, hi = span(tuple(frame))
        least, most = max(1, math.ceil(lo)), max(0, math.floor(hi))
    elif window is not None and len(window) == 1:
        least = most = window[0]
    else:
        return None
    frames = max(1, (signal[1] - least) // math.ceil(span(tuple(step))[0]) + 1)
    return [[signal[0], frames, most, 2]]


def _reshape(node, known, ranges):  # noqa: ANN001, ANN202
    x, shape = static_dims(known.get(node.input[0])), _vector(node, 1, known, ranges)
    if x is None or shape is None:
        return None
    numel = math.prod(x)
    # A dim is its value, the input's dim at that place (0 without allowzero), or what -1 leaves: <= numel.
    return [[max(_hi(r), x[i] if i < len(x) else 0, numel if r[0] < 0 else 0) for i, r in enumerate(shape)]]


_RULES = {
    "Expand": _expand, "Tile": _tile, "ConstantOfShape": _constant_of_shape, "Range": _range, "Pad": _pad,
    "Resize": _resize, "OneHot": _one_hot, "CenterCropPad": _center_crop_pad, "Col2Im": _col2im,
    "AffineGrid": _affine_grid, "MaxUnpool": _max_unpool, "DFT": _dft, "STFT": _stft, "Reshape": _reshape,
}
