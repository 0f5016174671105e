"""A second model on the same nodes: a tiny GPT-2 in 4 tasks, published to the running store, loaded
into the running nodes on demand (POST /tasks), and run next to the LLaMA tasks they already hold."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from splitup.client.pipeline import PipelineClient
from splitup.client.sampling import generate_tokens
from splitup.graph import zoo
from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.runtime.local import LocalPipeline
from splitup.storage import BlobStore, publish_plan


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, store_dir, store_url, cluster):
    model = zoo.build("tiny-gpt2", seed=1)
    out = tmp_path_factory.mktemp("gpt2-plan")
    plan = make_plan(model, "tiny-gpt2", budget_for_tasks(analyze(model), 4), workspace_bytes=0, out_dir=out).plan
    assert len(plan.tasks) == 4
    publish_plan(out, BlobStore(store_dir))  # the store process serves new blobs from its directory
    nodes = [cluster.a, cluster.b, cluster.c, cluster.spare]
    for node, task in zip(nodes, plan.tasks, strict=True):
        r = httpx.post(node.url + "/tasks", json={"task_id": task.task_id}, timeout=60)
        assert r.status_code == 200, r.text
    return plan, out, [n.url for n in nodes]


def test_gpt2_batch_and_generation_across_four_nodes(gpt2):
    plan, plan_dir, route = gpt2
    local = LocalPipeline(plan_dir)
    ids = np.random.default_rng(4).integers(0, 512, (1, 13))
    want = local.run({"input_ids": ids})
    with PipelineClient(plan, route) as client:
        got = client.run({"input_ids": ids})
        assert len(client.last_hops) == 4
        for name, value in want.items():
            assert float(np.max(np.abs(got[name] - value))) <= 1e-5, name
        tokens = client.generate([7, 7, 3], 16)
    local.reset()
    assert tokens == generate_tokens(lambda x: local.run({"input_ids": x})["logits"], [7, 7, 3], 16)
