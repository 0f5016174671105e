"""Downloading blobs: resumable with HTTP ranges, verified against their sha256 before they are used."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from splitup import jsonparse
from splitup.storage.blobstore import CHUNK, StorageError, is_sha256

log = logging.getLogger(__name__)
T = TypeVar("T")

# A store and the nodes that read from it are often started together (a shell script, a compose file, a
# systemd target): a store that is not listening yet is waited for this long before it counts as down.
CONNECT_WAIT_S = 15.0


class BlobClient:
    def __init__(self, base_url: str, *, timeout: float = 60.0, connect_wait_s: float = CONNECT_WAIT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_wait_s = connect_wait_s
        self._http = httpx.Client(timeout=timeout)

    def _connected(self, call: Callable[[], T]) -> T:
        """``call()``, retried while the store refuses connections (nothing was sent or received yet)."""
        deadline = time.monotonic() + self.connect_wait_s
        delay, warned = 0.1, False
        while True:
            try:
                return call()
            except httpx.ConnectError:
                if time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    log.warning("store %s is not answering yet; waiting up to %.0f s", self.base_url,
                                self.connect_wait_s)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BlobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, sha: str) -> str:
        if not is_sha256(sha):
            raise StorageError(f"not a sha256 hex digest: {sha[:80]!r}")
        return f"{self.base_url}/blobs/{sha}"

    def get_bytes(self, sha: str, *, max_bytes: int = 64 << 20) -> bytes:
        """A small blob in memory (definitions, plans), refused beyond ``max_bytes`` and checked by hash."""
        url = self._url(sha)

        def get() -> bytearray:
            with self._http.stream("GET", url) as r:
                _raise_for(r, sha)
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise StorageError(f"blob {sha[:12]} is larger than {max_bytes} bytes")
                return data

        try:
            data = self._connected(get)
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot fetch blob {sha[:12]} from {self.base_url}: {exc}") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise StorageError(f"blob {sha[:12]} from {self.base_url} does not match its sha256")
        return bytes(data)

    def fetch(self, sha: str, dest: Path) -> Path:
        """Download to ``dest`` via ``dest.part``; an interrupted download resumes where it stopped."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        url = self._url(sha)

        def download() -> None:
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._http.stream("GET", url, headers=headers) as r:
                # 416: the partial file is already complete (or longer); the hash check below decides.
                if r.status_code != 416:
                    _raise_for(r, sha)
                    append = have > 0 and r.status_code == 206
                    with open(part, "ab" if append else "wb") as f:
                        for chunk in r.iter_bytes(CHUNK):
                            f.write(chunk)

        try:
            self._connected(download)
        except httpx.HTTPError as exc:
            raise StorageError(f"download of {sha[:12]} from {self.base_url} interrupted: {exc}") from None
        if _sha256_file(part) != sha:
            part.unlink(missing_ok=True)
            raise StorageError(f"blob {sha[:12]} from {self.base_url} does not match its sha256; discarded")
        os.replace(part, dest)
        return dest

    def put(self, path: Path) -> str:
        """Upload a file to a writable store server; returns its sha256."""
        sha = _sha256_file(Path(path))
        url = self._url(sha)

        def upload() -> httpx.Response:
            with open(path, "rb") as f:
                return self._http.put(url, content=iter(lambda: f.read(CHUNK), b""))

        _raise_for(self._connected(upload), sha)
        return sha


def _raise_for(r: httpx.Response, sha: str) -> None:
    if r.status_code >= 400:
        r.read()
        try:
            detail = jsonparse.loads(r.content).get("error", r.text)
        except ValueError:
            detail = r.text[:200]
        raise StorageError(f"blob {sha[:12]}: HTTP {r.status_code}: {detail}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
