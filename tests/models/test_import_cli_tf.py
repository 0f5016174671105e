"""``splitup import`` dispatches a .keras file or a SavedModel directory to ``splitup.models.tf_import``: the
missing-extra error is tested everywhere (Keras and TensorFlow hidden from the import system), the
conversion only where the extra is installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from splitup.cli import main
from splitup.models.errors import MissingExtraError
from splitup.models.tf_import import import_tensorflow


@pytest.fixture
def no_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("keras", "tensorflow", "tf2onnx"):
        monkeypatch.setitem(sys.modules, name, None)  # `import keras` now raises ImportError


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def test_keras_file_without_the_extra_names_it(tmp_path: Path, no_tensorflow: None, capsys) -> None:
    src = tmp_path / "model.keras"
    src.write_bytes(b"PK\x03\x04 not really a model")
    with pytest.raises(MissingExtraError) as info:
        import_tensorflow(src, dim_max={"batch": 1})
    assert info.value.extra == "tensorflow"
    line = _error(capsys, ["import", str(src), "--out", str(tmp_path / "m.onnx")])
    assert "splitup[tensorflow]" in line and "Keras" in line
    assert not (tmp_path / "m.onnx").exists()


def test_savedmodel_without_the_extra_names_it(tmp_path: Path, no_tensorflow: None, capsys) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\0")
    line = _error(capsys, ["import", str(saved), "--out", str(tmp_path / "m.onnx"), "--dim-max", "d1=8"])
    assert "splitup[tensorflow]" in line and "TensorFlow" in line


def test_options_that_do_not_apply_are_refused(tmp_path: Path, capsys) -> None:
    src = tmp_path / "model.keras"
    src.write_bytes(b"x")
    assert "is not NAME=N" in _error(capsys, ["import", str(src), "--out", str(tmp_path / "m.onnx"),
                                               "--dim-max", "d1=zero"])
    assert "--dtype and --max-seq apply to Hugging Face" in _error(
        capsys, ["import", str(src), "--out", str(tmp_path / "m.onnx"), "--dtype", "float16"])
    hf = tmp_path / "hf"
    hf.mkdir()
    assert "--dim-max applies to a .keras file" in _error(
        capsys, ["import", str(hf), "--out", str(tmp_path / "m.onnx"), "--dim-max", "d1=4"])


def _keras():  # noqa: ANN202 - the keras module, or None where it (or its backend) is missing
    if importlib.util.find_spec("keras") is None:
        return None
    try:
        import keras
    except Exception:  # noqa: BLE001 - Keras installed without its configured backend
        return None
    return keras


def test_keras_file_becomes_a_validated_onnx(tmp_path: Path, capsys) -> None:
    keras = _keras()
    if keras is None:
        pytest.skip("the Keras import path needs the tensorflow (or keras) extra")
    import onnx

    from splitup.graph.meta import DIM_MAX_KEY

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((None, 8), name="tokens"), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(4)])
    src = tmp_path / "tiny.keras"
    m.save(src)
    out = tmp_path / "tiny.onnx"
    assert main(["import", str(src), "--out", str(out), "--max-batch", "2", "--dim-max", "d1=12"]) == 0
    model = onnx.load(out)
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "d1", 8]
    props = {p.key: p.value for p in model.metadata_props}
    assert props[DIM_MAX_KEY] == '{"batch": 2, "d1": 12}'
    assert "next: splitup plan" in capsys.readouterr().out
