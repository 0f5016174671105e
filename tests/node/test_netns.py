"""The pipeline with every node in its own network namespace, joined by veth pairs on a bridge.

Nodes listen on private 10.x addresses inside namespaces this test creates (and deletes), so nothing can
silently rely on localhost. Needs root and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from splitup.client.sampling import generate_tokens
from splitup.runtime.local import LocalPipeline
from splitup.storage import BlobStore, publish_plan

from .procs import Daemon, start_node, start_store

SUBNET = "10.213.0"


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@pytest.fixture(scope="module")
def namespaces():
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"su{os.getpid() % 100000}"
    hub, nodes = f"{tag}hub", [f"{tag}n{i}" for i in range(3)]
    made: list[str] = []
    try:
        for ns in (hub, *nodes):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, ns in enumerate(nodes):
            # Create the pair inside the hub, then move one end: the root namespace never gets an interface.
            _ip("-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", f"p{i}")
            _ip("-n", hub, "link", "set", f"p{i}", "netns", ns)
            _ip("-n", hub, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{11 + i}/24", "dev", f"p{i}")
            _ip("-n", ns, "link", "set", f"p{i}", "up")
    except RuntimeError as exc:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot build network namespaces here: {exc}")
    try:
        yield hub, nodes
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _wait_log(d: Daemon, text: str, timeout: float = 60) -> None:
    """Readiness from the log: the test process cannot reach addresses inside the namespaces."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not d.alive():
            raise RuntimeError(f"{d.name} exited:\n{d.log.read_text()[-3000:]}")
        if text in d.log.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{d.name}: no {text!r} after {timeout}s:\n{d.log.read_text()[-3000:]}")


def test_pipeline_across_network_namespaces(namespaces, plan_dir, plan, tmp_path):
    hub, nodes = namespaces
    store_dir = tmp_path / "store"
    publish_plan(plan_dir, BlobStore(store_dir))
    daemons: list[Daemon] = []
    try:
        store = start_store("ns-store", store_dir, tmp_path, host=f"{SUBNET}.1", port=8600,
                            prefix=["ip", "netns", "exec", hub])
        daemons.append(store)
        _wait_log(store, "Uvicorn running on")
        for i, (ns, task) in enumerate(zip(nodes, plan.tasks, strict=True)):
            daemons.append(start_node(f"ns{i}", tmp_path, host=f"{SUBNET}.{11 + i}", port=8700,
                                      tasks=[task.task_id], store=store.url,
                                      # the last node parks results: the client fetches them across namespaces
                                      extra=["--log-level", "info", *(["--park-above", "1KiB"] if i == 2 else [])],
                                      prefix=["ip", "netns", "exec", ns]))
        for d in daemons[1:]:
            _wait_log(d, "Uvicorn running on")
        out = tmp_path / "result.safetensors"
        client = subprocess.run(
            ["ip", "netns", "exec", hub, sys.executable, str(Path(__file__).with_name("netns_client.py")),
             str(plan_dir), str(out), *(d.url for d in daemons[1:])],
            capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-3000:]
    finally:
        for d in daemons:
            d.stop()
    local = LocalPipeline(plan_dir)
    want_tokens = generate_tokens(lambda ids: local.run({"input_ids": ids})["logits"], [11, 22, 33], 12)
    local.reset()
    want_logits = local.run({"input_ids": np.arange(8, dtype=np.int64).reshape(1, 8)})["logits"]
    with safe_open(str(out), "np") as f:
        assert f.metadata()["nodes"] == "ns0,ns1,ns2"
        assert f.get_tensor("tokens").tolist() == want_tokens
        assert float(np.max(np.abs(f.get_tensor("logits") - want_logits))) <= 1e-5
    assert all(d.url.startswith(f"http://{SUBNET}.") for d in daemons)
