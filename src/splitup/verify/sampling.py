"""Which tasks get verified: the deterministic coin the chain program flips, and the adaptive rate.

The coin (docs/posp.md, "Sampling rule") must give the same answer in Python and in the C program:

    seed    = sha256(slot_hash || commitment || secret)   # known only after the commitment and the reveal
    sampled = u64_le(seed[0:8]) % 10000 < rate_bps

``secret`` is the client's 32-byte draw secret, committed (hashed) with the job and revealed after the
results; the program verifies a task whose secret was not revealed in time (or was revealed before the
task's result was committed), whatever the coin says.

The rate is integer basis points and the adaptive policy uses only integer shifts, so the program can
compute it without floating point.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from splitup.verify.errors import BadSamplingInput

BPS = 10_000
BASE_RATE_BPS = 800


def sampling_seed(slot_hash: bytes, commitment: bytes, secret: bytes = bytes(32)) -> bytes:
    """The 32-byte seed for one task: sha256(slot_hash || commitment || secret).

    The slot hash is unknown when the node commits, the commitment is fixed before the slot hash is, and
    the client's secret is fixed (hashed) before either and revealed after both: the node cannot grind its
    commitment without the secret, the client alone does not know the slot hash or the commitment when it
    chooses the secret, and a block leader biasing its slot hash does not know the secret.
    """
    if len(slot_hash) != 32 or len(commitment) != 32 or len(secret) != 32:
        raise BadSamplingInput("slot hash, commitment and secret must be 32 bytes each")
    return hashlib.sha256(bytes(slot_hash) + bytes(commitment) + bytes(secret)).digest()


def should_sample(seed: bytes, rate_bps: int) -> bool:
    """First 8 bytes of ``seed`` as a little-endian u64, mod 10000, below ``rate_bps``.

    The modulo bias is (2^64 mod 10^4) / 2^64 < 10^-15, far below anything the game notices.
    """
    if len(seed) != 32:
        raise BadSamplingInput(f"sampling seed must be 32 bytes, got {len(seed)}")
    if isinstance(rate_bps, bool) or not isinstance(rate_bps, int) or not 0 <= rate_bps <= BPS:
        raise BadSamplingInput(f"rate must be an integer in [0, {BPS}] basis points, got {rate_bps!r}")
    return int.from_bytes(seed[:8], "little") % BPS < rate_bps


@dataclass(frozen=True)
class NodeRecord:
    """What the program knows of a node: tasks settled honestly, and the last failed verdict if any."""

    honest_tasks: int = 0
    # Honest tasks settled since the node's last failed verdict; None when it never had one.
    since_failure: int | None = None


@dataclass(frozen=True)
class SamplingPolicy:
    """Base rate, plus an extra that halves every ``half_life`` honest tasks.

    A new node starts at ``new_node_bps``, a node whose result failed verification restarts at
    ``failed_bps``; both extras decay toward ``base_bps``. The larger of the two applies.
    """

    base_bps: int = BASE_RATE_BPS
    new_node_bps: int = 3_000
    new_node_half_life: int = 25
    failed_bps: int = 5_000
    failed_half_life: int = 50

    def __post_init__(self) -> None:
        for name in ("base_bps", "new_node_bps", "failed_bps"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v <= BPS:
                raise BadSamplingInput(f"{name} must be an integer in [0, {BPS}], got {v!r}")
        if self.new_node_bps < self.base_bps or self.failed_bps < self.base_bps:
            raise BadSamplingInput("elevated rates must not be below the base rate")
        for name in ("new_node_half_life", "failed_half_life"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise BadSamplingInput(f"{name} must be an integer >= 1, got {v!r}")

    def rate_bps(self, record: NodeRecord) -> int:
        extra = _decayed(self.new_node_bps - self.base_bps, record.honest_tasks, self.new_node_half_life)
        if record.since_failure is not None:
            extra = max(extra, _decayed(self.failed_bps - self.base_bps, record.since_failure,
                                        self.failed_half_life))
        return self.base_bps + extra

    def lifetime_extra_samples(self) -> float:
        """Upper bound on the extra checks one node's newness costs over its whole life.

        The extra is constant for ``h`` tasks, then halves: sum = h * extra * (1 + 1/2 + ...) <= 2 h extra.
        """
        return 2 * self.new_node_half_life * (self.new_node_bps - self.base_bps) / BPS

    def failure_extra_samples(self) -> float:
        """Upper bound on the extra checks that one failed verdict costs afterwards."""
        return 2 * self.failed_half_life * (self.failed_bps - self.base_bps) / BPS


def _decayed(extra: int, tasks: int, half_life: int) -> int:
    if tasks < 0:
        raise BadSamplingInput(f"task counts must be >= 0, got {tasks}")
    # An integer shift, so the C program computes the identical value.
    shift = tasks // half_life
    return 0 if shift >= 63 else extra >> shift


def overhead_bound(policy: SamplingPolicy, tasks_per_node: float, failures_per_task: float) -> float:
    """Upper bound on the population's long-run sampled fraction.

    base + (newness extra per node + failure extra * failures per node) / tasks per node.
    """
    if tasks_per_node <= 0:
        raise BadSamplingInput("tasks_per_node must be > 0")
    extra = policy.lifetime_extra_samples() + policy.failure_extra_samples() * failures_per_task * tasks_per_node
    return min(1.0, policy.base_bps / BPS + extra / tasks_per_node)
