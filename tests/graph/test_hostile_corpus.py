"""The hostile-model corpus in tests/data/hostile: committed as generated, every file refused.

Each model is refused by ``validate_file`` with exactly the error class ``manifest.json`` names, and by
``splitup validate`` with exit 2 and one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import splitup.cli.validate as cli_validate
from splitup.cli import main
from splitup.graph.errors import GraphRejected
from splitup.graph.limits import Limits
from splitup.graph.validate import validate_file

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "hostile"
MANIFEST: dict[str, dict] = json.loads((CORPUS / "manifest.json").read_text())
# Limits fields that `splitup validate` takes as options; the rest are patched in for the in-process run.
CLI_OPTIONS = {"max_total_bytes": "--max-bytes", "max_tensor_bytes": "--max-tensor-bytes"}


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_hostile", DATA / "make_hostile.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every file under root by relative path: bytes for files, 'symlink -> target' for links."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            out[rel] = f"symlink -> {os.readlink(path)}" if path.is_symlink() else path.read_bytes()
    return out


def test_committed_corpus_is_what_the_script_generates(tmp_path: Path) -> None:
    gen = _load_generator()
    manifest = gen.generate(tmp_path / "hostile")
    assert manifest == MANIFEST
    assert MANIFEST["task_over_limit.onnx"]["cli_args"] == ["--max-bytes", "65536"]
    fresh, committed = _tree(tmp_path / "hostile"), _tree(CORPUS)
    assert sorted(fresh) == sorted(committed), "run: python tests/data/make_hostile.py"
    for rel, content in fresh.items():
        assert committed[rel] == content, f"{rel} differs; run: python tests/data/make_hostile.py"
    assert sum(len(v) for v in committed.values()) < 1_000_000


def test_corpus_covers_every_rejection_class() -> None:
    errors = {entry["error"] for entry in MANIFEST.values()}
    assert errors >= {
        "DisallowedOp", "DisallowedDomain", "BadOpset", "ExternalDataEscape", "TensorTooLarge", "TaskTooLarge",
        "UnboundedDimension", "MalformedGraph", "ProtoTooLarge", "StringTensor", "ControlFlowRejected",
    }
    models = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.onnx")}
    assert models == set(MANIFEST)


def _limits(entry: dict) -> Limits:
    return Limits(**entry.get("limits", {}))


@pytest.mark.parametrize("rel", sorted(MANIFEST))
def test_validate_file_rejects_with_the_expected_class(rel: str) -> None:
    entry = MANIFEST[rel]
    with pytest.raises(GraphRejected) as info:
        validate_file(CORPUS / rel, limits=_limits(entry))
    assert type(info.value).__name__ == entry["error"], str(info.value)
    for name in entry["names"]:
        assert name in str(info.value), f"{name!r} not named in: {info.value}"
    # Without its tighter limit, a model rejected only for its size is otherwise a valid graph.
    if entry.get("limits"):
        validate_file(CORPUS / rel)


def _cli_args(rel: str, entry: dict) -> tuple[list[str], dict[str, int]]:
    """The command line for a corpus entry, and the limits it cannot express (patched in-process)."""
    args = ["validate", str(CORPUS / rel), *entry.get("cli_args", [])]
    patched = {k: v for k, v in entry.get("limits", {}).items() if k not in CLI_OPTIONS}
    return args, patched


@pytest.mark.parametrize("rel", sorted(MANIFEST))
def test_cli_rejects_with_one_line(rel: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args, patched = _cli_args(rel, MANIFEST[rel])
    if patched:  # limits the CLI has no option for (the proto size): the defaults it starts from
        monkeypatch.setattr(cli_validate, "Limits", functools.partial(Limits, **patched))
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("rel", ["external_symlink/model.onnx", "tensor_over_cap.onnx", "task_over_limit.onnx"])
def test_cli_subprocess(rel: str) -> None:
    args, patched = _cli_args(rel, MANIFEST[rel])
    assert not patched
    proc = subprocess.run([sys.executable, "-m", "splitup", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_cli_refuses_a_file_over_the_real_proto_limit_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.onnx"
    with path.open("wb") as fh:  # sparse: 2 GiB of apparent size, no disk blocks
        fh.truncate(Limits().max_proto_bytes + 1)
    proc = subprocess.run([sys.executable, "-m", "splitup", "validate", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: model file is 2147483648 bytes")


def test_manifest_limits_are_real_limits_fields() -> None:
    fields = {f.name for f in dataclasses.fields(Limits)}
    for entry in MANIFEST.values():
        assert set(entry.get("limits", {})) <= fields
