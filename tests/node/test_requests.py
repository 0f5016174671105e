"""Malformed, oversized and mistyped requests are refused with a 4xx and a clear message; the node lives on."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from splitup.node.wire import Envelope, Hop, encode


def body(plan, url: str, tensors, *, task: int = 0, send=None, session=None, step=None) -> bytes:
    send = send if send is not None else [plan.tasks[task].outputs[0].name]
    return encode(tensors, Envelope("t", 0, [Hop([url], plan.tasks[task].task_id, send, session, step)]))


def post(url: str, content: bytes, **kw) -> httpx.Response:
    return httpx.post(url + "/execute", content=content, timeout=30, **kw)


def refused(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for w in words:
        assert w in message, message


def ok_ids(n: int = 3) -> dict[str, np.ndarray]:
    return {"input_ids": np.arange(n, dtype=np.int64).reshape(1, n)}


def test_a_valid_single_hop_request_is_answered(plan, cluster):
    r = post(cluster.a.url, body(plan, cluster.a.url, ok_ids()))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("tensors", "status", "words"), [
    ({"input_ids": np.arange(3, dtype=np.float64).reshape(1, 3)}, 422, ("dtype float64", "int64")),
    ({"input_ids": np.arange(3, dtype=np.int32).reshape(1, 3)}, 422, ("dtype int32",)),
    ({"input_ids": np.arange(3, dtype=np.int64)}, 422, ("rank 1",)),
    ({"input_ids": np.zeros((2, 3), np.int64)}, 422, ("axis 0",)),
    ({"input_ids": np.zeros((1, 65), np.int64)}, 422, ("exceeds the maximum 64",)),
    ({}, 422, ("missing input", "input_ids")),
    ({**ok_ids(), "extra": np.zeros(2, np.float32)}, 422, ("no input 'extra'",)),
], ids=["float64", "int32", "rank", "static-dim", "too-long", "missing", "unknown-name"])
def test_tensors_that_do_not_fit_the_interface(plan, cluster, tensors, status, words):
    refused(post(cluster.a.url, body(plan, cluster.a.url, tensors)), status, *words)


def test_garbage_and_malformed_safetensors(plan, cluster):
    url = cluster.a.url
    refused(post(url, b"\x00" * 4), 400, "shorter")
    refused(post(url, (10**9).to_bytes(8, "little") + b"{}"), 400, "does not fit")
    refused(post(url, (2).to_bytes(8, "little") + b"[]"), 400, "not an object")
    header = json.dumps({"x": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    refused(post(url, len(header).to_bytes(8, "little") + header + b"\x00" * 16), 400, "offsets")
    header = json.dumps({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 8]}}).encode()
    refused(post(url, len(header).to_bytes(8, "little") + header + b"\x00" * 8), 400, "dtype 'Q7'")
    refused(post(url, save(ok_ids())), 400, "no routing envelope")
    refused(post(url, save(ok_ids(), metadata={"splitup": "{not json"})), 400, "malformed routing envelope")
    bad_route = json.dumps({"job": "j", "hop": 5, "route": [{"urls": [url], "task": "x", "send": []}]})
    refused(post(url, save(ok_ids(), metadata={"splitup": bad_route})), 400, "hop index 5")
    file_url = json.dumps({"job": "j", "hop": 0, "route": [{"urls": ["file:///etc/passwd"], "task": "x", "send": []}]})
    refused(post(url, save(ok_ids(), metadata={"splitup": file_url})), 400, "http(s)")


def test_oversized_bodies(plan, cluster):
    url = cluster.c.url  # started with --max-body 1MiB
    big = {"layers": np.zeros((1, 64, 64 * 80), np.float32)}
    refused(post(url, body(plan, url, big, task=2)), 413, "limit")

    def chunks():  # no Content-Length: the node must count while reading
        yield b"\x00" * (1 << 20)
        yield b"\x00" * (1 << 20)

    refused(httpx.post(url + "/execute", content=chunks(), timeout=30), 413, "limit")


def test_task_not_held_and_session_errors(plan, cluster):
    url = cluster.a.url
    refused(post(url, body(plan, url, ok_ids(), task=1)), 404, "does not hold")
    refused(post(url, body(plan, url, ok_ids(), session="nope", step=0)), 404, "unknown or expired")
    sid = httpx.post(url + "/sessions", json={"task_id": plan.tasks[0].task_id}).json()["session"]
    try:
        assert post(url, body(plan, url, ok_ids(), session=sid, step=0)).status_code == 200
        refused(post(url, body(plan, url, ok_ids(), session=sid, step=5)), 409, "step 5")
        assert post(url, body(plan, url, ok_ids(), session=sid, step=0)).status_code == 200  # a retry
    finally:
        httpx.delete(f"{url}/sessions/{sid}")
    refused(httpx.post(url + "/sessions", json={"task_id": "0" * 64}), 404, "does not hold")
    refused(httpx.post(url + "/sessions", content=b"[1, 2"), 400, "task_id")


def test_state_sent_to_a_session_and_a_full_cache_are_refused(plan, cluster):
    url, task = cluster.b.url, plan.tasks[1]
    past = next(s for s in task.inputs if s.name in task.state and s.name.endswith(".key"))
    sid = httpx.post(url + "/sessions", json={"task_id": task.task_id}).json()["session"]
    try:
        # Every non-state input at its maximum (64 positions), so the cache fills in a few steps.
        x = {s.name: np.zeros(s.max_shape, s.dtype) for s in task.inputs if s.name not in task.state}
        sent_state = {**x, past.name: np.zeros([d if isinstance(d, int) else 1 for d in past.shape], np.float32)}
        refused(post(url, body(plan, url, sent_state, task=1, session=sid, step=0)), 422, "held by the node")
        limit = past.max_shape[2] // 64
        for step in range(limit):
            assert post(url, body(plan, url, x, task=1, session=sid, step=step)).status_code == 200
        # Past the model's context: refused before anything runs, naming the limit; node unharmed.
        refused(post(url, body(plan, url, x, task=1, session=sid, step=limit)), 400, "maximum context")
        assert httpx.get(url + "/health").status_code == 200
    finally:
        httpx.delete(f"{url}/sessions/{sid}")


def test_session_count_is_bounded(plan, cluster):
    url, task_id = cluster.b.url, plan.tasks[1].task_id  # started with --max-sessions 8
    opened = []
    try:
        for _ in range(8):
            r = httpx.post(url + "/sessions", json={"task_id": task_id})
            if r.status_code == 429:
                break
            opened.append(r.json()["session"])
        refused(httpx.post(url + "/sessions", json={"task_id": task_id}), 429, "maximum of 8")
    finally:
        for sid in opened:
            httpx.delete(f"{url}/sessions/{sid}")
    assert httpx.post(url + "/sessions", json={"task_id": task_id}).status_code == 201


def test_every_node_still_serves_after_the_bad_requests(plan, cluster):
    for d in (cluster.a, cluster.b, cluster.c):
        assert d.alive()
        assert httpx.get(d.url + "/health").json()["status"] == "ok"
    assert post(cluster.a.url, body(plan, cluster.a.url, ok_ids())).status_code == 200
