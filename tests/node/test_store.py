"""The blob store: atomic content-addressed writes, resumable verified downloads, bundles fetched by task id,
and tampered weights refused by hash (in the store, in the node's cache, and by a node asked to preload)."""

from __future__ import annotations

import hashlib
import shutil

import httpx
import pytest

from splitup.partition.task import WEIGHTS_FILE, PlanError, load_task, task_dir
from splitup.runtime import get_engine
from splitup.storage import BlobClient, BlobStore, StorageError, fetch_plan, fetch_task, publish_plan

from .procs import free_port, start_node, start_store


def test_blobs_are_named_by_their_hash_and_written_whole(tmp_path):
    store = BlobStore(tmp_path)
    data = b"splitup" * 1000
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest() and store.read(sha) == data and store.verify(sha)
    with pytest.raises(StorageError, match="not"):
        store.put_stream([data], expected="0" * 64)
    with pytest.raises(StorageError, match="limit"):
        store.put_stream([data], max_bytes=10)
    assert list((tmp_path / "tmp").iterdir()) == []  # refused uploads leave nothing behind
    with pytest.raises(StorageError, match="sha256"):
        store.path("../../etc/passwd")


def test_download_resumes_from_a_partial_file(store_url, plan_dir, plan, tmp_path):
    shard = task_dir(plan_dir, plan.tasks[1]) / WEIGHTS_FILE
    data = shard.read_bytes()
    sha = plan.tasks[1].weights_sha256
    dest = tmp_path / "w"
    (tmp_path / "w.part").write_bytes(data[: len(data) // 3])
    with BlobClient(store_url) as client:
        assert client.fetch(sha, dest).read_bytes() == data
        # a corrupt partial file fails the hash check, is discarded, and the next try starts clean
        (tmp_path / "x.part").write_bytes(b"junk" + data[4 : len(data) // 2])
        with pytest.raises(StorageError, match="does not match"):
            client.fetch(sha, tmp_path / "x")
        assert client.fetch(sha, tmp_path / "x").read_bytes() == data
        with pytest.raises(StorageError, match="404"):
            client.fetch("ab" * 32, tmp_path / "missing")
    r = httpx.get(f"{store_url}/blobs/{sha}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]


def test_a_store_that_is_still_starting_is_waited_for(plan_dir, plan, logs, tmp_path):
    """Started together (a script's `store serve &` then `node start`), the reader waits, within a bound."""
    publish_plan(plan_dir, BlobStore(tmp_path / "store"))
    port = free_port()
    with BlobClient(f"http://127.0.0.1:{free_port()}", connect_wait_s=0.3) as nobody:
        with pytest.raises(StorageError, match="cannot fetch blob .* from http://127.0.0.1"):
            nobody.get_bytes(plan.tasks[0].task_id)
    daemon = start_store("late-store", tmp_path / "store", logs, port=port)  # not listening for a while yet
    try:
        got = fetch_task(plan.tasks[0].task_id, BlobClient(daemon.url, connect_wait_s=60), tmp_path / "cache")
        assert load_task(got) == plan.tasks[0]
    finally:
        daemon.stop()


def test_plan_and_tasks_round_trip_through_the_store(store_url, plan_dir, plan, tmp_path):
    with BlobClient(store_url) as client:
        published = publish_plan(plan_dir, BlobStore(tmp_path / "again"))
        assert fetch_plan(published.plan_sha256, client) == plan
        for task in plan.tasks:
            got = fetch_task(task.task_id, client, tmp_path / "cache")
            assert load_task(got) == task
            assert fetch_task(task.task_id, client, tmp_path / "cache") == got  # cached, verified


@pytest.fixture
def tampered_store(plan_dir, plan, logs, tmp_path):
    """A store process whose copy of task 1's weight shard has one byte flipped."""
    store = BlobStore(tmp_path / "store")
    publish_plan(plan_dir, store)
    path = store.path(plan.tasks[1].weights_sha256)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    daemon = start_store("tampered-store", tmp_path / "store", logs)
    try:
        daemon.wait_ready()
        yield daemon.url
    finally:
        daemon.stop()


def test_tampered_shard_in_the_store_is_refused(tampered_store, plan, tmp_path):
    with pytest.raises(StorageError, match="does not match its sha256"):
        fetch_task(plan.tasks[1].task_id, tampered_store, tmp_path / "cache")
    assert not (tmp_path / "cache" / "tasks" / plan.tasks[1].task_id).exists()


def test_tampered_shard_in_a_bundle_is_refused_by_the_engine(plan_dir, plan, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(task_dir(plan_dir, plan.tasks[1]), bundle)
    with open(bundle / WEIGHTS_FILE, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0x01]))
    with pytest.raises(PlanError, match="does not match its sha256"):
        get_engine("onnxruntime").load(bundle)


def test_a_node_refuses_a_tampered_task_and_keeps_serving(tampered_store, plan, logs):
    node = start_node("tamper-node", logs, store=tampered_store)
    try:
        node.wait_ready()
        r = httpx.post(node.url + "/tasks", json={"task_id": plan.tasks[1].task_id}, timeout=60)
        assert r.status_code == 422 and "sha256" in r.json()["error"]
        r = httpx.post(node.url + "/tasks", json={"task_id": plan.tasks[0].task_id}, timeout=60)
        assert r.status_code == 200, r.text  # untampered tasks from the same store still load
        assert httpx.get(node.url + "/health").json()["tasks"] == [plan.tasks[0].task_id]
    finally:
        node.stop()


def test_a_node_refuses_to_start_on_a_tampered_task(tampered_store, plan, logs):
    node = start_node("tamper-start", logs, store=tampered_store, tasks=[plan.tasks[1].task_id])
    try:
        with pytest.raises(RuntimeError, match="exited"):
            node.wait_ready(timeout=60)
        assert "does not match its sha256" in node.log.read_text()
    finally:
        node.stop()
