"""A user cache for converted weights: safetensors files checked against a recorded sha256.

Dequantising a GGUF file takes seconds; a float32 safetensors copy is memory-mapped in
milliseconds. The cache is only a speed-up: a missing, stale or altered entry is rebuilt from the
package's own file, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

CACHE_ENV = "SPLITUP_CACHE"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "splitup"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    # Several processes (test workers, node daemons) may fill the same entry at once: each writes a
    # private temporary file and renames it, so a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CacheEntry:
    """One directory: ``weights.safetensors``, text files beside it, and ``meta.json`` holding their
    sha256 hashes and any metadata."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.weights_path = directory / "weights.safetensors"
        self.meta_path = directory / "meta.json"

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]] | None:
        """(weights, text files, metadata), or None when absent or not matching the recorded hashes."""
        try:
            meta = json.loads(self.meta_path.read_text())
            if not isinstance(meta, dict) or sha256_file(self.weights_path) != meta.get("weights_sha256"):
                return None
            texts = {}
            for name, digest in dict(meta.get("files", {})).items():
                data = (self.dir / Path(name).name).read_bytes()
                if hashlib.sha256(data).hexdigest() != digest:
                    return None
                texts[name] = data.decode()
            return load_file(str(self.weights_path)), texts, meta
        except (OSError, ValueError):
            return None

    def store(self, weights: Mapping[str, np.ndarray], texts: Mapping[str, str], meta: Mapping[str, Any]) -> None:
        arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
        _atomic_write(self.weights_path, lambda p: save_file(arrays, str(p)))
        digests = {}
        for name, text in texts.items():
            data = text.encode()
            _atomic_write(self.dir / Path(name).name, lambda p, d=data: p.write_bytes(d))
            digests[name] = hashlib.sha256(data).hexdigest()
        full = {**meta, "weights_sha256": sha256_file(self.weights_path), "files": digests}
        _atomic_write(self.meta_path, lambda p: p.write_text(json.dumps(full, indent=1, sort_keys=True)))
