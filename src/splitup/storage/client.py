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
from splitup.storage.records import (
    MAX_RECORD_BYTES,
    SEQUENCE_HEADER,
    SIGNATURE_HEADER,
    BadRecord,
    ForgedRecord,
    Record,
    RecordTooLarge,
    StaleRecord,
    StoreUnavailable,
    check_pubkey,
    check_topic,
    parse_sequence,
    parse_signature,
)

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

    def _connected(self, call: Callable[[], T], wait_s: float | None = None) -> T:
        """``call()``, retried while the store refuses connections (nothing was sent or received yet), for
        ``wait_s`` (default ``connect_wait_s``)."""
        wait_s = self.connect_wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        delay, warned = 0.1, False
        while True:
            try:
                return call()
            except httpx.ConnectError:
                if time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    log.warning("store %s is not answering yet; waiting up to %.0f s", self.base_url, wait_s)
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

    def _record_url(self, pubkey: str, topic: str) -> str:
        check_pubkey(pubkey)
        return f"{self.base_url}/records/{pubkey}/{check_topic(topic)}"

    def put_record(self, record: Record) -> bool:
        """Store a signed record in a writable store: True when written, False when exactly this version was
        there already. Typed refusals: BadRecord (400), ForgedRecord (403), StaleRecord (409),
        RecordTooLarge (413); StoreUnavailable when the store could not be asked or answered 5xx."""
        url = self._record_url(record.pubkey, record.topic)
        if len(record.body) > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"a record is at most {MAX_RECORD_BYTES} bytes, not {len(record.body)}")
        headers = {SIGNATURE_HEADER: record.signature.hex(), SEQUENCE_HEADER: str(record.sequence),
                   "Content-Type": "application/octet-stream"}
        try:
            r = self._connected(lambda: self._http.put(url, content=record.body, headers=headers))
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"cannot store record {record.topic[:80]!r} in {self.base_url}: {exc}") from None
        if r.status_code in (200, 201):
            return r.status_code == 201
        detail = _detail(r)
        refusal = {400: BadRecord, 403: ForgedRecord, 409: StaleRecord, 413: RecordTooLarge}.get(r.status_code)
        if refusal is not None:
            raise refusal(f"record {record.topic[:80]!r}: {detail}")
        if r.status_code >= 500:
            raise StoreUnavailable(f"record {record.topic[:80]!r}: HTTP {r.status_code}: {detail}")
        raise StorageError(f"record {record.topic[:80]!r}: HTTP {r.status_code}: {detail}")

    def get_record(self, pubkey: str, topic: str, *, timeout: float | None = None, connect_wait_s: float | None = None,
                   max_bytes: int = MAX_RECORD_BYTES) -> Record | None:
        """The record ``pubkey`` published under ``topic``, None when the store answers that there is none
        (404). Not checked here: the caller checks ``record.valid()`` (a store can be wrong too).
        StoreUnavailable when the store could not be asked, did not answer within ``timeout`` seconds in
        all, or answered 5xx; StorageError for any other answer (another 4xx, a malformed or oversized one).
        ``connect_wait_s``: how long a store refusing connections is waited for (default the client's)."""
        url = self._record_url(pubkey, topic)
        deadline = None if timeout is None else time.monotonic() + timeout
        where = f"record {topic[:80]!r} of {pubkey} from {self.base_url}"

        def get() -> Record | None:
            kw = {} if timeout is None else {"timeout": timeout}
            with self._http.stream("GET", url, **kw) as r:
                if r.status_code == 404:
                    return None
                if r.status_code != 200:
                    r.read()
                    error = StoreUnavailable if r.status_code >= 500 else StorageError
                    raise error(f"{where}: HTTP {r.status_code}: {_detail(r)}")
                try:
                    signature = parse_signature(r.headers.get(SIGNATURE_HEADER))
                    sequence = parse_sequence(r.headers.get(SEQUENCE_HEADER))
                except BadRecord as exc:
                    raise StorageError(f"{where}: malformed answer: {exc}") from None
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise StorageError(f"{where}: larger than {max_bytes} bytes")
                    if deadline is not None and time.monotonic() > deadline:
                        raise StoreUnavailable(f"{where}: no answer within {timeout} s")
                return Record(pubkey, topic, sequence, bytes(body), signature)

        try:
            return self._connected(get, connect_wait_s)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{where}: {type(exc).__name__}: {exc}") from None


def _detail(r: httpx.Response) -> str:
    r.read()
    try:
        return str(jsonparse.loads(r.content).get("error", r.text[:200]))
    except (ValueError, AttributeError):
        return r.text[:200]


def _raise_for(r: httpx.Response, sha: str) -> None:
    if r.status_code >= 400:
        raise StorageError(f"blob {sha[:12]}: HTTP {r.status_code}: {_detail(r)}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
