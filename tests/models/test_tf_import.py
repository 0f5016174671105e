"""TensorFlow / Keras models in: a Keras CNN, a small Keras transformer encoder, a ``.keras`` file and a
SavedModel become validated ONNX graphs, split into 2-3 tasks, run through ``LocalPipeline`` and match
the framework's own outputs. Skipped, with the reason, where the extra is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the Keras import path needs the keras (or tensorflow) extra")

from splitup.models.errors import ModelError  # noqa: E402
from splitup.models.tf_import import import_tensorflow  # noqa: E402
from splitup.partition import analyze, budget_for_tasks  # noqa: E402
from splitup.partition.plan import make_plan  # noqa: E402
from splitup.runtime.local import LocalPipeline  # noqa: E402

BATCH_MAX, SEQ_MAX = 4, 16


def _cnn():  # noqa: ANN202 - keras.Model
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(), keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])


def _encoder():  # noqa: ANN202 - keras.Model
    keras.utils.set_random_seed(1)
    x = keras.Input((None, 32), name="tokens")
    h = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(x, x)
    h = keras.layers.LayerNormalization()(x + h)
    f = keras.layers.Dense(64, activation="gelu")(h)
    f = keras.layers.Dense(32)(f)
    out = keras.layers.LayerNormalization()(h + f)
    return keras.Model(x, keras.layers.Dense(8)(out))


def _split_and_compare(model, name: str, x: np.ndarray, want: np.ndarray, tmp_path: Path, tasks: int) -> None:  # noqa: ANN001
    a = analyze(model)
    plan = make_plan(model, name, budget_for_tasks(a, tasks), workspace_bytes=0, out_dir=tmp_path / name).plan
    assert len(plan.tasks) == tasks
    got = LocalPipeline(tmp_path / name).run({model.graph.input[0].name: x})
    np.testing.assert_allclose(next(iter(got.values())), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tasks", [2, 3])
def test_keras_cnn(tasks: int, tmp_path: Path) -> None:
    m = _cnn()
    model = import_tensorflow(m, dim_max={"batch": BATCH_MAX})
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 28, 28, 1]
    for batch in (1, BATCH_MAX):  # also at the declared maximum
        x = np.random.default_rng(batch).random((batch, 28, 28, 1), dtype=np.float32)
        _split_and_compare(model, f"cnn{batch}", x, keras.ops.convert_to_numpy(m(x)), tmp_path, tasks)


def test_keras_transformer_encoder(tmp_path: Path) -> None:
    m = _encoder()
    model = import_tensorflow(m, dim_max={"batch": BATCH_MAX, "seq": SEQ_MAX}, dim_names={"tokens": ["batch", "seq"]})
    x = np.random.default_rng(0).standard_normal((2, SEQ_MAX, 32)).astype(np.float32)
    _split_and_compare(model, "encoder", x, keras.ops.convert_to_numpy(m(x)), tmp_path, 2)


def test_keras_two_inputs_share_the_batch() -> None:
    import onnxruntime as ort

    a, b = keras.Input((None, 4), name="a"), keras.Input((3,), name="b")
    m = keras.Model([a, b], keras.ops.sum(keras.layers.Dense(3)(a), axis=1) + b)
    model = import_tensorflow(m, dim_max={"batch": BATCH_MAX, "seq": SEQ_MAX}, dim_names={"a": ["batch", "seq"]})
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes == {"a": ["batch", "seq", 4], "b": ["batch", 3]}
    rng = np.random.default_rng(4)
    xa, xb = rng.random((3, 5, 4), dtype=np.float32), rng.random((3, 3), dtype=np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": xa, "b": xb})
    np.testing.assert_allclose(got[0], keras.ops.convert_to_numpy(m([xa, xb])), atol=1e-4, rtol=1e-4)


def test_keras_file(tmp_path: Path) -> None:
    m = _cnn()
    m.save(tmp_path / "cnn.keras")
    model = import_tensorflow(tmp_path / "cnn.keras", dim_max={"batch": BATCH_MAX})
    x = np.random.default_rng(3).random((2, 28, 28, 1), dtype=np.float32)
    _split_and_compare(model, "cnn-file", x, keras.ops.convert_to_numpy(m(x)), tmp_path, 2)


def test_savedmodel(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow", reason="a SavedModel needs the tensorflow extra")
    pytest.importorskip("tf2onnx", reason="the SavedModel route needs tf2onnx (tensorflow extra)")

    class Mlp(tf.Module):
        def __init__(self) -> None:
            rng = np.random.default_rng(5)
            self.w1 = tf.Variable(rng.standard_normal((16, 64)).astype(np.float32))
            self.w2 = tf.Variable(rng.standard_normal((64, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec((None, 16), tf.float32, name="features")])
        def __call__(self, features):  # noqa: ANN001, ANN204
            return {"scores": tf.matmul(tf.nn.relu(tf.matmul(features, self.w1)), self.w2)}

    module = Mlp()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.__call__})
    model = import_tensorflow(tmp_path / "sm", dim_max={"batch": BATCH_MAX})
    assert model.graph.input[0].name == "features"
    x = np.random.default_rng(6).standard_normal((3, 16)).astype(np.float32)
    _split_and_compare(model, "savedmodel", x, module(tf.constant(x))["scores"].numpy(), tmp_path, 2)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="give a maximum"):
        import_tensorflow(_cnn(), dim_max={})
    (tmp_path / "x.txt").write_text("no")
    with pytest.raises(ModelError, match="not a .keras file nor a SavedModel"):
        import_tensorflow(tmp_path / "x.txt", dim_max={"batch": 1})
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="Keras cannot load it"):
        import_tensorflow(tmp_path / "bad.keras", dim_max={"batch": 1})


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") == "torch", reason="this run is the torch route already")
def test_torch_backend_route(tmp_path: Path) -> None:
    """The other route in a process of its own (Keras picks its backend once, at import)."""
    pytest.importorskip("torch", reason="Keras on the torch backend needs the torch extra")
    here = str(Path(__file__).parent)
    code = (f"import numpy as np, keras, sys; sys.path.insert(0, {here!r}); from test_tf_import import _cnn;"
            "from splitup.models.tf_import import import_tensorflow; import onnxruntime as ort;"
            "m = _cnn(); p = import_tensorflow(m, dim_max={'batch': 4}); x = np.ones((2, 28, 28, 1), np.float32);"
            "s = ort.InferenceSession(p.SerializeToString());"
            "print(keras.backend.backend(), float(np.abs(s.run(None, {'image': x})[0] - keras.ops.convert_to_numpy(m(x))).max()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": "torch"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    backend, diff = out.stdout.split()[-2:]
    assert backend == "torch" and float(diff) < 1e-4
