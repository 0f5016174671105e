"""Batched concurrent streams: several sessions' steps share one engine call, each stream's greedy tokens
stay those of running it alone, and the sessions' KV caches together stay within the node's budget."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from splitup.client.pipeline import plan_sends
from splitup.graph import zoo
from splitup.node import Node, NodeConfig
from splitup.node.wire import Envelope, Hop
from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.partition.task import Plan
from splitup.runtime import InterfaceError, SessionLimit
from splitup.runtime.batching import batch_limit

BATCH = 4


@pytest.fixture(scope="module")
def batched_plan(tmp_path_factory) -> tuple[Plan, Path]:
    model = zoo.build("tiny-llama", seed=0, batch=BATCH)
    out = tmp_path_factory.mktemp("batched-plan")
    plan = make_plan(model, "tiny-llama", budget_for_tasks(analyze(model), 2), workspace_bytes=0, out_dir=out).plan
    return plan, out


def _node(batched_plan, **config) -> Node:
    plan, out = batched_plan
    node = Node(NodeConfig(threads=1, frame_port=None, **config))
    for d in sorted((out / "tasks").iterdir()):
        node.load_bundle(d)
    return node


class Stream:
    """One greedy generation through both tasks of the plan, on the node's sessions."""

    def __init__(self, node: Node, plan: Plan, prompt: list[int]) -> None:
        self.node, self.plan = node, plan
        self.sessions = [node.open_session(t.task_id) for t in plan.tasks]
        self.ids = np.asarray([prompt], np.int64)
        self.tokens: list[int] = []
        self.step = 0

    def next(self) -> int:
        _, sends = plan_sends(self.plan.tasks, ["logits"])
        hops = [Hop(["http://n"], t.task_id, send, sid, self.step, ["logits"] if k == 1 else [])
                for k, (t, sid, send) in enumerate(zip(self.plan.tasks, self.sessions, sends, strict=True))]
        env = Envelope("job", 0, hops)
        hidden = self.node.compute(env, {"input_ids": self.ids})
        logits = self.node.compute(env.next(), hidden)["logits"]
        self.step += 1
        token = int(np.argmax(logits[0, -1]))
        self.tokens.append(token)
        self.ids = np.asarray([[token]], np.int64)
        return token


PROMPTS = [[5, 17, 99, 3], [1, 2, 3, 4], [400, 9, 9, 12], [77, 300, 5, 6]]
TOKENS = 8


def _alone(node: Node, plan: Plan, prompt: list[int]) -> list[int]:
    s = Stream(node, plan, prompt)
    for _ in range(TOKENS):
        s.next()
    return s.tokens


def test_the_builder_gives_a_bounded_symbolic_batch_axis(batched_plan):
    plan, _ = batched_plan
    for task in plan.tasks:
        assert batch_limit(task) == BATCH
        assert all(s.shape[0] == "batch" for s in task.inputs)
    single = zoo.build("tiny-llama", seed=0)
    assert single.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # batch=1 stays static


def test_concurrent_streams_share_engine_calls_and_keep_their_tokens(batched_plan):
    plan, _ = batched_plan
    node = _node(batched_plan)
    alone = [_alone(node, plan, p) for p in PROMPTS]
    calls_before = {k: (b.calls, b.rows) for k, b in node.batchers.items()}
    streams = [Stream(node, plan, p) for p in PROMPTS]
    barrier = threading.Barrier(len(streams))
    errors: list[BaseException] = []

    def run(s: Stream) -> None:
        try:
            for _ in range(TOKENS):
                barrier.wait(timeout=30)  # lockstep, as concurrent users' decode steps arrive
                s.next()
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert [s.tokens for s in streams] == alone
    for k, b in node.batchers.items():
        calls, rows = b.calls - calls_before[k][0], b.rows - calls_before[k][1]
        assert rows == len(PROMPTS) * TOKENS
        assert calls < rows, f"no step of task {k[:8]} shared an engine call"


def test_streams_of_different_lengths_share_calls_and_keep_their_tokens(batched_plan):
    plan, _ = batched_plan
    node = _node(batched_plan)
    prompts = [[5, 17, 99, 3], [1, 2], [400, 9, 9, 12, 8, 8]]
    alone = [_alone(node, plan, p) for p in prompts]
    streams = [Stream(node, plan, p) for p in prompts]
    for s in streams:
        s.next()  # the prefills (of different lengths: they cannot be stacked)
    before = {k: (b.calls, b.rows) for k, b in node.batchers.items()}
    barrier = threading.Barrier(len(streams))

    def run(s: Stream) -> None:
        for _ in range(TOKENS - 1):
            barrier.wait(timeout=30)
            s.next()

    threads = [threading.Thread(target=run, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [s.tokens for s in streams] == alone
    for k, b in node.batchers.items():  # decode steps at lengths 4, 2 and 6 (caches padded): stacked
        assert b.calls - before[k][0] < b.rows - before[k][1]


def test_a_session_holds_one_sequence(batched_plan):
    plan, _ = batched_plan
    node = _node(batched_plan)
    s = Stream(node, plan, [1, 2])
    s.ids = np.zeros((2, 2), np.int64)
    with pytest.raises(InterfaceError, match="one sequence"):
        s.next()


def test_sessions_beyond_the_memory_budget_are_refused_with_429(batched_plan):
    from fastapi.testclient import TestClient

    from splitup.node.app import create_app

    plan, _ = batched_plan
    task = plan.tasks[0]
    per_session = 2 * task.kv_cache_bytes // BATCH  # one sequence's cache, and its copy for a retried step
    node = _node(batched_plan, max_session_bytes=3 * per_session)
    opened = [node.open_session(task.task_id) for _ in range(3)]
    with pytest.raises(SessionLimit, match="reserved"):
        node.open_session(task.task_id)
    with TestClient(create_app(node)) as client:
        r = client.post("/sessions", json={"task_id": task.task_id})
        assert r.status_code == 429 and r.json()["kind"] == "busy"
        node.sessions.close(opened[0])
        assert client.post("/sessions", json={"task_id": task.task_id}).status_code == 201


def test_the_batcher_groups_equal_shapes_among_mixed_calls(batched_plan):
    from concurrent.futures import ThreadPoolExecutor

    from splitup.runtime.batching import Batcher
    from splitup.runtime.engine import fill_state

    node = _node(batched_plan)
    plan, _ = batched_plan
    runner = node.runners[plan.tasks[0].task_id]
    batcher = Batcher(runner, gap_s=0.05, max_wait_s=0.5)
    feeds = [fill_state(runner.task, {"input_ids": np.full((1, 1 + i % 2), i, np.int64)}, None) for i in range(6)]
    want = [runner.run(f) for f in feeds]
    with ThreadPoolExecutor(6) as pool:  # two shapes interleaved: each group is stacked apart from the other
        got = list(pool.map(lambda f: batcher.run(f, expected=3), feeds))
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys() and all(np.array_equal(g[k], w[k]) for k in w)
    assert batcher.rows == 6 and batcher.calls < 6
