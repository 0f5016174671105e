"""Fuzzing the loader and validator: any mutation is either accepted or a GraphRejected, nothing else."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from validator_fixtures import external, mlp, tiny_decoder

from splitup.graph.allowlist import ALLOWED_OPS
from splitup.graph.errors import ControlFlowRejected, GraphRejected, MalformedGraph
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


@pytest.fixture(autouse=True)
def _bounded_address_space(request: pytest.FixtureRequest) -> Iterator[None]:
    """Cap this process's address space at its current size + 4 GiB while a fuzz test runs.

    A guard for the shared machine: the validator once let ONNX data propagation materialise integer
    tensors of 10^7 to 5 * 10^8 elements (~140 bytes each; ``test_data_propagation_memory_is_bounded``).
    Should a regression bring that back, it surfaces here as a ``std::bad_alloc`` (a ``GraphRejected``)
    instead of the OOM killer.
    """
    status = Path("/proc/self/status")
    if not status.exists() or request.node.name == "test_data_propagation_memory_is_bounded":
        yield
        return
    vm_kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kib * 1024 + 4 * 2**30
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


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


# --- the loader on arbitrary bytes: a GraphRejected or a model, quickly, never a crash or a hang ------


def _load_and_validate_in_time(source: bytes | Path) -> None:
    t0 = time.perf_counter()
    try:
        _outcome(load_model(source), None)
    except GraphRejected as exc:
        assert str(exc)
    assert time.perf_counter() - t0 < 10, "loader or validator took too long"


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_crash_or_hang_the_loader(data: bytes) -> None:
    _load_and_validate_in_time(data)


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data(), which=st.sampled_from(["tiny_decoder", "loop"]))
def test_truncated_and_spliced_models_from_a_file(data: st.DataObject, which: str, tmp_path_factory) -> None:
    """Cut a richer model (attention, nested Loop body) at any byte, or splice random bytes in; read from disk."""
    raw = (tiny_decoder() if which == "tiny_decoder" else _loop_model()).SerializeToString()
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    tail = data.draw(st.binary(max_size=32), label="tail")
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(raw[:cut] + tail)
    _load_and_validate_in_time(path)


def _loop_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"], name="keep_going"),
         helper.make_node("Add", ["s_in", "s_in"], ["s_out"], name="double")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [2])],
    )
    m = mlp()
    m.graph.initializer.extend([numpy_helper.from_array(np.array(3, np.int64), "n"),
                                numpy_helper.from_array(np.array(True), "cond"),
                                numpy_helper.from_array(np.zeros(2, np.float32), "s0")])
    m.graph.node.append(helper.make_node("Loop", ["n", "cond", "s0"], ["s_final"], body=body, name="loop"))
    m.graph.output.append(helper.make_tensor_value_info("s_final", TensorProto.FLOAT, [2]))
    return m


def _nested_if_bytes(depth: int) -> bytes:
    """If inside If, ``depth`` deep, hand-encoded so the nesting costs bytes, not Python recursion."""
    raw = b""
    for _ in range(depth):
        # AttributeProto{name, g: GraphProto (6), type (20) = GRAPH (5)}; NodeProto{input, output, op_type, attribute}
        attr = _field(1, b"then_branch") + _field(6, raw) + _varint(20 << 3) + b"\x05"
        node = _field(1, b"cond") + _field(2, b"y") + _field(4, b"If") + _field(5, attr)
        raw = _field(1, node)  # GraphProto.node
    io = [helper.make_tensor_value_info(n, t, []).SerializeToString() for n, t in (("cond", TensorProto.BOOL),
                                                                                  ("y", TensorProto.FLOAT))]
    graph = raw + _field(11, io[0]) + _field(12, io[1])
    return b"\x08\x08" + _field(7, graph) + _field(8, b"\x10\x12")  # ir_version 8, graph, opset_import 18


@pytest.mark.timeout(60)
@pytest.mark.parametrize("depth", [20, 30, 200, 5000])
def test_deeply_nested_protos_are_refused_quickly(depth: int) -> None:
    """Protobuf's recursion limit or the subgraph-depth limit refuses them, never a stack overflow."""
    with pytest.raises(GraphRejected) as info:
        validate_model(load_model(_nested_if_bytes(depth)))
    # Three messages per level (graph, node, attribute): upb stops parsing past 100 levels of messages.
    assert isinstance(info.value, ControlFlowRejected if depth <= 30 else MalformedGraph), info.value


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\xff\xff\xff\xff\x07",  # graph field claiming a 2 GiB body
        b"\x3a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an 11-byte varint length
        b"\x0a" * 4096,  # a chain of empty length prefixes
        b"\x08" + b"\xff" * 64,  # a varint that never ends
        b"\x3a\x05\x0a\x03\x22\x01",  # truncated node inside the graph
    ],
)
def test_pathological_protobuf_prefixes(data: bytes) -> None:
    _load_and_validate_in_time(data)


_PROPAGATION_PROBE = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    sys.path.insert(0, sys.argv[1])
    from validator_fixtures import fin, model
    from splitup.graph.errors import GraphRejected
    from splitup.graph.validate import validate_model
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),  # Reshape(x, Shape(x)): data propagation runs
             helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
             helper.make_node("Expand", ["a", "n"], ["big"], name="expand"),  # 4M int64: 32 MB, far under the caps
             helper.make_node("Cast", ["big"], ["y"], to=TensorProto.FLOAT, name="cast")]
    inits = [numpy_helper.from_array(np.array(7, np.int64), "a"),
             numpy_helper.from_array(np.array([4_000_000], np.int64), "n")]
    m = model(nodes, [fin("x", [1])], ["r", "y"], inits)
    def hwm():  # this process's peak RSS in bytes (ru_maxrss would carry the forking parent's peak over exec)
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
    base = hwm()
    try:
        validate_model(m)
    except GraphRejected:
        pass
    print(hwm() - base)
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_data_propagation_memory_is_bounded() -> None:
    """Validating a graph must cost far less memory than the tensors it describes (here 32 MB)."""
    proc = subprocess.run([sys.executable, "-c", _PROPAGATION_PROBE, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 128 * 2**20, f"validation grew the process by {int(proc.stdout) / 2**20:.0f} MiB"
