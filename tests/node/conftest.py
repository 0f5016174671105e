"""Shared fixtures: a tiny LLaMA split into 3 tasks, published to a blob store process, and node processes.

Daemons start once per test session and are stopped (by pid) even when tests fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from splitup.graph import zoo
from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.partition.task import Plan
from splitup.storage import BlobStore, publish_plan

from .procs import Daemon, start_node, start_store

MODEL = "tiny-llama"


@pytest.fixture(scope="session")
def plan_dir(tmp_path_factory) -> Path:
    model = zoo.build(MODEL, seed=0)
    out = tmp_path_factory.mktemp("plan")
    plan = make_plan(model, MODEL, budget_for_tasks(analyze(model), 3), workspace_bytes=0, out_dir=out).plan
    assert len(plan.tasks) == 3
    return out


@pytest.fixture(scope="session")
def plan(plan_dir) -> Plan:
    return Plan.load(plan_dir)


@pytest.fixture(scope="session")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("daemons")


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def store_url(plan_dir, logs, store_dir) -> Iterator[str]:
    directory = store_dir
    publish_plan(plan_dir, BlobStore(directory))
    daemon = start_store("store", directory, logs)
    try:
        daemon.wait_ready()
        yield daemon.url
    finally:
        daemon.stop()


@dataclass
class Cluster:
    """Nodes ``a``, ``b``, ``c`` hold tasks 0, 1, 2; ``spare`` holds tasks 1 and 2 as a stand-in."""

    a: Daemon
    b: Daemon
    c: Daemon
    spare: Daemon

    @property
    def route(self) -> list[str]:
        return [self.a.url, self.b.url, self.c.url]


@pytest.fixture(scope="session")
def cluster(plan, store_url, logs) -> Iterator[Cluster]:
    ids = [t.task_id for t in plan.tasks]
    daemons = [
        start_node("a", logs, tasks=ids[:1], store=store_url),
        start_node("b", logs, tasks=ids[1:2], store=store_url, extra=["--max-sessions", "8"]),
        # c parks every result above 4 KiB (all full batch outputs) for the client to fetch directly
        start_node("c", logs, tasks=ids[2:], store=store_url, extra=["--max-body", "1MiB", "--park-above", "4KiB"]),
        start_node("spare", logs, tasks=ids[1:], store=store_url),
    ]
    try:
        for d in daemons:
            d.wait_ready()
        yield Cluster(*daemons)
    finally:
        for d in daemons:
            d.stop()
