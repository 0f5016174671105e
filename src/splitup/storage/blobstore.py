"""A local content-addressed store: each blob lives under its own sha256, written atomically."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from splitup.errors import SplitUpError

if TYPE_CHECKING:
    from splitup.storage.records import Record

_SHA = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


class StorageError(SplitUpError):
    """A blob is missing, malformed, too large or does not match its hash."""


def is_sha256(text: str) -> bool:
    return bool(_SHA.fullmatch(text))


class BlobStore:
    """``root/blobs/ab/abcd...``; a blob appears under its name only once complete and verified. Signed
    named records (``splitup.storage.records``) live under ``root/records/<pubkey>/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not is_sha256(sha):
            raise StorageError(f"not a sha256 hex digest: {sha[:80]!r}")
        return self.root / "blobs" / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def size(self, sha: str) -> int:
        try:
            return self.path(sha).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"blob {sha[:12]} is not in the store") from None

    def read(self, sha: str) -> bytes:
        try:
            return self.path(sha).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"blob {sha[:12]} is not in the store") from None

    def put_bytes(self, data: bytes) -> str:
        return self.put_stream([data])

    def put_file(self, path: Path) -> str:
        with open(path, "rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK), b""))

    def put_stream(self, chunks: Iterable[bytes], *, expected: str | None = None, max_bytes: int | None = None) -> str:
        """Write chunks to a temporary file, hash them on the way, and move the file under its hash.

        With ``expected`` a mismatching upload is discarded and refused; with ``max_bytes`` an oversized one.
        """
        h = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp")
        tmp = Path(tmp_name)
        try:
            total = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    total += len(chunk)
                    if max_bytes is not None and total > max_bytes:
                        raise StorageError(f"blob exceeds the limit of {max_bytes} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            sha = h.hexdigest()
            if expected is not None and sha != expected:
                raise StorageError(f"content hashes to {sha[:12]}, not {expected[:12]}")
            dest = self.path(sha)
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)
            return sha
        finally:
            tmp.unlink(missing_ok=True)

    def verify(self, sha: str) -> bool:
        """Re-hash a stored blob (disks rot; files get edited)."""
        h = hashlib.sha256()
        with open(self.path(sha), "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        return h.hexdigest() == sha

    def put_record(self, record: Record) -> bool:
        """Store a signed record (checked here: only its key's owner can write it); False when exactly
        this version was stored already. ``splitup.storage.records`` for the rules."""
        from splitup.storage.records import save_record

        return save_record(self.root, self.root / "tmp", record)

    def get_record(self, pubkey: str, topic: str) -> Record | None:
        from splitup.storage.records import load_record

        return load_record(self.root, pubkey, topic)
