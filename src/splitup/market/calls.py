"""The call tree: how a commitment binds what each call of a task handed on, so one hop is checkable on chain.

A task is called many times (a prefill, then one call per token) and its node commits once. So that a
receiver can prove what the sender handed it on *one* call without the whole transcript, the commitment
is (all hashes sha256, integers little-endian)::

    leaf(i)    = H(0x00 || "splitup-call-v1" || u64 i || digest_i)     digest_i: what call i handed on
    node(l, r) = H(0x01 || l || r)
    root       = the tree over leaf(0) .. leaf(count-1), padded with 32 zero bytes to a power of two
    commitment = H("splitup-commit-v2" || u64 count || root || body)   body: the salted transcript hash

The body (``splitup.verify.commitment``, salted) keeps the 32 public bytes from revealing low-entropy
outputs; the tree binds the call count and each call's hand-off digest. ``prove_handoff``
(program/evidence.c) takes a signed hand-off of call ``i`` with an :class:`Opening` of the sender's
commitment: for a committed call, the digest committed for it and its path (``depth(count)`` siblings,
leaf first); for a call at or beyond the count, the root itself. The leaf and node prefixes keep a leaf
from passing for an inner node and back.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from splitup.market.constants import CALL_DOMAIN, COMMIT_DOMAIN, MAX_CALLS
from splitup.market.errors import MarketError

EMPTY = bytes(32)


def leaf(call: int, digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + CALL_DOMAIN + struct.pack("<Q", call) + digest).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def depth(count: int) -> int:
    """Levels above the leaves of a tree of ``count`` calls (0 for one call)."""
    if not 1 <= count <= MAX_CALLS:
        raise MarketError(f"a task commits 1 to {MAX_CALLS} calls, not {count}")
    return (count - 1).bit_length()


def _levels(digests: Sequence[bytes]) -> list[list[bytes]]:
    level = [leaf(i, d) for i, d in enumerate(digests)]
    level += [EMPTY] * ((1 << depth(len(digests))) - len(level))
    levels = [level]
    while len(level) > 1:
        level = [node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def root(digests: Sequence[bytes]) -> bytes:
    return _levels(digests)[-1][0]


def commitment(count: int, calls_root: bytes, body: bytes) -> bytes:
    return hashlib.sha256(COMMIT_DOMAIN + struct.pack("<Q", count) + calls_root + body).digest()


@dataclass(frozen=True)
class Opening:
    """What opens a commitment at one call: see the module docstring."""

    call: int
    count: int
    committed: bytes  # the digest committed for ``call`` (call < count), else the tree's root
    body: bytes
    path: tuple[bytes, ...] = ()

    def commitment(self) -> bytes:
        """The commitment this opening opens (what the program recomputes)."""
        if self.call >= self.count:
            return commitment(self.count, self.committed, self.body)
        h, index = leaf(self.call, self.committed), self.call
        for sibling in self.path:
            h = node(sibling, h) if index & 1 else node(h, sibling)
            index >>= 1
        return commitment(self.count, h, self.body)


def opening(digests: Sequence[bytes], body: bytes, call: int) -> Opening:
    """The opening at ``call`` of the commitment over ``digests`` and ``body``."""
    levels = _levels(digests)
    if call >= len(digests):
        return Opening(call, len(digests), levels[-1][0], body)
    path, index = [], call
    for level in levels[:-1]:
        path.append(level[index ^ 1])
        index >>= 1
    return Opening(call, len(digests), digests[call], body, tuple(path))

