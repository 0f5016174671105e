"""Builder ops against numpy with hypothesis-drawn shapes and values (bounded so it stays fast)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitup.graph import TensorContext

PROPS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALUES = st.floats(-8.0, 8.0, width=32, allow_nan=False, allow_infinity=False)
AWAY_FROM_ZERO = st.one_of(st.floats(0.25, 8.0, width=32), st.floats(-8.0, -0.25, width=32))


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _check(ctx: TensorContext, outs: dict, expected: dict[str, np.ndarray], **feeds: np.ndarray) -> None:
    got = dict(zip(outs, _run(ctx.compile_to_graph(outs), **feeds), strict=True))
    for k, v in expected.items():
        assert got[k].shape == v.shape == tuple(outs[k].shape), k
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-4, err_msg=k)


@PROPS
@given(st.data(), hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=4, max_side=5))
def test_broadcast_arithmetic(data: st.DataObject, shapes) -> None:
    sa, sb = shapes.input_shapes
    a = data.draw(hnp.arrays(np.float32, sa, elements=VALUES), label="a")
    b = data.draw(hnp.arrays(np.float32, sb, elements=AWAY_FROM_ZERO), label="b")
    c = data.draw(VALUES, label="c")
    ctx = TensorContext()
    x, y = ctx.add_graph_input("a", sa), ctx.add_graph_input("b", sb)
    outs = {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y, "rsub": c - x, "scale": x * c + 1.0,
            "where": (x > y).where(x, y), "relu": (x - y).relu(), "tanh": x.tanh(), "sigmoid": x.sigmoid()}
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = {"add": a64 + b64, "sub": a64 - b64, "mul": a64 * b64, "div": a64 / b64, "rsub": c - a64,
                "scale": a64 * np.float32(c) + 1.0, "where": np.where(a > b, a64, b64),
                "relu": np.maximum(a64 - b64, 0), "tanh": np.tanh(a64), "sigmoid": 1 / (1 + np.exp(-a64))}
    _check(ctx, outs, {k: v.astype(np.float32) for k, v in expected.items()}, a=a, b=b)


@PROPS
@given(st.data(), st.lists(st.integers(1, 3), max_size=2), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))
def test_matmul_with_batch_dims(data: st.DataObject, batch: list[int], n: int, k: int, m: int) -> None:
    rhs_batch = data.draw(st.sampled_from([[], batch]), label="rhs batch")
    a = data.draw(hnp.arrays(np.float32, (*batch, n, k), elements=VALUES), label="a")
    b = data.draw(hnp.arrays(np.float32, (*rhs_batch, k, m), elements=VALUES), label="b")
    ctx = TensorContext()
    x, y = ctx.add_graph_input("a", a.shape), ctx.add_graph_input("b", b.shape)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    _check(ctx, {"mm": x @ y, "t": (x @ y).transpose(-2, -1)}, {"mm": ref, "t": np.swapaxes(ref, -1, -2)}, a=a, b=b)


@PROPS
@given(st.data(), hnp.array_shapes(min_dims=1, max_dims=4, max_side=6))
def test_softmax_and_reductions_over_any_axis(data: st.DataObject, shape: tuple[int, ...]) -> None:
    a = data.draw(hnp.arrays(np.float32, shape, elements=VALUES), label="a")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    keep = data.draw(st.booleans(), label="keepdim")
    ctx = TensorContext()
    x = ctx.add_graph_input("a", shape)
    a64 = a.astype(np.float64)
    e = np.exp(a64 - a64.max(axis, keepdims=True))
    expected = {"softmax": e / e.sum(axis, keepdims=True), "mean": a64.mean(axis, keepdims=keep),
                "sum": a64.sum(axis, keepdims=keep), "max": a64.max(axis, keepdims=keep)}
    outs = {"softmax": x.softmax(axis), "mean": x.mean(axis, keep), "sum": x.sum(axis, keep), "max": x.max(axis, keep)}
    _check(ctx, outs, expected, a=a)


@PROPS
@given(st.data(), hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=8),
       st.sampled_from([1e-5, 1e-6, 1e-3]))
def test_layernorm_and_rmsnorm(data: st.DataObject, shape: tuple[int, ...], eps: float) -> None:
    a = data.draw(hnp.arrays(np.float32, shape, elements=VALUES, unique=True), label="a")
    d = shape[-1]
    g = data.draw(hnp.arrays(np.float32, (d,), elements=VALUES), label="gain")
    b = data.draw(hnp.arrays(np.float32, (d,), elements=VALUES), label="bias")
    ctx = TensorContext()
    x = ctx.add_graph_input("a", shape)
    gt, bt = ctx.parameter("g", (d,), data=g), ctx.parameter("b", (d,), data=b)
    a64 = a.astype(np.float64)
    mu, var = a64.mean(-1, keepdims=True), a64.var(-1, keepdims=True)
    expected = {"ln": (a64 - mu) / np.sqrt(var + eps) * g + b,
                "rms": a64 / np.sqrt((a64**2).mean(-1, keepdims=True) + eps) * g}
    _check(ctx, {"ln": x.layernorm(gt, bt, eps), "rms": x.rmsnorm(gt, eps)}, expected, a=a)


@PROPS
@given(st.data(), hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
def test_cat_and_slices(data: st.DataObject, shape: tuple[int, ...]) -> None:
    a = data.draw(hnp.arrays(np.float32, shape, elements=VALUES), label="a")
    axis = data.draw(st.integers(0, len(shape) - 1), label="axis")
    start = data.draw(st.integers(0, shape[axis] - 1), label="start")
    stop = data.draw(st.integers(start + 1, shape[axis]), label="stop")
    ctx = TensorContext()
    x = ctx.add_graph_input("a", shape)
    index = (slice(None),) * axis + (slice(start, stop),)
    outs = {"cat": ctx.cat([x, x * 2.0], axis=axis), "slice": x[index]}
    _check(ctx, outs, {"cat": np.concatenate([a, a * 2], axis), "slice": a[index]}, a=a)
