"""Fuzzing the loader and validator: any mutation is either accepted or a GraphRejected, nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from validator_fixtures import external, mlp, tiny_decoder

from splitup.graph.allowlist import ALLOWED_OPS
from splitup.graph.errors import GraphRejected
from splitup.graph.limits import Limits
from splitup.graph.validate import load_model, validate_model

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OP_TYPES = st.one_of(
    st.sampled_from(sorted(ALLOWED_OPS)),
    st.sampled_from(["NonZero", "RandomNormal", "Unique", "StringNormalizer", "SequenceConstruct", "Attention"]),
    st.text(min_size=0, max_size=12),
)
LOCATIONS = st.one_of(
    st.sampled_from(["w.bin", "sub/w.bin", "../w.bin", "/etc/passwd", "a/../../w.bin", "C:\\w.bin",
                     "link/secret.bin", "link", "..", ".", "", "loop/x"]),
    st.text(max_size=20),
)
DIMS = st.one_of(
    st.integers(min_value=-5, max_value=2**62),
    st.sampled_from(["seq", "batch", "past", ""]),
    st.none(),
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.bin").write_bytes(b"\0" * 64)
    os.symlink(outside, root / "link")
    os.symlink(root / "loop", root / "loop")  # a symlink loop
    return root


def _outcome(m: onnx.ModelProto, bundle_dir: Path | None, limits: Limits | None = None) -> None:
    try:
        validate_model(m, limits=limits, bundle_dir=bundle_dir)
    except GraphRejected as exc:
        assert str(exc)  # always a readable reason


@st.composite
def mutated(draw: st.DrawFn) -> onnx.ModelProto:
    m = draw(st.sampled_from([mlp, tiny_decoder]))()
    graph = m.graph
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["op", "domain", "dim", "external", "meta", "rename", "opset", "dtype", "alloc"]))
        node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
        if kind == "op":
            node.op_type = draw(OP_TYPES)
        elif kind == "domain":
            node.domain = draw(st.sampled_from(["", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "com.microsoft"]))
        elif kind == "dim":
            vi = graph.input[draw(st.integers(0, len(graph.input) - 1))]
            dims = vi.type.tensor_type.shape.dim
            if dims:
                dim = dims[draw(st.integers(0, len(dims) - 1))]
                value = draw(DIMS)
                if value is None:
                    dim.Clear()
                elif isinstance(value, str):
                    dim.dim_param = value
                else:
                    dim.dim_value = value
        elif kind == "external":
            k = draw(st.integers(0, len(graph.initializer) - 1))
            init = graph.initializer[k]
            graph.initializer[k].CopyFrom(external(init.name, tuple(init.dims), draw(LOCATIONS), init.data_type))
        elif kind == "meta":
            del m.metadata_props[:]
            value = draw(st.one_of(st.text(max_size=30), st.sampled_from(['{"seq": 8}', '{"seq": -1}', '{"seq": 1e99}',
                                                                          '{"seq": 99999999999999999999}', "[]"])))
            onnx.helper.set_model_props(m, {"splitup.dim_max": value})
        elif kind == "rename":
            if node.input:
                node.input[draw(st.integers(0, len(node.input) - 1))] = draw(
                    st.sampled_from(["", "ghost", graph.node[-1].output[0], graph.node[0].output[0]]))
        elif kind == "opset":
            m.opset_import[0].version = draw(st.integers(-1, 40))
        elif kind == "alloc":
            # Ops whose output size comes from values: sized before ONNX's data propagation may touch them.
            tag = f"fz{len(graph.node)}"
            values = draw(st.lists(st.integers(-(2**62), 2**62), min_size=3, max_size=3))
            for name, v in zip(("a", "b", "c"), values, strict=True):
                graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), f"{tag}{name}"))
            op = draw(st.sampled_from(["Range", "ConstantOfShape", "Expand"]))
            ins = {"Range": ["a", "b", "c"], "ConstantOfShape": ["b"], "Expand": ["a", "b"]}[op]
            if op != "Range":
                graph.initializer[-2].CopyFrom(numpy_helper.from_array(np.array([values[1]], np.int64), f"{tag}b"))
            graph.node.append(helper.make_node(op, [f"{tag}{i}" for i in ins], [f"{tag}out"], name=tag))
            graph.node.append(helper.make_node("Cast", [f"{tag}out"], [f"{tag}f"], to=TensorProto.FLOAT))
            graph.output.append(helper.make_tensor_value_info(f"{tag}f", TensorProto.FLOAT, None))
        elif kind == "dtype":
            vi = graph.input[draw(st.integers(0, len(graph.input) - 1))]
            vi.type.tensor_type.elem_type = draw(st.integers(0, 30))
    return m


@FUZZ
@given(m=mutated())
def test_mutated_graphs_are_accepted_or_rejected_cleanly(m: onnx.ModelProto, bundle: Path) -> None:
    _outcome(m, bundle)
    _outcome(m, None, Limits(max_total_bytes=4096))


@FUZZ
@given(data=st.data())
def test_corrupted_bytes_never_crash_the_loader(data: st.DataObject) -> None:
    raw = bytearray(mlp().SerializeToString())
    for _ in range(data.draw(st.integers(1, 6))):
        choice = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if choice == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif choice == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(max_size=16))
    try:
        m = load_model(bytes(raw))
    except GraphRejected:
        return
    _outcome(m, None)


@FUZZ
@given(location=LOCATIONS)
def test_external_locations(location: str, bundle: Path) -> None:
    m = mlp()
    m.graph.initializer[0].CopyFrom(external("w1", (4, 8), location, TensorProto.FLOAT))
    try:
        validate_model(m, bundle_dir=bundle)
    except GraphRejected:
        return
    # Accepted: the location must be a plain relative path that stays inside the bundle.
    assert not location.startswith(("/", "\\")) and ".." not in location.replace("\\", "/").split("/")
    assert (bundle / location).resolve().is_relative_to(bundle.resolve())
