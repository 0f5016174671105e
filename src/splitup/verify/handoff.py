"""The next node's cheap check: tensors it received against the sender's signed fingerprints.

A node forwards its boundary outputs to the next node and announces TOPLOC-style fingerprints of them
with its commitment. Anyone holding the receiver's transcript and the sender's announcement checks,
within tolerance and without the sender's transcript, that what the receiver recorded as received is
what the sender committed to: a report (``TaskReport.handoff_mismatches``). The blame itself needs the
sender's signature on the exact tensors of each call: the signed hand-offs the receiving node keeps
(``splitup.node.handoffs``) and proves against the commitment's call tree (docs/posp.md).
"""

from __future__ import annotations

from splitup.verify.fingerprint import fingerprint_matches
from splitup.verify.roles import Announcement
from splitup.verify.transcript import Transcript


def handoff_mismatches(upstream: Announcement, downstream: Transcript, tol: float = 1e-3) -> list[str]:
    """Names ``step{i}.in.{name}`` of downstream inputs that contradict the upstream's fingerprints."""
    bad = []
    for i, step in enumerate(downstream.steps):
        for name, value in step.inputs.items():
            fp = upstream.fingerprints.get(f"step{i}.out.{name}")
            if fp is not None and not fingerprint_matches(fp, value, tol):
                bad.append(f"step{i}.in.{name}")
    return bad
