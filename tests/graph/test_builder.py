import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitup.graph import BuilderError, TensorContext
from splitup.graph.builder import SHAPE_ONLY_LOCATION
from splitup.graph.meta import DIM_MAX_KEY


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


RNG = np.random.default_rng(0)


def test_elementwise_and_matmul_match_numpy():
    ctx = TensorContext()
    x = ctx.add_graph_input("x", ("batch", 8), max_dims={"batch": 4})
    w = ctx.parameter("w", (8, 5), data=RNG.normal(size=(8, 5)).astype(np.float32))
    b = ctx.parameter("b", (5,), data=RNG.normal(size=5).astype(np.float32))
    y = x.linear(w, b)
    outs = {
        "lin": y, "relu": y.relu(), "silu": y.silu(), "gelu": y.gelu(), "gelu_tanh": y.gelu("tanh"),
        "softmax": y.softmax(-1), "mean": y.mean(-1, keepdim=True), "arith": (2.0 - y) * 3.0 / (y * y + 1.0),
        "sqrt": (y * y).sqrt(), "exp": y.exp(), "neg": -y, "pow": y ** 2.0,
    }
    xv = RNG.normal(size=(3, 8)).astype(np.float32)
    res = dict(zip(outs, run(ctx.compile_to_graph(outs), x=xv), strict=True))
    ref = xv @ ctx._param_data["w"] + ctx._param_data["b"]
    from math import erf

    erf_v = np.vectorize(erf)
    expected = {
        "lin": ref, "relu": np.maximum(ref, 0), "silu": ref / (1 + np.exp(-ref)),
        "gelu": 0.5 * ref * (1 + erf_v(ref / np.sqrt(2))),
        "gelu_tanh": 0.5 * ref * (1 + np.tanh(np.sqrt(2 / np.pi) * (ref + 0.044715 * ref**3))),
        "softmax": np.exp(ref) / np.exp(ref).sum(-1, keepdims=True), "mean": ref.mean(-1, keepdims=True),
        "arith": (2.0 - ref) * 3.0 / (ref * ref + 1.0), "sqrt": np.abs(ref), "exp": np.exp(ref), "neg": -ref,
        "pow": ref**2,
    }
    for k, v in expected.items():
        np.testing.assert_allclose(res[k], v, rtol=1e-5, atol=1e-5, err_msg=k)


def test_norms_shapes_and_indexing_match_numpy():
    ctx = TensorContext()
    x = ctx.add_graph_input("x", (2, 3, 8))
    g = ctx.parameter("g", (8,), data=RNG.normal(size=8).astype(np.float32))
    bt = ctx.parameter("bt", (8,), data=RNG.normal(size=8).astype(np.float32))
    emb = ctx.parameter("emb", (10, 4), data=RNG.normal(size=(10, 4)).astype(np.float32))
    ids = ctx.add_graph_input("ids", (2, 3), "int64")
    outs = {
        "ln": x.layernorm(g, bt), "rms": x.rmsnorm(g, 1e-6), "resh": x.reshape(2, 24), "perm": x.permute(2, 0, 1),
        "tr": x.transpose(0, 1), "cat": ctx.cat([x, x * 2.0], axis=1), "gath": emb.gather(ids),
        "where": (x > 0.0).where(x, 0.0), "slc": x[:, 1:, ::2], "last": x[:, -1], "unsq": x.unsqueeze(1),
        "sum": x.sum((0, 2)), "flat": x.flatten(1),
    }
    xv = RNG.normal(size=(2, 3, 8)).astype(np.float32)
    iv = RNG.integers(0, 10, size=(2, 3))
    res = dict(zip(outs, run(ctx.compile_to_graph(outs), x=xv, ids=iv), strict=True))
    gv, bv, ev = (ctx._param_data[n] for n in ("g", "bt", "emb"))
    mu, var = xv.mean(-1, keepdims=True), xv.var(-1, keepdims=True)
    expected = {
        "ln": (xv - mu) / np.sqrt(var + 1e-5) * gv + bv, "rms": xv / np.sqrt((xv**2).mean(-1, keepdims=True) + 1e-6) * gv,
        "resh": xv.reshape(2, 24), "perm": xv.transpose(2, 0, 1), "tr": xv.transpose(1, 0, 2),
        "cat": np.concatenate([xv, 2 * xv], 1), "gath": ev[iv], "where": np.where(xv > 0, xv, 0),
        "slc": xv[:, 1:, ::2], "last": xv[:, -1], "unsq": xv[:, None], "sum": xv.sum((0, 2)), "flat": xv.reshape(2, 24),
    }
    for k, v in expected.items():
        assert res[k].shape == v.shape, k
        assert tuple(outs[k].shape) == v.shape, f"tracked shape of {k}"
        np.testing.assert_allclose(res[k], v, rtol=1e-5, atol=1e-5, err_msg=k)


def test_conv_and_pool_shapes_are_tracked():
    ctx = TensorContext()
    x = ctx.add_graph_input("img", (1, 3, 17, 17))
    w = ctx.parameter("w", (4, 3, 3, 3), data=RNG.normal(size=(4, 3, 3, 3)).astype(np.float32))
    y = x.conv2d(w, stride=2, padding=1).relu()
    outs = {"conv": y, "mp": y.max_pool2d(2), "ap": y.avg_pool2d(3, 1), "gap": y.global_avg_pool()}
    res = run(ctx.compile_to_graph(outs), img=RNG.normal(size=(1, 3, 17, 17)).astype(np.float32))
    for (k, t), r in zip(outs.items(), res, strict=True):
        assert tuple(t.shape) == r.shape, k
    assert res[3].reshape(4) == pytest.approx(res[0].mean((2, 3)).reshape(4), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=2, max_size=4),
    st.data(),
)
def test_random_permute_reshape_roundtrip(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    ctx = TensorContext()
    x = ctx.add_graph_input("x", tuple(shape))
    y = x.permute(*perm).reshape(-1)
    xv = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    (out,) = run(ctx.compile_to_graph([y]), x=xv)
    np.testing.assert_array_equal(out, xv.transpose(perm).reshape(-1))


def test_metadata_and_shape_only_parameters():
    ctx = TensorContext()
    x = ctx.add_graph_input("x", ("seq", 16), max_dims={"seq": 128})
    w = ctx.parameter("big", (16, 1 << 20))  # 64 MiB of float32 that must never be allocated
    model = ctx.compile_to_graph({"y": x @ w})
    init = model.graph.initializer[0]
    assert init.data_location == onnx.TensorProto.EXTERNAL
    assert {e.key: e.value for e in init.external_data}["location"] == SHAPE_ONLY_LOCATION
    assert model.ByteSize() < 10_000
    assert props(model)[DIM_MAX_KEY] == '{"seq": 128}'


def test_unused_nodes_and_parameters_are_dropped():
    ctx = TensorContext()
    x = ctx.add_graph_input("x", (2, 2))
    ctx.parameter("unused", (2, 2), data=np.ones((2, 2), np.float32))
    _ = x.exp()
    model = ctx.compile_to_graph({"y": x.relu()})
    assert [n.op_type for n in model.graph.node] == ["Relu"]
    assert model.graph.output[0].name == "y"
    assert not model.graph.initializer


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda c: c.add_graph_input("x", ("seq", 4)), "no declared maximum"),
        (lambda c: c.add_graph_input("x", (2, 3)) @ c.add_graph_input("y", (4, 2)), "inner dimensions"),
        (lambda c: c.add_graph_input("x", (2, 3)) + c.add_graph_input("y", (4, 3)), "do not broadcast"),
        (lambda c: (c.add_graph_input("x", (2,)), c.add_graph_input("x", (2,))), "already used"),
        (lambda c: c.parameter("p", (2, 2), data=np.ones((3, 2))), "data shape"),
        (lambda c: c.add_graph_input("x", (2,), "complex64"), "unsupported dtype"),
        (lambda c: c.add_graph_input("x", (6,)).reshape(4, -1), "cannot reshape"),
        (lambda c: c.add_graph_input("x", (2, 3)).permute(0, 0), "not a permutation"),
        (lambda c: c.add_graph_input("x", (2, 3)).where(1.0, 0.0), "bool condition"),
    ],
)
def test_builder_misuse_raises_clear_errors(build, message):
    with pytest.raises(BuilderError, match=message):
        build(TensorContext())
