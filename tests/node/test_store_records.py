"""Signed named records in the blob store: only the key's owner writes (or overwrites) ``(pubkey, topic)``,
anyone reads; names, sizes, signatures and versions are checked before anything is stored. The store's
FastAPI app served by uvicorn on loopback, spoken to over HTTP and through ``BlobClient``."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from solders.keypair import Keypair

from splitup.storage import BlobClient, BlobStore, StorageError
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
    publish,
    record_message,
)
from splitup.storage.server import create_app
from splitup.verify.blobs import HttpBlobs, LocalBlobs

from .procs import serving


def serving_store(root: Path, *, writable: bool = True) -> AbstractContextManager[str]:
    return serving(create_app(BlobStore(root), writable=writable))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("records-store")
    with serving_store(root) as url:
        yield url, root


def _put(url: str, pubkey: str, topic: str, body: bytes, signature: bytes, sequence: int) -> httpx.Response:
    return httpx.put(f"{url}/records/{pubkey}/{topic}", content=body, timeout=10,
                     headers={SIGNATURE_HEADER: signature.hex(), SEQUENCE_HEADER: str(sequence)})


def _raw(url: str, method: str, path: str, record: Record | None = None) -> int:
    """The status of a request whose path goes out byte for byte."""
    host, port = url.removeprefix("http://").split(":")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    body = b""
    if record is not None:
        body = record.body
        head += (f"{SIGNATURE_HEADER}: {record.signature.hex()}\r\n{SEQUENCE_HEADER}: {record.sequence}\r\n"
                 f"Content-Length: {len(body)}\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_a_signed_record_round_trips_and_only_its_owner_can_overwrite_it(store) -> None:
    url, root = store
    owner = Keypair()
    topic = "announcement/job/0"
    first = Record.sign(owner, topic, b'{"v": 1}', sequence=10)
    with BlobClient(url) as client:
        assert client.get_record(str(owner.pubkey()), topic) is None  # 404: the store is up, has none
        assert client.put_record(first) is True
        assert client.put_record(first) is False  # the same version again: idempotent, 200
        got = client.get_record(str(owner.pubkey()), topic)
        assert got == first and got.valid()
        # on the wire: the body as sent, the signature and version in headers
        r = httpx.get(f"{url}/records/{owner.pubkey()}/{topic}", timeout=10)
        assert r.status_code == 200 and r.content == b'{"v": 1}'
        assert bytes.fromhex(r.headers[SIGNATURE_HEADER]) == first.signature
        assert r.headers[SEQUENCE_HEADER] == "10"
        # the message signed is domain-separated: tag, topic, version, sha256 of the body
        assert record_message(topic, 10, b'{"v": 1}') == (b"SPLITUP-RECORD-v1\x00" + topic.encode() + b"\x00"
                                                          + (10).to_bytes(8, "big")
                                                          + hashlib.sha256(b'{"v": 1}').digest())

        # the owner overwrites with a later version
        second = Record.sign(owner, topic, b'{"v": 2}', sequence=11)
        assert client.put_record(second) is True
        assert client.get_record(str(owner.pubkey()), topic) == second
        # nobody can roll it back by replaying the owner's earlier version, nor reuse a version
        with pytest.raises(StaleRecord):
            client.put_record(first)
        with pytest.raises(StaleRecord):
            client.put_record(Record.sign(owner, topic, b'{"v": 3}', sequence=11))
        # publish() steps past a later version already stored (a clock that went back)
        third = publish(owner, topic, b'{"v": 3}', lambda r: client.put_record(r), client.get_record)
        assert third.sequence > 11 and client.get_record(str(owner.pubkey()), topic) == third

        # another key cannot write under the owner's name, nor under a key whose signature it forged
        mallory = Keypair()
        forged = Record.sign(mallory, topic, b"squatted", sequence=99)
        r = _put(url, str(owner.pubkey()), topic, forged.body, forged.signature, 99)
        assert r.status_code == 403
        with pytest.raises(ForgedRecord):
            client.put_record(Record(str(owner.pubkey()), topic, 99, b"squatted", forged.signature))
        # a signature over another body, topic or version is refused as well
        with pytest.raises(ForgedRecord):
            client.put_record(Record(str(owner.pubkey()), topic, 99, b"other", Record.sign(owner, topic, b"x", 99).signature))
        with pytest.raises(ForgedRecord):
            client.put_record(Record(str(owner.pubkey()), topic, 99, b"x",
                                     Record.sign(owner, "announcement/job/1", b"x", 99).signature))
        with pytest.raises(ForgedRecord):
            client.put_record(Record(str(owner.pubkey()), topic, 100, b"x", Record.sign(owner, topic, b"x", 99).signature))
        assert client.get_record(str(owner.pubkey()), topic) == third  # none of that changed it
        # mallory's own records are hers: a separate name
        assert client.put_record(forged) is True
        assert client.get_record(str(mallory.pubkey()), topic) == forged
    # stored atomically: nothing left half-written in the store's temporary directory
    assert list((root / "tmp").iterdir()) == []


def test_malformed_names_signatures_and_oversized_records_are_refused(store) -> None:
    url, _ = store
    owner = Keypair()
    pk = str(owner.pubkey())
    ok = Record.sign(owner, "a/b", b"body", sequence=1)
    # dot segments sent as they are (an HTTP client would resolve them before sending)
    for topic in ("a/../b", "a/./b", "..", "a//b", "a/", "a%00b", "a/%2e%2e"):
        assert _raw(url, "PUT", f"/records/{pk}/{topic}", ok) == 400, topic
        assert _raw(url, "GET", f"/records/{pk}/{topic}") == 400, topic
    for topic in ("a:b", "a b", "x" * 201, "é"):
        assert _put(url, pk, topic, b"body", ok.signature, 1).status_code == 400, topic
        assert httpx.get(f"{url}/records/{pk}/{topic}", timeout=10).status_code == 400
    assert _put(url, pk, "x" * 200, b"body", Record.sign(owner, "x" * 200, b"body", 1).signature, 1).status_code == 201
    assert _put(url, "not-a-key", "a/b", b"body", ok.signature, 1).status_code == 400
    assert httpx.get(f"{url}/records/not-a-key/a/b", timeout=10).status_code == 400
    for headers in ({}, {SIGNATURE_HEADER: "zz", SEQUENCE_HEADER: "1"}, {SIGNATURE_HEADER: ok.signature.hex()},
                    {SIGNATURE_HEADER: ok.signature.hex(), SEQUENCE_HEADER: "-1"},
                    {SIGNATURE_HEADER: ok.signature.hex(), SEQUENCE_HEADER: str(1 << 64)}):
        r = httpx.put(f"{url}/records/{pk}/a/b", content=b"body", headers=headers, timeout=10)
        assert r.status_code == 400, headers
    big = b"x" * (MAX_RECORD_BYTES + 1)
    signed = Record.sign(owner, "big", big, sequence=1)
    assert _put(url, pk, "big", big, signed.signature, 1).status_code == 413
    # sent without a length (chunked), the store counts as it reads
    r = httpx.put(f"{url}/records/{pk}/big", content=iter([big[: 1 << 19], big[1 << 19 :]]), timeout=10,
                  headers={SIGNATURE_HEADER: signed.signature.hex(), SEQUENCE_HEADER: "1"})
    assert r.status_code == 413
    with BlobClient(url) as client:
        with pytest.raises(RecordTooLarge):
            client.put_record(signed)
        with pytest.raises(BadRecord):
            client.get_record(pk, "a/../b")
        assert client.get_record(pk, "big") is None
        exact = Record.sign(owner, "exact", b"y" * MAX_RECORD_BYTES, sequence=1)
        assert client.put_record(exact) is True and client.get_record(pk, "exact") == exact
        # a reader takes no more than it asked for
        with pytest.raises(StorageError):
            client.get_record(pk, "exact", max_bytes=1000)


def test_a_read_only_store_refuses_records_and_a_store_that_is_down_is_unavailable(tmp_path) -> None:
    owner = Keypair()
    record = Record.sign(owner, "announcement/j/0", b"body", sequence=5)
    BlobStore(tmp_path / "ro").put_record(record)  # written to the directory by its operator
    with serving_store(tmp_path / "ro", writable=False) as url, BlobClient(url) as client:
        with pytest.raises(StorageError, match="405"):
            client.put_record(Record.sign(owner, "announcement/j/1", b"body", sequence=5))
        assert client.get_record(str(owner.pubkey()), "announcement/j/1") is None
        assert client.get_record(str(owner.pubkey()), "announcement/j/0") == record  # reading still works
    down = HttpBlobs(url)  # the server is gone: nothing listens on the port
    with pytest.raises(StoreUnavailable):
        down.get_record(str(owner.pubkey()), "announcement/j/0", timeout=2)
    with BlobClient(url, connect_wait_s=0) as client, pytest.raises(StoreUnavailable):
        client.put_record(record)


def test_the_directory_store_checks_records_too(tmp_path) -> None:
    owner, mallory = Keypair(), Keypair()
    local = LocalBlobs(tmp_path / "dir")
    rec = local.publish_record(owner, "t", b"one")
    assert local.get_record(str(owner.pubkey()), "t") == rec and rec.valid()
    with pytest.raises(ForgedRecord):
        local.store.put_record(Record(str(owner.pubkey()), "t", rec.sequence + 1, b"two",
                                      Record.sign(mallory, "t", b"two", rec.sequence + 1).signature))
    again = local.publish_record(owner, "t", b"two")
    assert again.sequence > rec.sequence and local.get_record(str(owner.pubkey()), "t") == again
