"""What a node records for one (job, task): every call's boundary inputs and outputs, and the commitment.

A generation job calls a task many times (a prefill, then one call per token) while the node keeps the
task's KV cache. A validator needs exactly what crossed the node's boundary to re-execute it on its own
engine with a fresh cache: the inputs each call received and the outputs it returned. KV-cache tensors
that the node holds itself are *not* recorded: they are a function of the recorded inputs, and any
error in them shows up in a later call's outputs.

Serialized as safetensors (no pickle, mmap-able), tensors named

    step{i}.in.{name}     an input of call i (as received; a cache the caller supplied counts as input)
    step{i}.out.{name}    an output of call i that left the node (task outputs minus KV-cache state)
    step{i}.fwd.{name}    a tensor call i sent on that is neither its input nor its output: relayed from
                          upstream, or the KV cache a call without a session hands back to its caller

and string metadata ``format``, ``version``, ``job`` (base58), ``index``, ``task_id``, ``steps``, ``salt``
(hex), ``decoding`` (JSON of :class:`splitup.decoding.Decoding`: the job's token rule, which the
validator applies to logits; greedy when absent), ``arithmetic`` (``fp16`` when the executor's engine
computed in half precision, which the task must allow; float32 when absent) and ``handoff`` (JSON, one entry per call: what it sent
on, ``[names, names cut to their last position]``, or null: its outputs as recorded).

The commitment the node puts on chain (docs/posp.md "Commitment") is the call tree of
``splitup.market.calls`` over each call's hand-off digest (``handoff_digest`` of exactly the tensors it
sent, rebuilt here from the record) and the body ``commitment(all transcript tensors, salt)``: inputs are
committed with the outputs, so the node cannot later claim inputs that happen to fit wrong outputs, and
each call's hand-off is bound, so a receiver can prove what one call sent against it. The salt travels
inside the uploaded transcript (see docs/posp.md "The protocol, step by step" for why publishing it with
the upload is safe).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from splitup import jsonparse
from splitup.decoding import GREEDY, Decoding, DecodingError
from splitup.market import calls
from splitup.market.constants import MAX_CALLS
from splitup.partition.task import TaskDefinition
from splitup.runtime.interface import InterfaceError, check_feeds
from splitup.verify.commitment import MAX_SALT, MIN_SALT, handoff_digest
from splitup.verify.commitment import commitment as commit_tensors
from splitup.verify.errors import VerifyError
from splitup.verify.fingerprint import fingerprint

FORMAT = "splitup.transcript"
VERSION = 2  # 2: the call tree (hand-offs bound per call) and relayed tensors
SALT_BYTES = 32
# A long generation is thousands of calls; beyond that a job should be split, and the blob stays bounded.
MAX_STEPS = MAX_CALLS  # the call tree the program opens is at most this wide
DEFAULT_MAX_BYTES = 256 << 20
FINGERPRINT_K = 64
_NAME = re.compile(r"step(0|[1-9][0-9]{0,5})\.(in|out|fwd)\.(.+)")


class BadTranscript(VerifyError):
    """A transcript that does not parse, breaks a limit, or does not fit its task's interface."""


@dataclass(frozen=True)
class Sent:
    """What a call sent on: ``names`` (its outputs, else inputs or relayed tensors, by name), those in
    ``last`` cut to their last position on axis 1 (``splitup.node.wire.Hop``)."""

    names: tuple[str, ...]
    last: tuple[str, ...] = ()

    def to_json(self) -> list[list[str]]:
        return [list(self.names), list(self.last)]

    @staticmethod
    def from_json(d: object) -> Sent:
        if not (isinstance(d, list) and len(d) == 2 and all(isinstance(x, list) for x in d)
                and all(isinstance(n, str) for x in d for n in x)):
            raise BadTranscript(f"malformed hand-off entry {str(d)[:80]!r}")
        return Sent(tuple(d[0]), tuple(d[1]))


@dataclass
class Step:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    relayed: dict[str, np.ndarray] = field(default_factory=dict)
    sent: Sent | None = None  # None: the call handed on its outputs as recorded

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in (*self.inputs.values(), *self.outputs.values(), *self.relayed.values()))

    def handoff(self) -> dict[str, np.ndarray]:
        """The tensors this call sent on, rebuilt from the record (``Node.compute``'s ``sent``)."""
        if self.sent is None:
            return dict(self.outputs)
        out = {}
        for name in self.sent.names:
            value = self.outputs.get(name, self.inputs.get(name, self.relayed.get(name)))
            if value is None:
                raise BadTranscript(f"call sent {name!r}, which it neither received nor computed")
            out[name] = value[:, -1:] if name in self.sent.last and value.ndim >= 2 else value
        return out


@dataclass
class Transcript:
    job: str
    index: int
    task_id: str
    salt: bytes = field(default_factory=lambda: secrets.token_bytes(SALT_BYTES))
    steps: list[Step] = field(default_factory=list)
    max_bytes: int = DEFAULT_MAX_BYTES
    decoding: Decoding = GREEDY
    # What the executor's engine computed in ("fp32", or "fp16" where the task allows half precision and
    # the engine has the kernels): the class it is judged under follows it (compare.judged_class).
    arithmetic: str = "fp32"

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.steps)

    def add(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
            relayed: Mapping[str, np.ndarray] | None = None, sent: Sent | None = None) -> None:
        """Record one call; copies, so later in-place edits by the caller cannot change the record."""
        step = Step({k: np.array(v) for k, v in inputs.items()}, {k: np.array(v) for k, v in outputs.items()},
                    {k: np.array(v) for k, v in (relayed or {}).items()}, sent)
        if not step.outputs:
            raise BadTranscript("a call must have at least one output")
        if len(self.steps) >= MAX_STEPS:
            raise BadTranscript(f"more than {MAX_STEPS} calls in one task")
        if self.nbytes + step.nbytes > self.max_bytes:
            raise BadTranscript(f"transcript would exceed {self.max_bytes} bytes")
        self.steps.append(step)

    def tensors(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, s in enumerate(self.steps):
            out.update({f"step{i}.in.{k}": v for k, v in s.inputs.items()})
            out.update({f"step{i}.out.{k}": v for k, v in s.outputs.items()})
            out.update({f"step{i}.fwd.{k}": v for k, v in s.relayed.items()})
        return out

    def handoff_digests(self) -> list[bytes]:
        """What each call handed on, as its sender signs it (``handoff_digest``)."""
        return [handoff_digest(s.handoff()) for s in self.steps]

    def body(self) -> bytes:
        """``commitment(every transcript tensor, salt)``: the salted hash under the call tree."""
        if not self.steps:
            raise BadTranscript("nothing recorded")
        return commit_tensors(self.tensors(), self.salt)

    def commitment(self) -> bytes:
        """The 32 bytes the node commits on chain: the call tree over the hand-off digests and the body."""
        body = self.body()
        return calls.commitment(len(self.steps), calls.root(self.handoff_digests()), body)

    def opening(self, call: int) -> calls.Opening:
        """Opens the commitment at ``call`` (for ``Market.prove_handoff``)."""
        return calls.opening(self.handoff_digests(), self.body(), call)

    def fingerprints(self, k: int = FINGERPRINT_K) -> dict[str, bytes]:
        """TOPLOC-style fingerprints of every float boundary output, by transcript name: the next node
        (or anyone holding a copy of a tensor) checks it against these few hundred bytes."""
        return {f"step{i}.out.{n}": fingerprint(v, k) for i, s in enumerate(self.steps)
                for n, v in s.outputs.items() if v.dtype.kind == "f" and v.size}

    def to_bytes(self) -> bytes:
        meta = {"format": FORMAT, "version": str(VERSION), "job": self.job, "index": str(self.index),
                "task_id": self.task_id, "steps": str(len(self.steps)), "salt": self.salt.hex()}
        if self.decoding != GREEDY:
            meta["decoding"] = json.dumps(self.decoding.to_json(), sort_keys=True)
        if any(s.sent is not None for s in self.steps):
            meta["handoff"] = json.dumps([None if s.sent is None else s.sent.to_json() for s in self.steps],
                                         separators=(",", ":"))
        if self.arithmetic != "fp32":
            meta["arithmetic"] = self.arithmetic
        return st_save({k: np.ascontiguousarray(v) for k, v in self.tensors().items()}, metadata=meta)

    @staticmethod
    def from_bytes(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Transcript:
        """Parse and check structure; ``check_against`` then checks the tensors against the task."""
        if len(data) > max_bytes:
            raise BadTranscript(f"transcript of {len(data)} bytes exceeds {max_bytes}")
        meta = _metadata(data)
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise BadTranscript(f"not a version {VERSION} SplitUp transcript")
        try:
            index, count = int(meta["index"]), int(meta["steps"])
            salt = bytes.fromhex(meta["salt"])
            job, task_id = meta["job"], meta["task_id"]
            decoding = Decoding.from_json(jsonparse.loads(meta["decoding"])) if "decoding" in meta else GREEDY
            sent = jsonparse.loads(meta["handoff"]) if "handoff" in meta else [None] * count
            arithmetic = meta.get("arithmetic", "fp32")
            if arithmetic not in ("fp32", "fp16"):
                raise ValueError(f"arithmetic {arithmetic!r} is not fp32 or fp16")
        except (KeyError, ValueError, TypeError, DecodingError) as exc:
            raise BadTranscript(f"transcript metadata is malformed: {exc}") from None
        if not 1 <= count <= MAX_STEPS:
            raise BadTranscript(f"{count} steps (1 to {MAX_STEPS} allowed)")
        if not MIN_SALT <= len(salt) <= MAX_SALT:
            raise BadTranscript(f"salt of {len(salt)} bytes ({MIN_SALT} to {MAX_SALT} allowed)")
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError) as exc:
            raise BadTranscript(f"transcript tensors do not parse: {exc}") from None
        if not isinstance(sent, list) or len(sent) != count:
            raise BadTranscript(f"the hand-off list must have one entry per call ({count})")
        steps = [Step({}, {}, {}, None if d is None else Sent.from_json(d)) for d in sent]
        for name, value in tensors.items():
            m = _NAME.fullmatch(name)
            if m is None or int(m.group(1)) >= count:
                raise BadTranscript(f"unexpected tensor {name!r} in a {count}-step transcript")
            step = steps[int(m.group(1))]
            side = {"in": step.inputs, "out": step.outputs, "fwd": step.relayed}[m.group(2)]
            side[m.group(3)] = value
        if any(not s.outputs for s in steps):
            raise BadTranscript("a recorded call has no outputs")
        return Transcript(job, index, task_id, salt, steps, max_bytes, decoding, arithmetic)

    def check_against(self, task: TaskDefinition) -> None:
        """Every call's inputs fit the task's interface and its outputs are exactly the boundary outputs."""
        if self.task_id != task.task_id:
            raise BadTranscript(f"transcript is of task {self.task_id[:12]}, expected {task.task_id[:12]}")
        wanted = {s.name: s.dtype for s in boundary_outputs(task)}
        for i, s in enumerate(self.steps):
            try:
                check_feeds(task, s.inputs)
            except InterfaceError as exc:
                raise BadTranscript(f"call {i}: {exc}") from None
            got = {n: str(v.dtype) for n, v in s.outputs.items()}
            if got != wanted:
                raise BadTranscript(f"call {i}: outputs {sorted(got.items())}, task declares {sorted(wanted.items())}")


def boundary_outputs(task: TaskDefinition) -> list:
    """The outputs that leave the node: all but the KV-cache state it keeps for the next call."""
    held = set(task.state.values())
    return [s for s in task.outputs if s.name not in held]


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors: u64 header length, then a JSON header whose "__metadata__" holds string pairs.
    if len(data) < 8:
        raise BadTranscript("truncated transcript")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, 100 << 20):
        raise BadTranscript("transcript header length is out of range")
    try:
        header = jsonparse.loads(data[8 : 8 + n])
        meta = header.get("__metadata__", {})
    except (ValueError, AttributeError) as exc:
        raise BadTranscript(f"transcript header is not JSON: {exc}") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadTranscript("transcript metadata must be string pairs")
    return meta
