"""The next node's cheap check: tensors it received against the sender's signed fingerprints.

A node forwards its boundary outputs to the next node and announces TOPLOC-style fingerprints of them
with its commitment. The receiver (or anyone holding both) checks, within tolerance and without the
sender's transcript, that what arrived is what the sender committed to. A mismatch means one of the two
lied about the handoff; without the sender's signature on the tensors themselves it cannot say which
(docs/posp.md, "What is left"), so it is reported, not slashed.
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
