"""Plans and task bundles by hash: publish a plan directory into a store, fetch one task by its id.

A task's id is the sha256 of its definition's canonical JSON, so that JSON is stored as a blob under the
task id itself: a node that knows only a task id can fetch the definition, check it, and from it the graph
and weight blobs it names, each checked by hash.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from splitup import jsonparse
from splitup.partition.task import (
    GRAPH_FILE,
    TASK_FILE,
    WEIGHTS_FILE,
    Plan,
    PlanError,
    TaskDefinition,
    load_task,
    task_dir,
)
from splitup.storage.blobstore import BlobStore, StorageError, is_sha256
from splitup.storage.client import BlobClient

MAX_DEFINITION_BYTES = 16 << 20


@dataclass(frozen=True)
class PublishedPlan:
    plan_sha256: str
    task_ids: list[str]


def publish_plan(plan_dir: Path, store: BlobStore) -> PublishedPlan:
    """Put every bundle (definition, graph, shard) and plan.json into ``store``; bundles are verified first."""
    plan_dir = Path(plan_dir)
    plan = Plan.load(plan_dir)
    for task in plan.tasks:
        directory = task_dir(plan_dir, task)
        loaded = load_task(directory)
        if loaded.task_id != task.task_id:
            raise PlanError(f"bundle {directory} holds task {loaded.task_id[:12]}, plan says {task.task_id[:12]}")
        store.put_file(directory / GRAPH_FILE)
        if loaded.weights_sha256 is not None:
            store.put_file(directory / WEIGHTS_FILE)
        if store.put_bytes(loaded.canonical()) != loaded.task_id:
            raise PlanError(f"task {task.task_id[:12]}: canonical definition does not hash to its id")
    plan_sha = store.put_bytes(json.dumps(plan.to_json(), sort_keys=True).encode())
    return PublishedPlan(plan_sha, [t.task_id for t in plan.tasks])


def fetch_plan(plan_sha256: str, client: BlobClient) -> Plan:
    try:
        return Plan.from_json(jsonparse.loads(client.get_bytes(plan_sha256, max_bytes=MAX_DEFINITION_BYTES)))
    except ValueError as exc:
        raise StorageError(f"plan {plan_sha256[:12]} is not JSON: {exc}") from None


def fetch_task(task_id: str, store: str | BlobClient, cache_dir: Path) -> Path:
    """The verified bundle directory of ``task_id`` under ``cache_dir``, downloaded if not cached.

    A cached bundle that no longer matches its hashes is thrown away and fetched again.
    """
    if not is_sha256(task_id):
        raise StorageError(f"not a task id: {task_id[:80]!r}")
    final = Path(cache_dir) / "tasks" / task_id
    if final.is_dir():
        try:
            if load_task(final).task_id == task_id:
                return final
        except PlanError:
            pass
        shutil.rmtree(final)
    client = BlobClient(store) if isinstance(store, str) else store
    try:
        definition = _fetch_definition(task_id, client)
        staging = final.with_name(f".staging-{task_id}")
        staging.mkdir(parents=True, exist_ok=True)
        client.fetch(definition.graph_sha256, staging / GRAPH_FILE)
        if definition.weights_sha256 is not None:
            client.fetch(definition.weights_sha256, staging / WEIGHTS_FILE)
        (staging / TASK_FILE).write_text(json.dumps(definition.to_json(), indent=1))
        load_task(staging)  # both hashes once more, from the files as they lie on disk
        staging.rename(final)
    finally:
        if isinstance(store, str):
            client.close()
    return final


def _fetch_definition(task_id: str, client: BlobClient) -> TaskDefinition:
    raw = client.get_bytes(task_id, max_bytes=MAX_DEFINITION_BYTES)  # hash-checked: sha256(raw) == task_id
    try:
        body = jsonparse.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not an object")
        return TaskDefinition.from_json({**body, "task_id": task_id})
    except (ValueError, TypeError) as exc:
        raise StorageError(f"definition of task {task_id[:12]} is malformed: {exc}") from None
