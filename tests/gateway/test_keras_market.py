"""TensorFlow / Keras models from file to a paid, verified market job: a ``.keras`` file and a SavedModel
directory are imported (``import_tensorflow``), planned into 2 tasks each, published on the local market
(which verifies every task, so a validator re-executes each one), served by two node processes and run
with ``Client.run``; the outputs match the framework's own. Skipped, with the reason, where the extra is
not installed (``splitup[tensorflow]``; the ``.keras`` half also runs on Keras 3 with the torch backend)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import splitup
from splitup.market.connect import connect
from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.sdk.catalog import publish_model
from splitup.storage import BlobStore

keras = pytest.importorskip("keras", reason="Keras models need the tensorflow extra (or keras + torch)")

from splitup.models.tf_import import import_tensorflow  # noqa: E402

from .conftest import start_market_nodes  # noqa: E402

BATCH_MAX = 4


@dataclass
class Imported:
    name: str
    input: str
    x: np.ndarray
    want: np.ndarray  # the framework's own output for x


def _keras_file(root: Path) -> Imported:
    keras.utils.set_random_seed(7)
    m = keras.Sequential([keras.Input((12, 12, 1), name="pixels"), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)])
    m.save(root / "small.keras")
    x = np.random.default_rng(8).random((2, 12, 12, 1), dtype=np.float32)
    return Imported("keras-small", "pixels", x, keras.ops.convert_to_numpy(m(x)))


def _savedmodel(root: Path) -> Imported:
    tf = pytest.importorskip("tensorflow", reason="a SavedModel needs the tensorflow extra")
    pytest.importorskip("tf2onnx", reason="the SavedModel route needs tf2onnx (tensorflow extra)")
    rng = np.random.default_rng(9)
    w1 = tf.Variable(rng.standard_normal((10, 24)).astype(np.float32) / 3)
    w2 = tf.Variable(rng.standard_normal((24, 5)).astype(np.float32) / 5)
    module = tf.Module()
    module.w1, module.w2 = w1, w2
    module.serve = tf.function(lambda reading: {"out": tf.matmul(tf.nn.sigmoid(tf.matmul(reading, w1)), w2)},
                               input_signature=[tf.TensorSpec((None, 10), tf.float32, name="reading")])
    tf.saved_model.save(module, str(root / "sm"), signatures={"serving_default": module.serve})
    x = rng.standard_normal((3, 10)).astype(np.float32)
    return Imported("tf-savedmodel", "reading", x, module.serve(tf.constant(x))["out"].numpy())


@pytest.fixture(scope="module")
def tf_market(env) -> dict[str, Imported]:
    """Every importable source, planned in 2 tasks and published; two nodes hold all the tasks, each the
    primary of one task per model, so the other is there to validate it."""
    root = env.net.root / "tf-models"
    root.mkdir(exist_ok=True)
    sources = {"keras": (_keras_file, "small.keras")}
    try:
        import tensorflow  # noqa: F401
        import tf2onnx  # noqa: F401

        sources["savedmodel"] = (_savedmodel, "sm")
    except ImportError:
        pass
    authority = env.net.wallets["authority"]
    market = connect(env.net.rpc_url, authority)
    imported, task_ids, vram = {}, [[], []], 0
    for key, (make, path) in sources.items():
        item = make(root)
        model = import_tensorflow(root / path, dim_max={"batch": BATCH_MAX})
        assert model.graph.input[0].name == item.input
        plan = make_plan(model, item.name, budget_for_tasks(analyze(model), 2), workspace_bytes=0,
                         out_dir=root / f"plan-{key}").plan
        assert len(plan.tasks) == 2
        publish_model(market, authority, root / f"plan-{key}", BlobStore(env.net.root / "store"), kind="graph",
                      description=f"{key} import test")
        for k, t in enumerate(plan.tasks):
            task_ids[k].append(t.task_id)
        vram += sum(t.vram_bytes for t in plan.tasks)
        imported[key] = item
    every = task_ids[0] + task_ids[1]
    start_market_nodes(env, market, "tf", every, task_ids, [vram, vram])
    return imported


@pytest.mark.parametrize("key", ["keras", "savedmodel"])
def test_tf_model_runs_as_a_paid_verified_job(env, tf_market, key: str) -> None:
    if key not in tf_market:
        pytest.skip("a SavedModel needs the tensorflow extra (tensorflow-cpu, tf2onnx)")
    item = tf_market[key]
    with splitup.Client(env.net.rpc_url, env.net.wallet_path("client"), store_url=env.net.store_url) as client:
        result = client.run(item.name, {item.input: item.x})
    (got,) = result.outputs.values()
    np.testing.assert_allclose(got, item.want, atol=1e-4, rtol=1e-4)
    r = result.report
    assert r is not None and r.closed and r.paid > 0
    assert [t.status for t in r.tasks] == ["SETTLED", "SETTLED"]
    for t in r.tasks:
        assert t.verdict == "agree" and t.validator not in (None, t.node)  # re-executed by the other holder
        assert t.node_paid == t.price > 0 and t.validator_paid > 0
        assert t.node_slashed == t.validator_slashed == 0
