"""Downloading blobs: resumable with HTTP ranges, verified against their sha256 before they are used."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from splitup.storage.blobstore import CHUNK, StorageError, is_sha256


class BlobClient:
    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout)

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
        try:
            with self._http.stream("GET", self._url(sha)) as r:
                _raise_for(r, sha)
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise StorageError(f"blob {sha[:12]} is larger than {max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot fetch blob {sha[:12]} from {self.base_url}: {exc}") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise StorageError(f"blob {sha[:12]} from {self.base_url} does not match its sha256")
        return bytes(data)

    def fetch(self, sha: str, dest: Path) -> Path:
        """Download to ``dest`` via ``dest.part``; an interrupted download resumes where it stopped."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self._http.stream("GET", self._url(sha), headers=headers) as r:
                # 416: the partial file is already complete (or longer); the hash check below decides.
                if r.status_code != 416:
                    _raise_for(r, sha)
                    append = have > 0 and r.status_code == 206
                    with open(part, "ab" if append else "wb") as f:
                        for chunk in r.iter_bytes(CHUNK):
                            f.write(chunk)
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
        with open(path, "rb") as f:
            r = self._http.put(self._url(sha), content=iter(lambda: f.read(CHUNK), b""))
        _raise_for(r, sha)
        return sha


def _raise_for(r: httpx.Response, sha: str) -> None:
    if r.status_code >= 400:
        r.read()
        try:
            detail = r.json().get("error", r.text)
        except ValueError:
            detail = r.text[:200]
        raise StorageError(f"blob {sha[:12]}: HTTP {r.status_code}: {detail}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
