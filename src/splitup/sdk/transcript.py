"""What an executor commits to for one task of one job: every step's inputs and outputs.

A generation job runs each task once per step (prompt chunks, then one token at a time), so the
task's result is the sequence of its steps. Each step's received inputs and produced outputs are kept
(KV caches excluded: they are re-derived by replaying the steps). The commitment is
``splitup.verify.commitment`` over tensors named ``"{step:05d}.in.{name}"`` / ``"{step:05d}.out.{name}"``
with a random salt; the transcript travels as safetensors bytes with the salt in its metadata, so a
validator can check it against the 32 bytes on chain before spending compute on it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from splitup.node.wire import WireError, decode
from splitup.verify.commitment import commitment
from splitup.verify.compare import DEFAULT_TOLERANCE, Tolerance, compare_outputs

SALT_KEY = "splitup.salt"
MAX_TRANSCRIPT_BYTES = 1 << 30


@dataclass
class Transcript:
    steps: dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=dict)

    def add(self, step: int, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        # A repeated step (a client retry) replaces the earlier one: nodes treat steps as idempotent.
        self.steps[step] = ({k: np.asarray(v) for k, v in inputs.items()},
                            {k: np.asarray(v) for k, v in outputs.items()})

    def tensors(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for step, (ins, outs) in sorted(self.steps.items()):
            out.update({f"{step:05d}.in.{k}": v for k, v in ins.items()})
            out.update({f"{step:05d}.out.{k}": v for k, v in outs.items()})
        return out

    def seal(self) -> Sealed:
        salt = secrets.token_bytes(16)
        tensors = self.tensors()
        return Sealed(tensors, salt, commitment(tensors, salt))


@dataclass(frozen=True)
class Sealed:
    tensors: dict[str, np.ndarray]
    salt: bytes
    digest: bytes  # the 32 bytes committed on chain

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, metadata={SALT_KEY: self.salt.hex()})

    @staticmethod
    def from_bytes(body: bytes) -> Sealed:
        tensors, meta = decode(body, max_tensor_bytes=MAX_TRANSCRIPT_BYTES)
        try:
            salt = bytes.fromhex(meta[SALT_KEY])
        except (KeyError, ValueError):
            raise WireError("transcript has no salt") from None
        return Sealed(tensors, salt, commitment(tensors, salt))

    def steps(self) -> list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """(step, inputs, outputs) in step order."""
        by_step: dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
        for name, value in self.tensors.items():
            step_s, kind, tensor = name.split(".", 2)
            ins, outs = by_step.setdefault(int(step_s), ({}, {}))
            (ins if kind == "in" else outs)[tensor] = value
        return [(s, ins, outs) for s, (ins, outs) in sorted(by_step.items())]


def replay(runner, sealed: Sealed) -> dict[int, dict[str, np.ndarray]]:  # noqa: ANN001 - splitup.runtime.Runner
    """Re-execute a task's steps from the transcript's inputs, KV cache carried from step to step."""
    from splitup.runtime import run_stateful

    task = runner.task
    state: dict[str, np.ndarray] | None = None
    mine: dict[int, dict[str, np.ndarray]] = {}
    for step, ins, _ in sealed.steps():
        outs, state = run_stateful(runner, ins, state)
        mine[step] = {k: v for k, v in outs.items() if k not in task.state.values()}
    return mine


@dataclass(frozen=True)
class Check:
    agree: bool
    reason: str
    result_hash: bytes  # commitment to the checker's own outputs, with the executor's salt


def check(runner, sealed: Sealed, tol: Tolerance = DEFAULT_TOLERANCE) -> Check:  # noqa: ANN001
    """Re-execute and compare every step with the tolerance rule of ``splitup.verify.compare``."""
    mine = replay(runner, sealed)
    asserted = {s: outs for s, _, outs in sealed.steps()}
    mine_t = Transcript()
    for step, ins, _ in sealed.steps():
        mine_t.add(step, ins, mine[step])
    result = commitment(mine_t.tensors(), sealed.salt)
    if set(asserted) != set(mine):
        return Check(False, "steps differ", result)
    for step in sorted(mine):
        logits = [n for n in mine[step] if n == "logits"]
        v = compare_outputs(asserted[step], mine[step], tol, logits=logits)
        if not v.match:
            return Check(False, f"step {step}: {v.reason}", result)
    return Check(True, f"{len(mine)} steps within tolerance", result)

