"""Engines, sessions, interface checks and the wire format, in process."""

from __future__ import annotations

import numpy as np
import pytest

from splitup.node.wire import WireError, decode, encode
from splitup.partition.task import task_dir
from splitup.runtime import (
    InterfaceError,
    SessionError,
    SessionLimit,
    SessionStore,
    StepConflict,
    available_engines,
    check_feeds,
    get_engine,
    run_stateful,
)
from splitup.runtime.ort import choose_providers


def test_provider_choice_prefers_gpus_and_keeps_cpu_as_fallback():
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CoreMLExecutionProvider", "ROCMExecutionProvider", "CPUExecutionProvider"])[0] == \
        "ROCMExecutionProvider"


def _feeds(task, seq: int, rng):
    return {s.name: (rng.integers(0, 500, [d if isinstance(d, int) else seq for d in s.shape])
                     if s.dtype == "int64" else rng.normal(size=[d if isinstance(d, int) else seq for d in s.shape])
                     .astype(s.dtype))
            for s in task.inputs if s.name not in task.state}


def test_tinygrad_in_the_fixed_form_matches_onnxruntime_in_the_growing_form(plan_dir, plan):
    reason = available_engines()["tinygrad"]
    if reason != "ok":
        pytest.skip(f"tinygrad engine unavailable: {reason}")
    ort_engine, tiny = get_engine("onnxruntime"), get_engine("tinygrad")
    rng = np.random.default_rng(0)
    task = plan.tasks[1]  # a task with KV-cache state
    assert task.state
    a, b = ort_engine.load(task_dir(plan_dir, task)), tiny.load(task_dir(plan_dir, task))
    assert (a.kv_form, b.kv_form) == ("growing", "fixed")
    state_a = state_b = None
    length = 0
    for seq in (5, 1, 1, 1, 3):  # prefill, decode steps (captured once, then replayed), a padded chunk
        feeds = _feeds(task, seq, rng)
        out_a, state_a = run_stateful(a, feeds, state_a)
        out_b, state_b = run_stateful(b, feeds, state_b)
        length += seq
        for name in out_a:
            got, want = np.asarray(out_b[name]), out_a[name]
            if got.ndim == 4:  # a cache: growing holds exactly the tokens, fixed the whole context
                assert want.shape[2] == length and got.shape[2] == task.dim_max["past"]
                got = got[:, :, :length]
            assert float(np.max(np.abs(want - got))) <= 1e-5, name
def test_tinygrad_decode_step_products_equal_plain_matmuls():
    """The decode-step forms of MatMul (``tiny._matvec``, ``tiny._product``: reductions in vector lanes or
    chunks) give ``x @ w`` for one row and fall back to it for several."""
    reason = available_engines()["tinygrad"]
    if reason != "ok":
        pytest.skip(f"tinygrad engine unavailable: {reason}")
    from splitup.runtime.tiny import _matvec, _product, on_tinygrad_thread

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 24)).astype(np.float32)
    values = rng.normal(size=(1, 3, 256, 16)).astype(np.float32)

    def run():  # noqa: ANN202 - (got, want) pairs
        from tinygrad import Tensor

        pairs = []
        for rows in (1, 3):  # a decode step, then a prefill chunk
            x = rng.normal(size=(1, rows, 64)).astype(np.float32)
            pairs.append((_matvec(Tensor(x), Tensor(np.ascontiguousarray(w.T))).numpy(), x @ w))
            p = rng.random((1, 3, rows, 256)).astype(np.float32)
            pairs.append((_product(Tensor(p), Tensor(values)).numpy(), p @ values))
        return pairs

    for got, want in on_tinygrad_thread(run):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_engine_checks_the_expected_task_id(plan_dir, plan):
    from splitup.partition.task import PlanError

    with pytest.raises(PlanError, match="expected"):
        get_engine("onnxruntime").load(task_dir(plan_dir, plan.tasks[0]), task_id=plan.tasks[1].task_id)


def test_sessions_are_bounded_and_expire():
    now = [0.0]
    store = SessionStore(max_sessions=2, idle_s=10, clock=lambda: now[0])
    s1, s2 = store.open("t"), store.open("t")
    with pytest.raises(SessionLimit):
        store.open("t")
    now[0] = 5
    store.get(s1.id, "t")  # touched: stays
    now[0] = 12
    assert store.sweep() == 1 and len(store) == 1
    with pytest.raises(SessionError, match="unknown or expired"):
        store.get(s2.id, "t")
    with pytest.raises(SessionError, match="another task"):
        store.get(s1.id, "u")
    store.open("t")
    assert store.close(s1.id) and not store.close(s1.id)


def test_a_repeated_step_rolls_back_and_other_steps_conflict():
    store = SessionStore()
    s = store.open("t")

    def add(x):
        return lambda st: {"c": np.append(st.get("c", np.zeros(0)), x)}

    s.advance(0, add(1.0))
    s.advance(1, add(2.0))
    s.advance(1, add(3.0))  # the reply to step 1 was lost: it runs again from the state before it
    assert s.state["c"].tolist() == [1.0, 3.0]
    with pytest.raises(StepConflict):
        s.advance(0, add(9.0))
    with pytest.raises(StepConflict):
        s.advance(5, add(9.0))
    failed = s.state

    def boom(_st):
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError):
        s.advance(2, boom)
    assert s.state is failed and s.next_step == 2  # a failed step changes nothing


def test_interface_check_covers_dims_and_held_caches(plan):
    task = plan.tasks[1]
    past = next(s for s in task.inputs if s.name in task.state and s.name.endswith(".key"))
    others = {s.name: np.zeros([d if isinstance(d, int) else 3 for d in s.shape], s.dtype)
              for s in task.inputs if s.name not in task.state}
    check_feeds(task, others)
    too_long = np.zeros([d if isinstance(d, int) else past.max_shape[i] + 1 for i, d in enumerate(past.shape)],
                        np.float32)
    with pytest.raises(InterfaceError, match="exceeds the maximum"):
        check_feeds(task, {**others, past.name: too_long})
    assert len(others) > 1  # this task receives more than one activation: their seq must agree
    spec = next(s for s in task.inputs if s.name in others)
    wrong = {**others, spec.name: np.zeros([d if isinstance(d, int) else 4 for d in spec.shape], spec.dtype)}
    with pytest.raises(InterfaceError, match="dimension 'seq' is [34] .* but [34]"):
        check_feeds(task, wrong)


def test_wire_round_trip_and_limits():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "empty": np.zeros((1, 2, 0, 4), np.float32)}
    got, meta = decode(encode(tensors))
    assert meta == {} and all(np.array_equal(got[k], v) for k, v in tensors.items())
    assert got["empty"].shape == (1, 2, 0, 4)
    with pytest.raises(WireError, match="limit"):
        decode(encode(tensors), max_tensor_bytes=8)


def test_wire_carries_every_task_dtype_and_refuses_overlaps():
    """bfloat16 and float8 too, which safetensors' own numpy loader cannot read."""
    from splitup.graph.meta import NUMPY_DTYPES

    tensors = {name: np.arange(6).astype(dtype).reshape(3, 2) for name, dtype in NUMPY_DTYPES.items()}
    got, _ = decode(encode(tensors))
    for name, value in tensors.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name].view(np.uint8), value.view(np.uint8))
    body = bytearray(encode({"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)}))
    n = int.from_bytes(body[:8], "little")
    header = body[8 : 8 + n].replace(b"[8,16]", b"[0,8] ")
    with pytest.raises(WireError, match="overlap"):
        decode(bytes(body[:8] + header + body[8 + n :]))


def test_heartbeat_hook_receives_the_node_status(plan_dir, plan):
    """The hook the market layer will use: called at start and every interval, failures contained."""
    import time

    from fastapi.testclient import TestClient

    from splitup.node.app import create_app
    from splitup.node.node import Node, NodeConfig

    beats: list[dict] = []

    def hook(status: dict) -> None:
        beats.append(status)
        raise RuntimeError("the chain is down")  # must not stop the node

    node = Node(NodeConfig(heartbeat_s=0.05, node_id="hb"))
    node.load_bundle(task_dir(plan_dir, plan.tasks[0]))
    with TestClient(create_app(node, heartbeat=hook)) as client:
        deadline = time.monotonic() + 10
        while len(beats) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/health").json()["status"] == "ok"
    assert len(beats) >= 3
    assert beats[0]["node"] == "hb" and beats[0]["tasks"] == [plan.tasks[0].task_id]


def test_session_caches_are_reserved_against_a_memory_budget(plan_dir, plan):
    from splitup.node.node import Node, NodeConfig

    task = plan.tasks[1]
    assert task.kv_cache_bytes > 0
    node = Node(NodeConfig(max_session_bytes=5 * task.kv_cache_bytes))
    node.load_bundle(task_dir(plan_dir, task))
    first, second = node.open_session(task.task_id), node.open_session(task.task_id)  # 2 x 2 reserved
    with pytest.raises(SessionLimit, match="reserved"):
        node.open_session(task.task_id)
    node.sessions.close(first)
    assert node.open_session(task.task_id) != second
    assert node.capabilities()["sessions"]["max_bytes"] == 5 * task.kv_cache_bytes


def test_executes_beyond_the_concurrency_limit_get_429(plan_dir, plan):
    from fastapi.testclient import TestClient

    from splitup.node.app import create_app
    from splitup.node.node import Node, NodeConfig
    from splitup.node.wire import Envelope, Hop

    task = plan.tasks[0]
    body = encode({"input_ids": np.zeros((1, 2), np.int64)},
                  Envelope("j", 0, [Hop(["http://x"], task.task_id, [task.outputs[0].name])]))
    for limit, status in ((0, 429), (1, 200)):
        node = Node(NodeConfig(max_concurrent=limit))
        node.load_bundle(task_dir(plan_dir, task))
        with TestClient(create_app(node)) as client:
            r = client.post("/execute", content=body)
            assert r.status_code == status, r.text
            assert client.post("/execute", content=body).status_code == status  # the slot was given back


def test_parked_results_are_taken_once_and_bounded():
    import time

    from splitup.node.node import ResultShelf

    shelf = ResultShelf(max_bytes=10, ttl_s=0.2)
    a = shelf.put(b"aaaa")
    b = shelf.put(b"bbbb")
    c = shelf.put(b"cccc")  # over 10 bytes together: the oldest goes
    assert shelf.take(a) is None and shelf.take(b) == b"bbbb" and shelf.take(b) is None
    assert shelf.put(b"x" * 11) is None
    time.sleep(0.25)
    assert shelf.take(c) is None  # expired


def test_tinygrad_runs_from_any_thread(plan_dir, plan):
    """A node compiles on HTTP workers and validation threads; tinygrad's sqlite kernel cache belongs to
    one thread, so every call must reach the same tinygrad thread, whichever thread makes it."""
    import threading

    reason = available_engines()["tinygrad"]
    if reason != "ok":
        pytest.skip(f"tinygrad engine unavailable: {reason}")
    task = plan.tasks[0]
    runner = get_engine("tinygrad").load(task_dir(plan_dir, task))
    rng = np.random.default_rng(1)
    results: list = []
    # Each length compiles new kernels, so each thread below touches tinygrad's cache afresh.
    for seq in (3, 4, 6):
        feeds = _feeds(task, seq, rng)
        worker = threading.Thread(target=lambda f=feeds: results.append(run_stateful(runner, f, None)[0]))
        worker.start()
        worker.join(timeout=120)
        here, _ = run_stateful(runner, _feeds(task, seq + 1, rng), None)
        assert here
    assert len(results) == 3, "a call from another thread failed"


def test_tinygrad_without_a_compiler_is_reported_unavailable(tmp_path):
    """With no clang on PATH and a cold kernel cache, the engine is 'unavailable', not a crash."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env["PATH"] = str(tmp_path)  # nothing to compile with
    env["CACHEDB"] = str(tmp_path / "tinygrad-cache.db")
    code = "from splitup.runtime import available_engines; print(available_engines()['tinygrad'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != "ok"


def test_kv_form_follows_the_provider_and_graph_capture_only_where_supported(plan_dir, plan):
    from splitup.runtime.ort import graph_capture_providers, kv_form_for

    assert kv_form_for(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "fixed"
    assert kv_form_for(["CPUExecutionProvider"]) == "growing"
    assert kv_form_for(["ROCMExecutionProvider", "CPUExecutionProvider"]) == "growing"
    assert graph_capture_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    assert graph_capture_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    runner = get_engine("onnxruntime").load(task_dir(plan_dir, plan.tasks[1]))
    assert runner.kv_form == "growing" and runner.captured is None  # no CUDA here: the plain CPU path


def test_both_forms_give_the_same_outputs_and_a_full_context_is_refused(plan_dir, plan):
    from splitup.runtime.kv import step_bucket

    task = plan.tasks[1]
    growing, fixed = (get_engine("onnxruntime").load(task_dir(plan_dir, task)) for _ in range(2))
    fixed.kv_form = "fixed"
    rng = np.random.default_rng(5)
    state_g = state_f = None
    for seq in (7, 1, 2):
        feeds = _feeds(task, seq, rng)
        out_g, state_g = run_stateful(growing, feeds, state_g)
        out_f, state_f = run_stateful(fixed, feeds, state_f)
        for name, want in out_g.items():
            got = out_f[name][:, :, : want.shape[2]] if want.ndim == 4 else out_f[name]
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=name)
    cache = next(n for n in task.state if n.endswith(".key"))
    assert state_g[cache].shape[2] == 10 and state_f[cache].shape[2] == task.dim_max["past"]
    assert all(int(v[0]) == 10 for n, v in state_f.items() if n.endswith(".length"))
    capacity = task.dim_max["past"]
    full = {n: (np.full(1, capacity - 1, np.int64) if n.endswith(".length") else v) for n, v in state_f.items()}
    run_stateful(fixed, _feeds(task, 1, rng), full)  # the last slot
    with pytest.raises(InterfaceError, match="context is full"):
        run_stateful(fixed, _feeds(task, 2, rng), full)
    assert [step_bucket(s, 1000) for s in (1, 2, 8, 9, 100, 129)] == [1, 8, 8, 32, 128, 129]
    assert step_bucket(5, 6) == 5  # no room left for the bucket: run as it is
