"""The work digest: what proves a validator re-executed a task instead of agreeing blindly.

The executor commits ``seal = sha256(digest)`` with its result (``commit_result``); a validator that
re-executes the transcript computes the digest from its own run and submits it in the clear with its
verdict; the program counts the verdict as proved, and pays the validator's reward, only when it opens
the seal. The digest is taken over the task's final *state* (its KV cache): state never leaves the node
that computed it (it is neither handed off nor in the transcript), so no party can derive the digest
without running the task. A task without state falls back to its last call's boundary outputs, which
the next node sees; for those tasks the proof is weaker (docs/posp.md).

    digest = sha256(b"SPLITUP-WORK-v1\\x00" || commitment || for each of 64 probes: u32 tensor index,
                    u64 flat position, i8 exponent, u8 4-bit mantissa)

The probes' positions come from the commitment, so they are fixed once the result is committed. Values
are rounded to 4 significant bits, so last-bit differences between engines rarely change the digest
(64 probes at 1e-6 relative noise: about one digest in a thousand differs; that validator then agrees
unproved, and is not paid the reward, but loses nothing).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import numpy as np

DOMAIN_TAG = b"SPLITUP-WORK-v1\x00"
PROBES = 64
MANTISSA_STEPS = 16


def _probe(value: float) -> bytes:
    if not np.isfinite(value):
        return b"\x7f" + (b"\xff" if np.isnan(value) else (b"\xfe" if value > 0 else b"\xfd"))
    mantissa, exponent = np.frexp(np.float64(value))
    q = int(np.rint(abs(mantissa) * MANTISSA_STEPS))
    if q == MANTISSA_STEPS:  # rounding carried into the next power of two
        q, exponent = MANTISSA_STEPS // 2, exponent + 1
    if q == 0:
        return b"\x00\x00"
    return struct.pack("<bB", max(-127, min(126, int(exponent))), q | (0x80 if mantissa < 0 else 0))


def work_digest(commitment: bytes, tensors: Mapping[str, np.ndarray]) -> bytes:
    """The 32-byte digest of ``tensors`` (the final state, or the last outputs of a stateless task)."""
    names = sorted(k for k, v in tensors.items() if np.asarray(v).size)
    h = hashlib.sha256(DOMAIN_TAG + bytes(commitment))
    if not names:
        return h.digest()
    flat = [np.ascontiguousarray(tensors[k]).reshape(-1) for k in names]
    stream = hashlib.sha256(b"probes" + bytes(commitment)).digest()
    for i in range(PROBES):
        if i % 4 == 0 and i:
            stream = hashlib.sha256(stream).digest()
        word = int.from_bytes(stream[(i % 4) * 8 : (i % 4) * 8 + 8], "little")
        which = word % len(flat)
        pos = (word >> 16) % flat[which].size
        value = flat[which][pos]
        probe = _probe(float(value)) if np.issubdtype(flat[which].dtype, np.floating) else \
            int(value).to_bytes(8, "little", signed=True)
        h.update(struct.pack("<IQ", which, pos) + probe)
    return h.digest()


def work_tensors(state: Mapping[str, np.ndarray], last_outputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """What the digest covers: the final state when the task has one, else its last boundary outputs."""
    return state if any(np.asarray(v).size for v in state.values()) else last_outputs
