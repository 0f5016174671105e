"""The three parties of Proof of Sampling as plain classes over (Market, engine, blob store).

- ``Executor``: accepts a task on chain, runs (and records) its calls, uploads the transcript and
  commits ``transcript.commitment()`` before anyone knows whether the task will be checked.
- ``Validator``: takes up a sampled task on chain, fetches the transcript, checks that it opens the
  on-chain commitment, re-executes every call on its own engine with a fresh KV cache, applies the
  tolerance rule and submits its verdict.
- ``Arbiter``: the market authority; for a disputed task it checks the opening, asks further
  validators, and on tasks small enough lets ``onnx.reference`` (exact) decide; above that bound the
  majority of validators decides. Then ``arbitrate`` on chain.

The order, what is committed when, and why no party profits from cheating: docs/posp.md.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from splitup.market import Market, calls, seal_of
from splitup.market.errors import MarketError
from splitup.partition.task import PlanError, TaskDefinition, load_task
from splitup.runtime import Engine, EngineError, Runner, run_stateful
from splitup.storage import StorageError
from splitup.verify.blobs import Blobs, BundleSource
from splitup.verify.cheats import Behaviour, Cheat
from splitup.verify.commitment import commitment as commit_tensors
from splitup.verify.compare import CoarseClassRefused, Tolerance
from splitup.verify.digest import work_digest, work_tensors
from splitup.verify.errors import VerifyError
from splitup.verify.replay import ReferenceRunner, estimated_flops, judge, replay
from splitup.verify.transcript import DEFAULT_MAX_BYTES, BadTranscript, Transcript, boundary_outputs


class RoleError(VerifyError):
    """A role was asked to do something out of order (commit before accepting, call an unknown task)."""


ANNOUNCE_TAG = b"SPLITUP-ANNOUNCE-v1\x00"


@dataclass(frozen=True)
class Announcement:
    """What an executor publishes off chain with its commitment, signed with its node's owner key:
    where the transcript is, the fingerprints of its boundary outputs (the next node's cheap check), and
    the commitment's call tree: what each call handed on (``calls``) and the salted transcript hash
    (``body``), from which a receiver of its hand-offs opens the commitment at any call without the
    transcript (``splitup.market.calls``; ``opens`` checks them against the chain's commitment).

    The signature is what lets the arbiter blame the node for a transcript that is missing or does not
    open the commitment: nobody else can announce in the node's name.
    """

    job: str
    index: int
    task_id: str
    transcript_sha: str
    commitment: bytes
    fingerprints: dict[str, bytes] = field(default_factory=dict)
    signer: str = ""
    signature: bytes = b""
    calls: tuple[bytes, ...] = ()
    body: bytes = b""

    def opens(self, commitment: bytes) -> bool:
        """Whether ``calls`` and ``body`` are what ``commitment`` binds."""
        try:
            return calls.commitment(len(self.calls), calls.root(self.calls), self.body) == commitment
        except MarketError:  # no calls, or more than a commitment can hold
            return False

    def message(self) -> bytes:
        fp = hashlib.sha256()
        for name in sorted(self.fingerprints):
            raw = name.encode()
            fp.update(struct.pack("<I", len(raw)) + raw + struct.pack("<I", len(self.fingerprints[name])))
            fp.update(self.fingerprints[name])
        return (ANNOUNCE_TAG + bytes(Pubkey.from_string(self.job)) + struct.pack("<I", self.index)
                + bytes.fromhex(self.task_id) + bytes.fromhex(self.transcript_sha) + self.commitment + fp.digest()
                + hashlib.sha256(b"".join(self.calls)).digest() + self.body)

    def signed(self, owner: Keypair) -> Announcement:
        return replace(self, signer=str(owner.pubkey()), signature=bytes(owner.sign_message(self.message())))

    def signed_by(self, owner: Pubkey) -> bool:
        """Whether ``owner`` signed exactly this announcement."""
        if self.signer != str(owner) or len(self.signature) != 64:
            return False
        try:
            return Signature.from_bytes(self.signature).verify(owner, self.message())
        except ValueError:
            return False


def input_digest(feeds: Mapping[str, np.ndarray]) -> bytes:
    """sha256 over a call's feeds (names sorted, raw bytes): what a node receipts on chain."""
    h = hashlib.sha256()
    for name in sorted(feeds):
        h.update(name.encode() + b"\0" + np.ascontiguousarray(feeds[name]).tobytes())
    return h.digest()


def task_id_of(market: Market, job: Pubkey, index: int) -> str:
    info = market.job(job)
    if not 0 <= index < len(info.tasks):
        raise RoleError(f"job {job} has no task {index}")
    return bytes(market.model(info.header.model).tasks[index].task_id).hex()


class _Loaded:
    """Runners by task id, loaded once from verified bundles."""

    def __init__(self, engine: Engine, bundles: BundleSource) -> None:
        self.engine = engine
        self.bundles = bundles
        self._runners: dict[str, Runner] = {}

    def runner(self, task_id: str) -> Runner:
        if task_id not in self._runners:
            self._runners[task_id] = self.engine.load(self.bundles(task_id), task_id=task_id)
        return self._runners[task_id]


@dataclass
class _Work:
    task: TaskDefinition
    transcript: Transcript
    state: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


class Executor:
    """A node doing tasks. ``cheat`` (tests, demo) replaces the outputs it reports; honest when None."""

    def __init__(self, market: Market, owner: Keypair, engine: Engine, bundles: BundleSource, blobs: Blobs, *,
                 cheat: Cheat | None = None, max_transcript_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.market = market
        self.owner = owner
        self.blobs = blobs
        self.cheat = cheat
        self.max_transcript_bytes = max_transcript_bytes
        self._loaded = _Loaded(engine, bundles)
        self._work: dict[tuple[str, int], _Work] = {}

    @property
    def pubkey(self) -> Pubkey:
        return self.owner.pubkey()

    def accept(self, job: Pubkey, index: int) -> None:
        """Lock collateral for the task on chain and open an empty transcript (and KV cache) for it."""
        task_id = task_id_of(self.market, job, index)
        self.market.accept_task(self.owner, job, index)
        task = self._loaded.runner(task_id).task
        self._work[(str(job), index)] = _Work(task, Transcript(str(job), index, task_id,
                                                               max_bytes=self.max_transcript_bytes))

    def adopt(self, job: Pubkey, index: int) -> None:
        """Open the transcript of a task this node took over as a stand-in (the chain records it as the
        executor now); its work is recorded elsewhere and handed in with :meth:`record`."""
        task = self._loaded.runner(task_id_of(self.market, job, index)).task
        self._work[(str(job), index)] = _Work(task, Transcript(str(job), index, task.task_id,
                                                               max_bytes=self.max_transcript_bytes))

    def holds(self, job: Pubkey, index: int) -> bool:
        """Whether this executor has the task open (accepted or adopted, not yet committed)."""
        return (str(job), index) in self._work

    def _get(self, job: Pubkey, index: int) -> _Work:
        work = self._work.get((str(job), index))
        if work is None:
            raise RoleError(f"task {index} of job {job} was not accepted by this executor")
        return work

    def call(self, job: Pubkey, index: int, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call of the task (the KV cache stays here) and record it; returns the boundary outputs."""
        work = self._get(job, index)
        if not work.transcript.steps:
            # receipt the first input on chain: from here on not delivering is this node's fault, and
            # the client can no longer release the task (and its pay) from under it
            self.market.receive_input(self.owner, job, index, input_digest(feeds))
        runner = self._loaded.runner(work.transcript.task_id)
        start = time.perf_counter()
        outs, work.state = run_stateful(runner, feeds, work.state)
        work.seconds += time.perf_counter() - start
        names = {s.name for s in boundary_outputs(work.task)}
        reported = {k: v for k, v in outs.items() if k in names}
        if self.cheat is not None:
            reported = self.cheat(len(work.transcript.steps), feeds, reported)
        work.transcript.add(feeds, reported)
        return reported

    def record(self, job: Pubkey, index: int, transcript: Transcript,
               state: Mapping[str, np.ndarray] | None = None) -> None:
        """Use a transcript recorded elsewhere (the node daemon's session) instead of ``call``, with the
        cache its last step left (``commit`` re-runs the transcript for it when not given)."""
        work = self._get(job, index)
        transcript.check_against(work.task)
        if (transcript.job, transcript.index) != (str(job), index):
            raise RoleError("the transcript belongs to another (job, task)")
        work.transcript = transcript
        work.state = dict(state or {})

    def task(self, job: Pubkey, index: int) -> TaskDefinition:
        return self._get(job, index).task

    def seconds(self, job: Pubkey, index: int) -> float:
        return self._get(job, index).seconds

    def transcript(self, job: Pubkey, index: int) -> Transcript:
        return self._get(job, index).transcript

    def commit(self, job: Pubkey, index: int, keep: Callable[[Announcement], None] | None = None) -> Announcement:
        """Upload the transcript, then commit to it on chain, sealed with the digest of the work (the
        upload first: a commitment whose transcript cannot be fetched would lose any dispute).

        ``keep(announcement)`` hears the signed announcement before the commit is sent: a commit can land
        while its answer is lost (the ledger dies mid-send), and a node that cannot show the announcement
        of a result it committed looks like one hiding its work."""
        work = self._get(job, index)
        t = work.transcript
        sha = self.blobs.put(t.to_bytes())
        c = t.commitment()
        state = work.state
        if not state and work.task.state and t.steps:
            # recorded elsewhere (the node daemon's session): the cache is not here, so run it again
            state = replay(self._loaded.runner(t.task_id), t).state
        last = t.steps[-1].outputs if t.steps else {}
        ann = Announcement(str(job), index, t.task_id, sha, c, t.fingerprints(), calls=tuple(t.handoff_digests()),
                           body=t.body()).signed(self.owner)
        if keep is not None:
            keep(ann)
        self.market.commit_result(self.owner, job, index, c, seal_of(work_digest(c, work_tensors(state, last))))
        work.state.clear()  # the KV cache is no longer needed; the transcript is the record
        return ann

    def forget(self, job: Pubkey, index: int) -> None:
        """Drop what is kept for a committed task: the blob store holds its transcript from now on, and
        a long-running node must not keep every transcript it ever made."""
        self._work.pop((str(job), index), None)


@dataclass(frozen=True)
class Check:
    """A validator's opinion of one transcript, with what it cost."""

    agree: bool
    reason: str
    result_hash: bytes  # the work digest of the validator's own re-execution (random when it has none)
    seconds: float = 0.0
    flops: int = 0
    calls: int = 0


class Validator:
    """A node checking other nodes' tasks. ``behaviour`` (tests) makes it lazy or a liar; ``tol`` overrides
    the thresholds of the precision each task states (``compare.tolerance_for``)."""

    def __init__(self, market: Market, owner: Keypair, engine: Engine, bundles: BundleSource, blobs: Blobs, *,
                 behaviour: Behaviour = Behaviour.HONEST, tol: Tolerance | None = None,
                 max_transcript_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.market = market
        self.owner = owner
        self.blobs = blobs
        self.behaviour = behaviour
        self.tol = tol
        self.max_transcript_bytes = max_transcript_bytes
        self.engine_name = engine.name
        self._loaded = _Loaded(engine, bundles)

    @property
    def pubkey(self) -> Pubkey:
        return self.owner.pubkey()

    def check(self, ann: Announcement | None, committed: bytes, node_owner: Pubkey) -> Check:
        """The honest opinion, off chain: fetch, open, re-execute on a fresh cache, compare."""
        salt = secrets.token_bytes(32)
        t, problem = fetch_transcript(self.blobs, ann, committed, node_owner, self.max_transcript_bytes)
        if t is None:
            return Check(False, problem, commit_tensors({"rejected": np.zeros(1, np.uint8)}, salt))
        try:
            runner = self._loaded.runner(t.task_id)
            t.check_against(runner.task)
            replayed = replay(runner, t)
        except (BadTranscript, EngineError, PlanError, StorageError) as exc:
            return Check(False, f"cannot re-execute the transcript: {exc}",
                         commit_tensors({"rejected": np.zeros(1, np.uint8)}, salt))
        try:
            verdict = judge(t, replayed, self.tol, runner.task, arithmetic=runner.arithmetic)
        except CoarseClassRefused as exc:
            return Check(False, f"cannot judge the task: {exc}",
                         commit_tensors({"rejected": np.zeros(1, np.uint8)}, salt))
        last = replayed.outputs[-1] if replayed.outputs else {}
        if replayed.head:  # the replay ran the body alone: a headed task's logits are its head's on the same call
            last = last | replayed.head[-1]
        digest = work_digest(committed, work_tensors(replayed.state, last))
        return Check(verdict.match, verdict.reason, digest, replayed.seconds,
                     estimated_flops(runner.task, t), len(t.steps))

    def validate(self, job: Pubkey, index: int, ann: Announcement | None, *, assigned: bool = False) -> Check:
        """Take the sampled task up on chain, form an opinion (per ``behaviour``) and submit it.

        ``ann`` is the node's announcement; None (the node announced nothing) is a "disagree" the arbiter
        upholds unless the node produces a signed announcement that opens its commitment. ``assigned``:
        this validator took the task up already (its verdict did not land): check and submit again.
        """
        if not assigned:
            self.market.assign_validator(self.owner, job, index)
        slot = self.market.job(job).tasks[index]
        committed, node_owner = bytes(slot.commitment), self.market.node_at(slot.node).owner
        if self.behaviour is Behaviour.LAZY:
            # no re-execution, so no work digest: the agreement is unproved and earns no reward
            check = Check(True, "lazy: agreed without re-executing", secrets.token_bytes(32))
        elif self.behaviour is Behaviour.LIAR:
            check = Check(False, "liar: disagreed whatever the output", secrets.token_bytes(32))
        else:
            check = self.check(ann, committed, node_owner)
        self.market.submit_verdict(self.owner, job, index, check.agree, check.result_hash)
        return check


def fetch_transcript(blobs: Blobs, ann: Announcement | None, committed: bytes, node_owner: Pubkey,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Transcript | None, str]:
    """The announced transcript if the node signed the announcement, and the transcript can be fetched,
    parses, names this (job, task) and opens the on-chain commitment; otherwise None and why. Each
    failure is the node's fault: it must announce and keep its transcript available, and it committed
    to it."""
    if ann is None or not ann.signed_by(node_owner):
        return None, "no announcement signed by the task's node"
    try:
        t = Transcript.from_bytes(blobs.get(ann.transcript_sha, max_bytes), max_bytes=max_bytes)
    except (StorageError, BadTranscript) as exc:
        return None, f"transcript unavailable or malformed: {exc}"
    if (t.job, t.index, t.task_id) != (ann.job, ann.index, ann.task_id):
        return None, "transcript names another job or task"
    if t.commitment() != committed:
        return None, "transcript does not open the on-chain commitment"
    return t, ""


@dataclass(frozen=True)
class Ruling:
    node_honest: bool
    basis: str  # "opening", "reference" or "majority"
    reason: str
    opinions: tuple[tuple[str, bool], ...] = ()  # (validator, agree) of the further validators asked
    seconds: float = 0.0


class Arbiter:
    """The market authority. Exact ``onnx.reference`` decides tasks up to ``reference_max_flops``
    (estimated over the whole transcript); larger ones are decided by a majority of validators. ``tol``
    overrides the thresholds of the precision each task states."""

    def __init__(self, market: Market, authority: Keypair, bundles: BundleSource, blobs: Blobs, *,
                 reference_max_flops: int = 2_000_000_000, tol: Tolerance | None = None,
                 max_transcript_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.market = market
        self.authority = authority
        self.bundles = bundles
        self.blobs = blobs
        self.reference_max_flops = reference_max_flops
        self.tol = tol
        self.max_transcript_bytes = max_transcript_bytes

    def decide(self, job: Pubkey, index: int, ann: Announcement | None, others: Sequence[Validator] = ()) -> Ruling:
        """Judge a dispute (no chain write). ``ann``: the announcement the arbiter obtained from the node
        itself; ``others``: further validators, never the task's node, the client or the first
        validator; asked one by one."""
        info = self.market.job(job)
        slot = info.tasks[index]
        node_owner = self.market.node_at(slot.node).owner
        excluded = {node_owner, info.header.client, self.market.node_at(slot.validator).owner}
        start = time.perf_counter()
        t, problem = fetch_transcript(self.blobs, ann, bytes(slot.commitment), node_owner, self.max_transcript_bytes)
        if t is None:
            return Ruling(False, "opening", problem, seconds=time.perf_counter() - start)
        try:
            task = load_task(self.bundles(t.task_id))
            t.check_against(task)
        except (BadTranscript, PlanError, StorageError) as exc:
            return Ruling(False, "opening", f"transcript does not fit its task: {exc}",
                          seconds=time.perf_counter() - start)
        opinions: list[tuple[str, bool]] = []
        asked = [v for v in others if v.pubkey not in excluded]
        if estimated_flops(task, t) <= self.reference_max_flops:
            # one further opinion is recorded (cheap, and a second validator's stake backs it), but the
            # exact evaluator has the final word
            if asked:
                opinions.append((str(asked[0].pubkey), asked[0].check(ann, bytes(slot.commitment), node_owner).agree))
            try:
                exact = judge(t, replay(ReferenceRunner(self.bundles(t.task_id)), t), self.tol, task)
            except Exception as exc:  # noqa: BLE001 - onnx.reference raises untyped errors on ops it lacks
                reference_failed = f"onnx.reference could not run the task ({exc}); "
            else:
                return Ruling(exact.match, "reference", exact.reason or "matches onnx.reference", tuple(opinions),
                              time.perf_counter() - start)
        else:
            reference_failed = ""
        # Too large for (or not runnable by) the exact evaluator: the first validator said "disagree"; ask
        # others until one side has a strict majority. A tie when nobody is left keeps the node's result
        # (a false positive costs an honest node its stake, which the game counts against honesty).
        disagree = 1
        for v in asked[len(opinions):]:
            agree = v.check(ann, bytes(slot.commitment), node_owner).agree
            opinions.append((str(v.pubkey), agree))
            agrees = sum(a for _, a in opinions)
            disagree = 1 + len(opinions) - agrees
            if len(opinions) >= 2 and agrees != disagree:
                break
        agrees = sum(a for _, a in opinions)
        disagree = 1 + len(opinions) - agrees
        return Ruling(agrees >= disagree, "majority", f"{reference_failed}{agrees} agree, {disagree} disagree",
                      tuple(opinions), time.perf_counter() - start)

    def arbitrate(self, job: Pubkey, index: int, ann: Announcement | None, others: Sequence[Validator] = ()) -> Ruling:
        ruling = self.decide(job, index, ann, others)
        self.market.arbitrate(self.authority, job, index, ruling.node_honest)
        return ruling
