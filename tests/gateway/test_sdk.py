"""The Python SDK against the same local market: ``Client.run`` for a graph that is not a language model
(published next to the tiny LLaMA and served by two more node processes), ``generate`` streaming, and
``import splitup`` staying light."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import splitup
from splitup.demo.models import node_budgets
from splitup.demo.network import placement
from splitup.graph import zoo
from splitup.market.connect import connect
from splitup.partition.plan import make_plan
from splitup.sdk.catalog import publish_model
from splitup.storage import BlobStore

from .conftest import reference_text, start_market_nodes


@pytest.fixture(scope="module")
def mlp_market(env):
    """An MLP split in two tasks, registered on the market, and two nodes that hold both tasks."""
    graph = zoo.build("mlp", seed=3)
    budgets = node_budgets(graph, 2, 2, 0)
    plan = make_plan(graph, "mlp", budgets, workspace_bytes=0, out_dir=env.net.root / "plan-mlp").plan
    authority = env.net.wallets["authority"]
    market = connect(env.net.rpc_url, authority)
    publish_model(market, authority, env.net.root / "plan-mlp", BlobStore(env.net.root / "store"), kind="graph",
                  description="5-layer MLP")
    _, primary = placement(plan, budgets)
    start_market_nodes(env, market, "mlp", [t.task_id for t in plan.tasks],
                       [[plan.tasks[i].task_id for i in primary[k]] for k in range(2)], budgets[:2])
    return graph


def test_run_any_graph_through_the_market(env, mlp_market) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    with splitup.Client(env.net.rpc_url, env.net.wallet_path("client"), store_url=env.net.store_url) as client:
        assert {m.name for m in client.models()} == {"tiny-llama", "mlp"}
        result = client.run("mlp", {"x": x})
    want = ort.InferenceSession(mlp_market.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(result.outputs["y"], want, rtol=1e-5, atol=1e-6)
    r = result.report
    assert r is not None and r.closed and [t.status for t in r.tasks] == ["SETTLED", "SETTLED"]
    assert r.verified == 2  # this market verifies every task
    assert {t.node for t in r.tasks} <= {str(n) for n in _node_addresses(env)}


def _node_addresses(env):
    m = connect(env.net.rpc_url, env.net.wallets["authority"])
    return [a for a, _ in m.nodes()]


def test_generate_streams_text_pieces(env) -> None:
    with splitup.Client(env.net.rpc_url, env.net.wallet_path("client"), store_url=env.net.store_url) as client:
        pieces = list(client.generate("tiny-llama", "stream me", max_tokens=6, temperature=0, stream=True))
        whole = client.generate("tiny-llama", "stream me", max_tokens=6, temperature=0)
    assert "".join(pieces) == whole.text == reference_text(env, "stream me", 6)
    assert whole.report is not None and whole.report.closed
    assert 0 < len(whole.token_ids) <= 6 and whole.tokens_per_s > 0


def test_import_splitup_stays_light() -> None:
    code = ("import sys, splitup; heavy = [m for m in ('solana', 'httpx', 'onnxruntime', 'splitup.sdk.client') "
            "if m in sys.modules]; print(heavy); assert not heavy; assert splitup.Client.__name__ == 'Client'")
    subprocess.run([sys.executable, "-c", code], check=True)
