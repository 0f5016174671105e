"""The whole SmolLM2 split through node processes with the middle task on tinygrad: the same 32 greedy
tokens as onnxruntime (and transformers), with tinygrad in the fixed KV-cache form.

The prompt goes in one token per step, so the tinygrad node captures one shape only (on its first call,
after a lazy trace; every later call replays); the plan's context is 64, so its caches hold 64 slots.
About a minute on 2 cores: a quarter of it tinygrad scheduling and compiling that shape (its kernels then
come from its disk cache), the rest building the plan and starting the node processes.
"""

import httpx
import pytest

from node.procs import start_node, start_store  # tests/node, importable as ``node`` under pytest's rootdir
from splitup.client.pipeline import PipelineClient
from splitup.models.generate import generate
from splitup.runtime import available_engines
from splitup.storage import BlobStore, publish_plan

from .conftest import CONTINUATION, PROMPT_IDS, need
from .splits import plan_with_tasks

TINYGRAD = available_engines().get("tinygrad", "missing")


@pytest.mark.skipif(TINYGRAD != "ok", reason=f"tinygrad cannot run here: {TINYGRAD}")
def test_smollm2_through_three_nodes_with_a_tinygrad_node_gives_the_onnxruntime_tokens(smollm, tmp_path):
    need("smollm2-135m")
    from splitup.models.real import load_real_model

    # The weights come from the session's hashed cache (the smollm fixture imported them).
    model = load_real_model("smollm2-135m", max_seq=8, context=64).model
    plan = plan_with_tasks(model, "smollm2-135m", 3, tmp_path / "plan").plan
    del model
    publish_plan(tmp_path / "plan", BlobStore(tmp_path / "store"))
    store = start_store("store", tmp_path / "store", tmp_path)
    engines = ["onnxruntime", "tinygrad", "onnxruntime"]
    nodes = []
    try:
        store.wait_ready()
        for k, (task, engine) in enumerate(zip(plan.tasks, engines, strict=True)):
            nodes.append(start_node(f"n{k}", tmp_path, tasks=[task.task_id], store=store.url,
                                    extra=["--engine", engine]))
        for node in nodes:
            node.wait_ready(timeout=300)
        assert [httpx.get(n.url + "/capabilities").json()["engine"] for n in nodes] == engines
        with PipelineClient(plan, [n.url for n in nodes], hop_timeout=600) as client, client.session() as gen:
            tokens = generate(gen.step, PROMPT_IDS, len(CONTINUATION), chunk=1)
    finally:
        for node in nodes:
            node.stop()
        store.stop()
    # CONTINUATION is transformers' greedy output, which onnxruntime reproduces (test_smollm2.py).
    assert tokens == CONTINUATION
