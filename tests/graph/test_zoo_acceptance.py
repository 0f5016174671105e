"""``splitup validate`` accepts every zoo model; LLaMA-70B's shape-only graph fits in 10 s and 1 GB."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from splitup.cli import main
from splitup.graph import zoo

# Runnable with seeded random weights; every other entry is checked as a shape-only planning graph.
SEEDED = sorted(n for n in zoo.ZOO if n in ("mlp", "cnn") or n.startswith("tiny-"))
# 70B: the budget test below; 405B: its fp32 embedding (8.4 GB) is over the per-tensor limit by design,
# it is a planning shape (tests/partition/test_refine.py), whose split tasks are validated when written.
SHAPE_ONLY = sorted(n for n in zoo.ZOO if n not in SEEDED and n not in ("llama-70b", "llama-405b"))


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # rich wraps the summary at the terminal width, and its title at the table's: short paths, wide console.
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.chdir(tmp_path)


def _accepts(path: Path, model: onnx.ModelProto, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process: exit 0, the summary names the file, every output and the parameter count."""
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert f"{path}: ok" in out.out and "nodes, opset" in out.out and "peak activations" in out.out
    assert re.search(rf"params\s+{_params(model):,} \(", out.out)
    for o in model.graph.output:
        dtype = "int64" if o.name.endswith(".length") else "float"  # a KV cache's length per sequence
        assert re.search(rf"output {re.escape(o.name)}\s+{dtype}\[", out.out), o.name
    return out.out


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


@pytest.mark.parametrize("name", SEEDED)
def test_cli_accepts_seeded_zoo_model(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = zoo.build(name, seed=0)
    path = Path(f"{name}.onnx")
    onnx.save(model, path)
    _accepts(path, model, capsys)


@pytest.mark.parametrize("name", ["llama-7b", *[n for n in SHAPE_ONLY if n != "llama-7b"]])
def test_cli_accepts_shape_only_zoo_model(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = zoo.build(name, validate=False)  # the CLI is the validator under test
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
               if not t.name.startswith("rope."))
    path = Path(f"{name}.onnx")
    onnx.save(model, path)
    out = _accepts(path, model, capsys)
    if name == "llama-7b":
        # 6,738,415,616 weights of LLaMA-2-7B plus the 2 x 4096 x 128 rotary tables
        assert re.search(r"params\s+6,739,464,192 \(", out) and re.search(r"output logits\s+float\[1, 128, 32000\]", out)


# A fresh interpreter, so the peak is this build's, not the test session's. VmHWM, not ru_maxrss: Linux
# carries ru_maxrss over fork + exec, so a child would inherit the pytest process's own peak.
_BUDGET_SCRIPT = textwrap.dedent("""
    import json, resource, time
    from pathlib import Path
    from splitup.graph import zoo
    from splitup.graph.validate import validate_model
    def peak_kib():
        status = Path("/proc/self/status")
        if status.exists():
            return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = peak_kib()
    t0 = time.perf_counter()
    model = zoo.build("llama-70b")  # builds and validates the shape-only graph
    elapsed = time.perf_counter() - t0
    peak = peak_kib()
    report = validate_model(model)
    print(json.dumps({"seconds": elapsed, "peak_kib": peak, "base_kib": base, "bytes": model.ByteSize(),
                      "params": report.parameter_count, "nodes": report.node_count}))
""")


def test_llama_70b_shape_only_builds_within_1gb() -> None:
    proc = subprocess.run([sys.executable, "-c", _BUDGET_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    # The build time is printed by bench/plan_table.py; wall-clock asserts fail on a loaded machine.
    # Peak resident memory of the whole process (interpreter, numpy, onnx included): an upper bound.
    assert m["peak_kib"] * 1024 < 2**30, m
    assert 68.5e9 < m["params"] < 69.5e9 and m["bytes"] < 20_000_000, m
