"""``splitup validate``: exit 0 with a summary, exit 2 with one line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitup.cli import main
from splitup.units import BadByteSize, format_bytes, parse_bytes


def _model(op: str = "Relu", seq_max: int | None = 64) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 16), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"), helper.make_node(op, ["h"], ["y"], name="act")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    if seq_max is not None:
        helper.set_model_props(m, {"splitup.dim_max": json.dumps({"seq": seq_max})})
    return m


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.onnx"
    onnx.save(_model(), path)
    return path


def test_accepts_with_a_summary(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "MatMul" in out and "64" in out and "256 B" in out  # ops, params (4x16), their bytes


def test_json_report(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(good), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameter_count"] == 64
    assert report["output_shapes"] == {"y": [64, 16]}
    # Peak: h and y (64 x 16 floats each) live together while act runs.
    assert report["total_bytes"] == 256 + 2 * 64 * 16 * 4


def test_an_old_opset_is_upgraded_and_the_upgraded_graph_validated(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from splitup.graph.errors import BadOpset
    from splitup.graph.validate import validate_model

    old = _model()
    old.opset_import[0].version = 9  # MatMul and Relu exist since opset 1
    old.ir_version = 4
    old.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 16]))
    with pytest.raises(BadOpset, match="upgrade_opset"):  # a node never upgrades: the remedy is named
        validate_model(old)
    path = tmp_path / "old.onnx"
    onnx.save(old, path)
    assert main(["validate", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["upgraded_from_opset"] == 9 and report["opset"] == 13
    assert main(["validate", str(path)]) == 0
    assert "from opset 9" in capsys.readouterr().out


def test_max_bytes_with_suffix(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(good), "--max-bytes", "1MiB"]) == 0
    capsys.readouterr()
    assert main(["validate", str(good), "--max-bytes", "8kB"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task needs") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such file"),
        (b"", "empty input"),
        (b"\x08\x07", "no graph"),
        (b"this is not a protobuf at all \xff\xfe", "error:"),
        ("truncated", "not a parsable ONNX model"),
        ("custom_op", "not on the allow-list [node act"),
        ("unbounded", "no maximum declared"),
    ],
)
def test_rejects_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, reason: str) -> None:
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        data = _model().SerializeToString()
        path.write_bytes(data[: len(data) - 7])
    elif content == "custom_op":
        onnx.save(_model(op="MyFancyOp"), path)
    elif content == "unbounded":
        onnx.save(_model(seq_max=None), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert reason in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1


def test_directory_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err


def test_bad_max_bytes_is_a_usage_error(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate", str(good), "--max-bytes", "lots"])
    assert info.value.code == 2
    assert "not a byte size" in capsys.readouterr().err


def test_subprocess(good: Path, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "splitup", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    fail = subprocess.run([sys.executable, "-m", "splitup", "validate", str(bad)], capture_output=True, text=True)
    assert fail.returncode == 2 and fail.stderr.startswith("error: ") and "Traceback" not in fail.stderr


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("12GiB", 12 * 2**30), ("500MB", 500 * 10**6), ("1.5 KiB", 1536), ("2g", 2 * 2**30),
     ("7b", 7), (" 3 kb ", 3000)],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "-1", "12 parsecs", "GiB", "1e9", "0x10"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(BadByteSize):
        parse_bytes(text)


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(12 * 2**30) == "12.0 GiB"
    assert format_bytes(500 * 2**20) == "500 MiB"
    assert parse_bytes(format_bytes(3 * 2**40).replace(" ", "")) == 3 * 2**40


def test_external_data_is_checked_against_the_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _model()
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 16], data_location=TensorProto.EXTERNAL)
    entry = w.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    m.graph.initializer[0].CopyFrom(w)
    inside = tmp_path / "inside.onnx"
    onnx.save(m, inside)
    assert main(["validate", str(inside)]) == 0
    entry.value = "../w.bin"
    m.graph.initializer[0].CopyFrom(w)
    escaping = tmp_path / "escaping.onnx"
    onnx.save(m, escaping)
    capsys.readouterr()
    assert main(["validate", str(escaping)]) == 2
    assert "initializer w" in capsys.readouterr().err


def _expand_file(tmp_path: Path) -> Path:
    """y = Expand(x, shape): the output's size is the values of the graph input ``shape``."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "expand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_value_max_declares_the_range_of_a_sizing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _expand_file(tmp_path)
    assert main(["validate", str(path)]) == 2
    assert "--value-max shape=N" in capsys.readouterr().err  # the refusal names the remedy
    assert main(["validate", str(path), "--value-max", "shape=8/16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output_shapes"] == {"y": [8, 16]} and report["value_max"] == {"shape": [[0, 8], [0, 16]]}
    assert main(["validate", str(path), "--value-max", "shape=2:16"]) == 0
    assert "16, 16" in capsys.readouterr().out  # one range for both elements: each dim up to 16
    plan_dir = tmp_path / "plan"
    assert main(["plan", str(path), "--vram", "1GiB", "--value-max", "shape=8/16", "--out", str(plan_dir)]) == 0
    assert '"value_max"' in (plan_dir / "plan.json").read_text()


@pytest.mark.parametrize(("option", "words"), [
    ("shape=x", "not a number"), ("shape", "not NAME=VALUE"), ("shape=-1", "range"), ("nope=4", "not a graph input"),
    ("shape=1/2/3", "one entry per element"),
])
def test_bad_value_max_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, words: str) -> None:
    assert main(["validate", str(_expand_file(tmp_path)), "--value-max", option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
