"""A compact, tolerance-friendly fingerprint of a boundary tensor, in the spirit of TOPLOC.

The node publishes the k largest-magnitude values of its output activation and their flat positions.
The next node in the pipeline, or a validator, can check its copy of the tensor against those few
hundred bytes without the asserter's full output, and with tolerance, because the largest values are
the ones least disturbed by last-bit differences between engines.

Byte layout (little-endian):

    b"SUFP" | u8 version=1 | u8 position width (4 or 8) | u8 ndim | ndim x u64 dims | u32 k
    | k x position (u32 or u64), ascending | k x f32 values, in the same order

Positions are flat C-order indices. Selection orders by |value| descending (NaN counts as the largest,
so a NaN in the output cannot hide), ties broken by the lower position.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from splitup.verify.errors import BadFingerprint

MAGIC = b"SUFP"
VERSION = 1
MAX_K = 1 << 16


@dataclass(frozen=True)
class Fingerprint:
    shape: tuple[int, ...]
    positions: np.ndarray  # uint64, ascending
    values: np.ndarray  # float32, aligned with positions

    @property
    def k(self) -> int:
        return int(self.positions.size)


def _magnitude(flat: np.ndarray) -> np.ndarray:
    # Floats keep their own width (abs is exact, and activations can be large); integers widen so that
    # abs(INT_MIN) cannot overflow.
    mag = np.abs(flat) if flat.dtype.kind == "f" else np.abs(flat.astype(np.float64))
    return np.where(np.isnan(mag), np.inf, mag)


def _top_k_positions(mag: np.ndarray, k: int) -> np.ndarray:
    """Flat positions of the k largest magnitudes, ties to the lower position, ascending. O(n)."""
    n = mag.size
    if k >= n:
        return np.arange(n)
    kth = np.partition(mag, n - k)[n - k]
    above = np.flatnonzero(mag > kth)
    ties = np.flatnonzero(mag == kth)[: k - above.size]
    return np.sort(np.concatenate([above, ties]))


def fingerprint(tensor: np.ndarray, k: int = 64) -> bytes:
    """The top-k |values| of ``tensor`` and their flat positions, as compact bytes."""
    arr = np.asarray(tensor)
    if arr.dtype.kind not in "fiu":
        raise BadFingerprint(f"cannot fingerprint dtype {arr.dtype}")
    if not 1 <= k <= MAX_K:
        raise BadFingerprint(f"k must be in [1, {MAX_K}], got {k}")
    if arr.ndim > 255:
        raise BadFingerprint("more than 255 dimensions")
    flat = arr.reshape(-1)
    if flat.size == 0:
        raise BadFingerprint("cannot fingerprint an empty tensor")
    k = min(k, flat.size)
    positions = _top_k_positions(_magnitude(flat), k).astype(np.uint64)
    values = flat[positions.astype(np.intp)].astype(np.float32)
    return _pack(Fingerprint(tuple(int(d) for d in arr.shape), positions, values))


def _pack(fp: Fingerprint) -> bytes:
    size = int(np.prod(fp.shape, dtype=np.uint64)) if fp.shape else 1
    width = 4 if size <= 1 << 32 else 8
    head = MAGIC + struct.pack(f"<BBB{len(fp.shape)}QI", VERSION, width, len(fp.shape), *fp.shape, fp.k)
    pos = fp.positions.astype("<u4" if width == 4 else "<u8").tobytes()
    return head + pos + fp.values.astype("<f4").tobytes()


def parse_fingerprint(data: bytes) -> Fingerprint:
    """Decode and validate fingerprint bytes; anything inconsistent raises ``BadFingerprint``."""
    data = bytes(data)
    if len(data) < 7 or data[:4] != MAGIC:
        raise BadFingerprint("not a SplitUp fingerprint")
    version, width, ndim = data[4], data[5], data[6]
    if version != VERSION:
        raise BadFingerprint(f"unsupported fingerprint version {version}")
    if width not in (4, 8):
        raise BadFingerprint(f"bad position width {width}")
    off = 7
    need = off + 8 * ndim + 4
    if len(data) < need:
        raise BadFingerprint("truncated fingerprint header")
    shape = struct.unpack_from(f"<{ndim}Q", data, off)
    (k,) = struct.unpack_from("<I", data, off + 8 * ndim)
    off = need
    if len(data) != off + k * (width + 4):
        raise BadFingerprint("fingerprint length does not match its k")
    size = 1
    for d in shape:
        size *= d
    if not 1 <= k <= min(size, MAX_K):
        raise BadFingerprint(f"k={k} impossible for a tensor of {size} elements")
    positions = np.frombuffer(data, "<u4" if width == 4 else "<u8", k, off).astype(np.uint64)
    values = np.frombuffer(data, "<f4", k, off + k * width).astype(np.float32)
    if np.any(np.diff(positions.astype(np.int64)) <= 0) or int(positions[-1]) >= size:
        raise BadFingerprint("positions must be strictly ascending and inside the tensor")
    return Fingerprint(tuple(shape), positions, values)


def fingerprint_matches(fp: bytes | Fingerprint, tensor: np.ndarray, tol: float = 1e-3) -> bool:
    """Whether ``tensor`` is consistent with the fingerprint, within ``tol`` of its largest magnitude.

    Two conditions: the recorded positions hold the recorded values, and no other element is larger in
    magnitude than the smallest recorded one (so the recorded set really is the top k, not values a
    cheater chose). Both allow ``tol * max|recorded|`` of slack for engine differences.
    """
    if not isinstance(fp, Fingerprint):
        fp = parse_fingerprint(fp)
    arr = np.asarray(tensor)
    if tuple(arr.shape) != fp.shape:
        return False
    if arr.dtype.kind not in "fiu":
        return False
    flat = arr.reshape(-1)
    idx = fp.positions.astype(np.intp)
    rec = fp.values.astype(np.float64)
    got = flat[idx].astype(np.float32).astype(np.float64)
    finite_rec = rec[np.isfinite(rec)]
    scale = float(np.abs(finite_rec).max()) if finite_rec.size else 0.0
    slack = tol * scale
    rec_fin, got_fin = np.isfinite(rec), np.isfinite(got)
    same_nonfinite = ~rec_fin & ~got_fin & ((np.isnan(rec) & np.isnan(got)) | (rec == got))
    with np.errstate(invalid="ignore"):
        close = rec_fin & got_fin & (np.abs(rec - got) <= slack)
    if not np.all(close | same_nonfinite):
        return False
    others = np.ones(flat.size, dtype=bool)
    others[idx] = False
    if not others.any():
        return True
    floor = float(_magnitude(rec).min())
    return bool(_magnitude(flat[others]).max() <= floor + slack)
