"""Where transcripts go: a local content-addressed store directory, or a store server over HTTP.

The roles only need ``put(bytes) -> sha256`` and ``get(sha256, max_bytes) -> bytes`` (hash-checked), so a
node and a validator can share a directory in tests and a URL in a real deployment. Both also hold signed
named records (``Records``: the market's copy of each executor's announcement, ``splitup.node.agent``).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from solders.keypair import Keypair

from splitup.partition.task import Plan, task_dir
from splitup.storage import BlobClient, BlobStore, Record, StorageError, fetch_task
from splitup.storage.records import publish

#: task id -> the directory of its verified bundle
BundleSource = Callable[[str], Path]


class Blobs(Protocol):
    def put(self, data: bytes) -> str: ...

    def get(self, sha: str, max_bytes: int) -> bytes: ...


class Records(Protocol):
    """Signed named records (``splitup.storage.records``)."""

    def publish_record(self, owner: Keypair, topic: str, body: bytes) -> Record: ...

    def get_record(self, pubkey: str, topic: str, timeout: float | None = None) -> Record | None:
        """None: the store has none; ``StoreUnavailable`` (or another StorageError): no answer."""
        ...


class Store(Blobs, Records, Protocol):
    """Blobs and records in one store (what a market node uses)."""


class LocalBlobs:
    def __init__(self, store: BlobStore | Path | str) -> None:
        self.store = store if isinstance(store, BlobStore) else BlobStore(Path(store))

    def put(self, data: bytes) -> str:
        return self.store.put_bytes(data)

    def get(self, sha: str, max_bytes: int) -> bytes:
        if self.store.size(sha) > max_bytes:
            raise StorageError(f"blob {sha[:12]} is larger than {max_bytes} bytes")
        data = self.store.read(sha)
        # The directory may be shared with other processes; a file edited in place must not pass.
        if hashlib.sha256(data).hexdigest() != sha:
            raise StorageError(f"blob {sha[:12]} does not match its sha256")
        return data

    def publish_record(self, owner: Keypair, topic: str, body: bytes) -> Record:
        return publish(owner, topic, body, self.store.put_record, self.store.get_record)

    def get_record(self, pubkey: str, topic: str, timeout: float | None = None) -> Record | None:
        return self.store.get_record(pubkey, topic)


class HttpBlobs:
    def __init__(self, url: str) -> None:
        self.client = BlobClient(url)

    def put(self, data: bytes) -> str:
        with tempfile.NamedTemporaryFile(prefix="splitup-transcript-") as f:
            f.write(data)
            f.flush()
            return self.client.put(Path(f.name))

    def get(self, sha: str, max_bytes: int) -> bytes:
        return self.client.get_bytes(sha, max_bytes=max_bytes)

    def publish_record(self, owner: Keypair, topic: str, body: bytes) -> Record:
        return publish(owner, topic, body, self.client.put_record, self.client.get_record)

    def get_record(self, pubkey: str, topic: str, timeout: float | None = None) -> Record | None:
        # a store that refuses connections is not waited for: the caller asks again on its next look
        return self.client.get_record(pubkey, topic, timeout=timeout, connect_wait_s=0.0)


def open_blobs(where: str | Path | BlobStore) -> Blobs:
    """A store directory (or ``BlobStore``) or an ``http(s)://`` store server."""
    if isinstance(where, str) and where.startswith(("http://", "https://")):
        return HttpBlobs(where)
    return LocalBlobs(where)


def plan_bundles(plan_dir: Path) -> BundleSource:
    """Bundles of a plan written on this machine (``make_plan(..., out_dir=plan_dir)``)."""
    plan = Plan.load(plan_dir)
    dirs = {t.task_id: task_dir(Path(plan_dir), t) for t in plan.tasks}

    def source(task_id: str) -> Path:
        if task_id not in dirs:
            raise StorageError(f"task {task_id[:12]} is not in the plan at {plan_dir}")
        return dirs[task_id]

    return source


def store_bundles(store_url: str, cache_dir: Path) -> BundleSource:
    """Bundles fetched by task id from a store server and cached (hash-checked) under ``cache_dir``."""
    return lambda task_id: fetch_task(task_id, store_url, cache_dir)
