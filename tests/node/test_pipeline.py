"""A plan run across three node processes equals the single-process run."""

from __future__ import annotations

import numpy as np
import pytest

from splitup.client.pipeline import PipelineClient, plan_sends
from splitup.client.sampling import generate_tokens
from splitup.runtime.local import LocalPipeline

from .procs import free_port


@pytest.fixture(scope="module")
def local(plan_dir) -> LocalPipeline:
    return LocalPipeline(plan_dir)


def local_generate(local: LocalPipeline, prompt, n, **kw) -> list[int]:
    local.reset()
    return generate_tokens(lambda ids: local.run({"input_ids": ids})["logits"], prompt, n, **kw)


def test_batch_outputs_equal_the_single_process_run(plan, cluster, local):
    ids = np.random.default_rng(1).integers(0, 512, (1, 11))
    local.reset()
    ref = local.run({"input_ids": ids})
    with PipelineClient(plan, cluster.route) as client:
        got = client.run({"input_ids": ids})
        assert client.last_parked  # fetched from node c directly, not relayed through b and a
        assert [h["node"] for h in client.last_hops] == ["a", "b", "c"]
        assert all(h["ms"] >= 0 for h in client.last_hops)
    assert set(got) == set(ref)  # logits and every present.* cache
    for name, value in ref.items():
        assert got[name].shape == value.shape
        assert float(np.max(np.abs(got[name] - value))) <= 1e-5, name


def test_batch_of_many_inputs_in_flight_together(plan, cluster, local):
    rng = np.random.default_rng(2)
    items = [{"input_ids": rng.integers(0, 512, (1, int(n)))} for n in rng.integers(1, 30, 8)]
    with PipelineClient(plan, cluster.route) as client:
        results = client.run_batch(items, concurrency=3, outputs=["logits"])
    for item, got in zip(items, results, strict=True):
        local.reset()
        want = local.run(item)["logits"]
        assert float(np.max(np.abs(got["logits"] - want))) <= 1e-5


def test_greedy_generation_gives_the_same_tokens(plan, cluster, local):
    prompt = [5, 17, 99, 3]
    with PipelineClient(plan, cluster.route) as client:
        got = client.generate(prompt, 24)
    assert got == local_generate(local, prompt, 24)


def test_sampled_generation_with_a_seed_is_reproduced(plan, cluster, local):
    prompt = [42, 7]
    kw = {"temperature": 0.8, "top_k": 40, "seed": 11}
    with PipelineClient(plan, cluster.route) as client:
        got = client.generate(prompt, 16, **kw)
    assert got == local_generate(local, prompt, 16, **kw)
    assert len(set(got)) > 1


def test_long_prompt_is_prefilled_in_chunks(plan, cluster, local):
    limit = next(s for s in plan.inputs if s.name == "input_ids").max_shape[1]
    prompt = [int(x) for x in np.random.default_rng(3).integers(0, 512, limit + 9)]
    with PipelineClient(plan, cluster.route) as client:
        got = client.generate(prompt, 4)
    assert got == local_generate(local, prompt, 4)


def test_sessions_are_closed_when_generation_ends(plan, cluster):
    import httpx

    before = httpx.get(cluster.b.url + "/capabilities").json()["sessions"]["open"]
    with PipelineClient(plan, cluster.route) as client:
        client.generate([1, 2], 3)
    assert httpx.get(cluster.b.url + "/capabilities").json()["sessions"]["open"] == before


def test_a_dead_endpoint_is_skipped_by_the_previous_node(plan, cluster, local):
    """Batch failover: node a re-sends hop 1 to the stand-in itself; only that hop runs again."""
    dead = f"http://127.0.0.1:{free_port()}"
    ids = np.arange(6).reshape(1, 6)
    local.reset()
    want = local.run({"input_ids": ids})["logits"]
    with PipelineClient(plan, [cluster.a.url, [dead, cluster.spare.url], cluster.c.url]) as client:
        got = client.run({"input_ids": ids}, outputs=["logits"])
        assert client.last_hops[0].get("failover") == 1
        assert client.last_hops[1]["node"] == "spare"
    assert float(np.max(np.abs(got["logits"] - want))) <= 1e-5


@pytest.mark.parametrize("transport", ["frames", "http"])
def test_a_stand_in_last_node_parks_its_result_where_it_was_reached(plan, cluster, local, transport):
    """The last hop's first URL is dead; its stand-in c computes the result, parks it (c parks above 4 KiB) and
    names the address node b reached it at, so the client's one fetch finds it: no failover is left to retry."""
    dead = f"http://127.0.0.1:{free_port()}"
    ids = np.arange(7).reshape(1, 7)
    local.reset()
    want = local.run({"input_ids": ids})
    route = [cluster.a.url, cluster.b.url, [dead, cluster.c.url]]
    with PipelineClient(plan, route, transport=transport, max_failovers=0) as client:
        got = client.run({"input_ids": ids})
        assert client.last_parked
        assert client.last_hops[1].get("failover") == 1 and client.last_hops[2]["node"] == "c"
    assert set(got) == set(want)
    for name, value in want.items():
        assert float(np.max(np.abs(got[name] - value))) <= 1e-5, name


def test_a_dead_first_node_is_replaced_by_the_client(plan, cluster, local):
    import httpx

    # The spare holds tasks 1 and 2; it fetches task 0 from the store on demand to stand in for node a.
    r = httpx.post(cluster.spare.url + "/tasks", json={"task_id": plan.tasks[0].task_id}, timeout=60)
    assert r.status_code == 200, r.text
    dead = f"http://127.0.0.1:{free_port()}"
    ids = np.arange(4).reshape(1, 4)
    local.reset()
    want = local.run({"input_ids": ids})["logits"]
    with PipelineClient(plan, [[dead, cluster.spare.url], cluster.b.url, cluster.c.url]) as client:
        got = client.run({"input_ids": ids}, outputs=["logits"])
        assert client.candidates[0][0] == cluster.spare.url
    assert float(np.max(np.abs(got["logits"] - want))) <= 1e-5


def test_capability_report(cluster, plan):
    import httpx

    report = httpx.get(cluster.spare.url + "/capabilities").json()
    assert report["engine"] == "onnxruntime" and report["devices"]
    assert report["engines"]["onnxruntime"] == "ok"
    assert report["memory"]["host_free_bytes"] > 0
    held = {t["task_id"] for t in report["tasks"]}
    assert {plan.tasks[1].task_id, plan.tasks[2].task_id} <= held


def test_sends_carry_each_tensor_to_its_last_reader(plan):
    initial, sends = plan_sends(plan.tasks, ["logits"])
    assert initial == ["input_ids"]
    assert sends[-1] == ["logits"]
    for k, send in enumerate(sends[:-1]):
        later = {s.name for t in plan.tasks[k + 1 :] for s in t.inputs if s.name not in t.state}
        assert set(send) <= later | {"logits"}
        assert not any(n.startswith("present.") for n in send)  # KV caches never leave their node


def test_a_prefill_returns_only_the_last_row_of_logits(plan, cluster, local):
    ids = np.arange(9, dtype=np.int64).reshape(1, 9)
    local.reset()
    want = local.run({"input_ids": ids})["logits"][:, -1:]
    with PipelineClient(plan, cluster.route) as client, client.session() as gen:
        got = gen.step(ids)
    assert got.shape == (1, 1, want.shape[-1])
    assert float(np.max(np.abs(got - want))) <= 1e-5


def test_a_session_is_a_step_function_for_splitup_models_generate(plan, cluster, local):
    from splitup.models.generate import Sampling, generate

    prompt = [4, 8, 15, 16, 23, 42]
    sampling = Sampling(temperature=0.7, top_k=20, seed=3)
    with PipelineClient(plan, cluster.route) as client, client.session() as gen:
        got = generate(gen.step, prompt, 10, sampling=sampling)
    local.reset()
    want = generate(lambda ids: local.run({"input_ids": ids.reshape(1, -1)})["logits"][0, -1], prompt, 10,
                    sampling=sampling)
    assert got == want
