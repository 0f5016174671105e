"""Signed named records: a small document a key's owner publishes under ``(pubkey, topic)`` in the store.

Only the holder of the ed25519 key can write (or overwrite) its records, so nobody else can squat a name
or erase what the owner published, and anyone can read them without the owner being online. The store
knows nothing of what a record means; whoever reads one checks its signature again.

A record is ``(pubkey, topic, sequence, body, signature)``; the signature is the owner's over

    b"SPLITUP-RECORD-v1\\0" || topic (ASCII) || b"\\0" || sequence (u64 big-endian) || sha256(body)

``sequence`` orders the owner's versions of one topic: the store keeps the highest, so a third party
replaying an older version the owner signed cannot roll the name back. Publishers use the clock in
nanoseconds and step past a higher sequence already stored (``publish``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from splitup.storage.blobstore import StorageError

RECORD_TAG = b"SPLITUP-RECORD-v1\x00"
MAX_RECORD_BYTES = 1 << 20
MAX_TOPIC_CHARS = 200
MAX_SEQUENCE = (1 << 64) - 1
SIGNATURE_HEADER = "X-SplitUp-Signature"  # 64 bytes as hex
SEQUENCE_HEADER = "X-SplitUp-Sequence"  # decimal u64
_TOPIC = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


class RecordError(StorageError):
    """A record the store refuses; ``status`` is the HTTP status it answers with."""

    status = 400


class BadRecord(RecordError):
    """A malformed key, topic, sequence or signature."""


class ForgedRecord(RecordError):
    """The signature is not the key's owner's over this topic, sequence and body."""

    status = 403


class RecordTooLarge(RecordError):
    status = 413


class StaleRecord(RecordError):
    """The store holds a later version of the record (or another body under the same sequence)."""

    status = 409


class StoreUnavailable(StorageError):
    """The store could not be asked, or failed to answer (connection, timeout, 5xx): no answer either way."""


def check_topic(topic: str) -> str:
    """ASCII letters, digits, ``_.-`` in ``/``-separated segments, none of them ``.`` or ``..``."""
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC_CHARS or not _TOPIC.fullmatch(topic):
        raise BadRecord(f"a topic is 1 to {MAX_TOPIC_CHARS} characters of [A-Za-z0-9_.-] in /-separated "
                        f"segments: {str(topic)[:80]!r}")
    if any(part in (".", "..") for part in topic.split("/")):
        raise BadRecord(f"a topic has no '.' or '..' segments: {topic[:80]!r}")
    return topic


def check_pubkey(text: str) -> Pubkey:
    """A base58 ed25519 public key in its canonical spelling (one name per key)."""
    try:
        key = Pubkey.from_string(text)
    except (ValueError, TypeError):
        raise BadRecord(f"not a base58 public key: {str(text)[:80]!r}") from None
    if str(key) != text:
        raise BadRecord(f"not the canonical spelling of a public key: {text[:80]!r}")
    return key


def record_message(topic: str, sequence: int, body: bytes) -> bytes:
    """What the owner signs (module docstring)."""
    return RECORD_TAG + topic.encode("ascii") + b"\x00" + sequence.to_bytes(8, "big") + hashlib.sha256(body).digest()


def parse_sequence(text: str | None) -> int:
    if text is None or not text.isdigit() or len(text) > 20 or int(text) > MAX_SEQUENCE:
        raise BadRecord(f"{SEQUENCE_HEADER} is a decimal u64, not {str(text)[:40]!r}")
    return int(text)


def parse_signature(text: str | None) -> bytes:
    try:
        raw = bytes.fromhex(text or "")
    except ValueError:
        raw = b""
    if len(raw) != 64:
        raise BadRecord(f"{SIGNATURE_HEADER} is 64 bytes as hex")
    return raw


@dataclass(frozen=True)
class Record:
    pubkey: str
    topic: str
    sequence: int
    body: bytes
    signature: bytes

    @classmethod
    def sign(cls, owner: Keypair, topic: str, body: bytes, sequence: int | None = None) -> Record:
        check_topic(topic)
        sequence = time.time_ns() if sequence is None else sequence
        if not 0 <= sequence <= MAX_SEQUENCE:
            raise BadRecord(f"sequence {sequence} is not a u64")
        signature = bytes(owner.sign_message(record_message(topic, sequence, body)))
        return cls(str(owner.pubkey()), topic, sequence, bytes(body), signature)

    def check(self) -> None:
        """Raise unless the record is well formed, within the limits and signed by ``pubkey``."""
        key = check_pubkey(self.pubkey)
        check_topic(self.topic)
        if not 0 <= self.sequence <= MAX_SEQUENCE:
            raise BadRecord(f"sequence {self.sequence} is not a u64")
        if len(self.body) > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"a record is at most {MAX_RECORD_BYTES} bytes, not {len(self.body)}")
        if len(self.signature) != 64:
            raise BadRecord("a signature is 64 bytes")
        try:
            ok = Signature.from_bytes(self.signature).verify(key, record_message(self.topic, self.sequence, self.body))
        except ValueError:
            ok = False
        if not ok:
            raise ForgedRecord(f"record {self.topic[:80]!r} is not signed by {self.pubkey}")

    def valid(self) -> bool:
        try:
            self.check()
        except RecordError:
            return False
        return True


def publish(owner: Keypair, topic: str, body: bytes, put: Callable[[Record], bool],
            get: Callable[[str, str], Record | None]) -> Record:
    """Sign ``body`` under ``topic`` and store it with ``put``; if the store holds a later sequence (a clock
    that went back, a publish from another machine), sign again just past it."""
    record = Record.sign(owner, topic, body)
    try:
        put(record)
    except StaleRecord:
        current = get(record.pubkey, topic)
        if current is None or current.sequence >= MAX_SEQUENCE:
            raise
        record = Record.sign(owner, topic, body, max(time.time_ns(), current.sequence + 1))
        put(record)
    return record


# --- on disk: root/records/<pubkey>/<sha256(topic)>, holding sequence (8 bytes) || signature (64) || body ---
def record_path(root: Path, pubkey: str, topic: str) -> Path:
    check_pubkey(pubkey)
    return root / "records" / pubkey / hashlib.sha256(check_topic(topic).encode("ascii")).hexdigest()


def load_record(root: Path, pubkey: str, topic: str) -> Record | None:
    try:
        raw = record_path(root, pubkey, topic).read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) < 72:
        raise StorageError(f"record {topic[:80]!r} of {pubkey} is truncated on disk")
    return Record(pubkey, topic, int.from_bytes(raw[:8], "big"), raw[72:], raw[8:72])


def save_record(root: Path, tmp_dir: Path, record: Record) -> bool:
    """Check ``record`` and store it, atomically, unless a later version is stored: True when written,
    False when exactly this version was there already; StaleRecord when a later one (or another body
    under the same sequence) is."""
    record.check()
    path = record_path(root, record.pubkey, record.topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(root / "records" / ".lock", "a") as lock:  # one writer at a time, threads and processes alike
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = load_record(root, record.pubkey, record.topic)
        if current is not None:
            if current.sequence == record.sequence and current.body == record.body:
                return False
            if current.sequence >= record.sequence:
                raise StaleRecord(f"the store holds version {current.sequence} of {record.topic[:80]!r}; "
                                  f"{record.sequence} is not later")
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(record.sequence.to_bytes(8, "big") + record.signature + record.body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return True
