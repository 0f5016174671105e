"""The node operator's side of the market, running inside the node process next to the node daemon.

``MarketAgent`` acts for one staked node with the Proof-of-Sampling roles of ``splitup.verify.roles``:
as an ``Executor`` it accepts open tasks the node holds, turns the hops the node computed for a job (a
:class:`RecordingNode` keeps them) into the task's transcript when the client says the compute is done,
uploads it to the blob store, publishes its signed announcement there (under the owner's key, before the
commit: ``fetch_announcement``), commits it on chain and serves the announcement itself too; as a
``Validator`` it takes up tasks of other nodes that the chain's sampling drew, re-executes them and
votes. ``DisputeJudge`` runs the market authority's ``Arbiter`` over disputed tasks.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup import jsonparse
from splitup.decoding import GREEDY, Decoding, DecodingError
from splitup.market.accounts import node_endpoint
from splitup.market.constants import TaskStatus
from splitup.market.errors import MarketError
from splitup.market.evidence import RECEIPT, Signed
from splitup.market.market import Market
from splitup.node.bounded import CONTROL_BYTES, bounded
from splitup.node.handoffs import Handoffs, HandoffStore
from splitup.node.node import HopRecord, Node, NodeConfig, NotHere
from splitup.node.wire import DECODING_META, Envelope, Hop, WireError
from splitup.runtime import Runner
from splitup.storage import StorageError, fetch_task
from splitup.verify.blobs import BundleSource, HttpBlobs, Records, Store
from splitup.verify.cheats import Cheat
from splitup.verify.commitment import handoff_digest
from splitup.verify.roles import Announcement, Arbiter, Executor, Validator, input_digest
from splitup.verify.transcript import SALT_BYTES, Sent, Step, Transcript

log = logging.getLogger("splitup.agent")
REPLAY_SUFFIX = ".replay"  # splitup.client.pipeline re-prefills a stand-in under this job id


class Sealed(NotHere):
    """A hop of a task this node has committed for the job: a call after the commitment could never be
    opened against it, so it is refused (the client moves the task to another holder)."""


@dataclass
class _Call:
    """One recorded call: the transcript step, the session it ran in, and the digest of its signed
    hand-off (once signed, the call is what this node committed to send: never recorded over)."""

    step: Step
    session: str | None
    signed: bytes | None = None


class RecordingNode(Node):
    """A node that keeps, per (job, task), the inputs and outputs of every step it computed, and what each
    step sent on; with ``sign_handoff`` set (its market agent) it signs each call's hand-off.

    ``cheat`` (``splitup.verify.cheats``; the demo's ``--cheat``) makes it a dishonest node: what it
    forwards and records are the cheat's outputs, as a real cheater's would be.
    """

    def __init__(self, config: NodeConfig, *, cheat: Cheat | None = None) -> None:
        super().__init__(config, on_hop=self._on_hop)
        self.cheat = cheat
        self._local = threading.local()
        self._lock = threading.Lock()
        self.steps: dict[tuple[str, str], dict[int, _Call]] = {}
        self.last_hop: dict[tuple[str, str], float] = {}
        self.first_inputs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        # The token rule the client sent with the job's hops (greedy when it sent none).
        self.decodings: dict[tuple[str, str], Decoding] = {}
        # One salt per (job, task) for every transcript made of it: a commit retried while the first is in
        # flight commits to the same transcript, so whichever lands, the kept announcement opens it.
        self.salts: dict[tuple[str, str], bytes] = {}
        # the cache after the latest step, per (job, task): what the work digest is taken over
        self.state: dict[tuple[str, str], tuple[int, dict[str, np.ndarray]]] = {}
        # task ids committed per job: their transcript is sealed, no call may be added
        self.sealed: dict[str, set[str]] = {}
        # (job, task id, call, digest) -> the signed hand-off's wire form, or None outside the market
        self.sign_handoff: Callable[[str, str, int, bytes], dict[str, Any] | None] | None = None

    def computed(self, job: str, task_id: str) -> bool:
        with self._lock:
            return bool(self.steps.get((job, task_id)))

    def hop(self, env: Envelope, tensors: Mapping[str, np.ndarray],
            handoff: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """What the call sent on is rebuilt from its record, so the signed digest is the one committed for
        the call; a retried call sends (and signs) what it sent the first time."""
        sent, _ = super().hop(env, tensors, handoff)
        where = getattr(self._local, "recorded", None)
        self._local.recorded = None
        if where is None or self.sign_handoff is None:
            return sent, None
        key, index = where
        with self._lock:
            call = self.steps[key][index]
        sent = call.step.handoff()
        digest = handoff_digest(sent)
        signed = self.sign_handoff(key[0], key[1], index, digest)
        if signed is not None:
            call.signed = digest
        return sent, signed

    def compute(self, env: Envelope, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._local.inputs, self._local.reported = tensors, None
        self._local.hop, self._local.recorded = env.current, None
        self._local.decoding = _decoding(env.meta)
        # A re-prefill after a node failure runs through temporary sessions on the tasks before the one
        # being restored: that is not those tasks' work for the job, and must not overwrite its steps.
        self._local.passing = env.job.endswith(REPLAY_SUFFIX) and env.hop != len(env.route) - 1
        try:
            sent = super().compute(env, tensors)
            reported = self._local.reported
            if self.cheat is not None and reported is not None:
                sent = {k: reported.get(k, v) for k, v in sent.items()}
            return sent
        finally:
            self._local.inputs = self._local.reported = None
            self._local.passing = False

    def _on_hop(self, rec: HopRecord) -> None:
        if getattr(self._local, "passing", False):
            return
        task = self.runners[rec.task_id].task
        names = {s.name for s in task.inputs if s.name not in task.state}
        given = getattr(self._local, "inputs", None) or {}
        hop: Hop | None = getattr(self._local, "hop", None)
        ins = {k: np.array(v) for k, v in given.items() if k in names}
        outs = {k: np.array(v) for k, v in rec.outputs.items() if k not in task.state.values()}
        job = rec.job.removesuffix(REPLAY_SUFFIX)
        with self._lock:
            if rec.task_id in self.sealed.get(job, ()):
                raise Sealed(f"this node committed task {rec.task_id[:12]} of job {job}: it takes no more calls")
            steps = self.steps.setdefault((job, rec.task_id), {})
            if not steps and not rec.job.endswith(REPLAY_SUFFIX):
                self.first_inputs[(job, rec.task_id)] = ins  # the agent receipts them on chain
            if self.cheat is not None:
                outs = self.cheat(len(steps), ins, outs)
                self._local.reported = outs
            step = rec.step if rec.step is not None else len(steps)
            earlier = steps.get(step)
            if earlier is not None and earlier.signed is not None:
                # A signed call is final: a retry in its session sends it again; anything else recording over
                # it (a re-prefill in a new session) is refused, and the client moves the task elsewhere.
                if earlier.session != rec.session or rec.job.endswith(REPLAY_SUFFIX):
                    raise Sealed(f"call {step} of task {rec.task_id[:12]} of job {job} was handed on under this "
                                 "node's signature; it cannot be recorded again")
            else:
                # A repeated unsigned step (a client retry) replaces the earlier one: steps are idempotent.
                # what it sends on beyond its recorded inputs and outputs: tensors it relays, and the cache a
                # call without a session hands back to its caller
                available = {**given, **rec.outputs}
                relayed = {k: np.array(available[k]) for k in (hop.send if hop else ())
                           if k in available and k not in ins and k not in outs}
                sent = Sent(tuple(hop.send), tuple(hop.last)) if hop is not None else None
                steps[step] = _Call(Step(ins, outs, relayed, sent), rec.session)
            self._local.recorded = ((job, rec.task_id), step)
            self.last_hop[(job, rec.task_id)] = time.monotonic()
            decoding = getattr(self._local, "decoding", None)
            if decoding is not None:
                self.decodings[(job, rec.task_id)] = decoding
            if task.state and step >= self.state.get((job, rec.task_id), (-1, {}))[0]:
                self.state[(job, rec.task_id)] = (step, {past: rec.outputs[present]
                                                         for past, present in task.state.items()
                                                         if present in rec.outputs})

    def final_state(self, job: str, task_id: str) -> dict[str, np.ndarray]:
        """The task's cache after its last step (empty for a stateless task)."""
        with self._lock:
            return dict(self.state.get((job, task_id), (0, {}))[1])

    def transcript(self, job: str, index: int, task_id: str) -> Transcript:
        """Everything computed for (job, task) as a ``splitup.verify`` transcript. Kept here until
        :meth:`forget`: a commit can fail (the ledger away), and a node that dropped its record of the work
        before the commit landed would next give the task up as never fed, with the liveness penalty. The
        task is sealed for the job from now on: a later call could not be opened against the commitment."""
        with self._lock:
            steps = dict(self.steps.get((job, task_id), {}))
            decoding = self.decodings.get((job, task_id), GREEDY)
            salt = self.salts.setdefault((job, task_id), secrets.token_bytes(SALT_BYTES))
            self.sealed.setdefault(job, set()).add(task_id)
        if sorted(steps) != list(range(len(steps))):
            # the call indices it signed are the transcript's positions: a gap would shift every later one
            raise MarketError(f"task {task_id[:12]} of job {job}: calls {sorted(steps)[:8]}... are not 0..n-1")
        runner = self.runners.get(task_id)
        t = Transcript(job, index, task_id, salt, decoding=decoding, arithmetic=getattr(runner, "arithmetic", "fp32"))
        for _, call in sorted(steps.items()):
            t.add(call.step.inputs, call.step.outputs, call.step.relayed, call.step.sent)
        return t

    def forget(self, job: str, task_id: str) -> None:
        """Drop the record of (job, task): its commitment is on chain and its transcript in the store."""
        with self._lock:
            for table in (self.steps, self.last_hop, self.first_inputs, self.decodings, self.state, self.salts):
                table.pop((job, task_id), None)

    def forget_sealed(self, open_jobs: set[str]) -> None:
        """Drop the seals of closed jobs."""
        with self._lock:
            for job in [j for j in self.sealed if j not in open_jobs]:
                del self.sealed[job]


def _decoding(meta: Mapping[str, str]) -> Decoding | None:
    """The client's token rule from a hop's envelope; refused (4xx) when malformed, not silently dropped."""
    if DECODING_META not in meta:
        return None
    try:
        return Decoding.from_json(jsonparse.loads(meta[DECODING_META]))
    except (ValueError, TypeError, DecodingError) as exc:
        raise WireError(f"malformed decoding rule in the envelope: {exc}") from None


class NodeRunners:
    """The node's loaded tasks, offered to the roles as their engine: no second copy of the weights."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.engine.name

    def load(self, directory: Path, *, task_id: str | None = None, limits: Any = None) -> Runner:
        if task_id is not None and task_id in self.node.runners:
            return self.node.runners[task_id]
        return self.node.load_bundle(Path(directory), task_id)


def node_bundles(node: Node, store_url: str) -> BundleSource:
    def source(task_id: str) -> Path:
        return fetch_task(task_id, store_url, node.config.cache_dir)

    return source


def announcement_json(a: Announcement) -> dict[str, Any]:
    return {"job": a.job, "index": a.index, "task_id": a.task_id, "transcript_sha": a.transcript_sha,
            "commitment": a.commitment.hex(), "fingerprints": {k: v.hex() for k, v in a.fingerprints.items()},
            "signer": a.signer, "signature": a.signature.hex(), "calls": b"".join(a.calls).hex(),
            "body": a.body.hex()}


def announcement_from(d: Any) -> Announcement | None:
    """Parse an announcement; its signature is checked by whoever relies on it (the roles do)."""
    try:
        packed = bytes.fromhex(d.get("calls", ""))
        if len(packed) % 32:
            return None
        return Announcement(str(d["job"]), int(d["index"]), str(d["task_id"]), str(d["transcript_sha"]),
                            bytes.fromhex(d["commitment"]), {str(k): bytes.fromhex(v) for k, v in d["fingerprints"].items()},
                            str(d["signer"]), bytes.fromhex(d["signature"]),
                            tuple(packed[i : i + 32] for i in range(0, len(packed), 32)), bytes.fromhex(d.get("body", "")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class NodeUnreachable(MarketError):
    """Neither the market's store nor the executor could be asked for its announcement (down, restarting,
    overloaded): no evidence either way, so nobody may be judged on it yet."""


def announcement_topic(job: str | Pubkey, index: int) -> str:
    """Where an executor publishes its announcement of task ``index`` of ``job`` in the store, under its
    owner's key (``splitup.storage.records``)."""
    return f"announcement/{job}/{int(index)}"


def _announcement_bytes(ann: Announcement) -> bytes:
    return json.dumps(announcement_json(ann), separators=(",", ":"), sort_keys=True).encode()


def fetch_announcement(market: Market, job: Pubkey, index: int, timeout: float = 30.0, *,
                       store: Records) -> Announcement | None:
    """The executor's signed announcement of a committed task: the market's copy in the store first, else
    the executor's own word from the endpoint its node registered.

    An executor publishes its announcement in the store, under its owner's key, before it sends its
    commit (``MarketAgent.commit``), so the store's answer does not depend on the executor cooperating.
    A record there counts only when it parses, is signed by the node's owner, names this job and task
    and opens the on-chain commitment; one that fails any of that is ignored (it proves nothing either
    way) and the node is asked, as when the store has none (404):

    - the node answers with an announcement: that (the roles check it); it answers that it announced
      nothing (404) or with something that is not an announcement: None, its own word;
    - the node cannot be asked (down, 5xx, too slow): None as well when the store answered, for the
      node committed without publishing, and will not show it: the fault is the node's; but
      :class:`NodeUnreachable` when the store could not be asked either, for the market's own outage is
      not evidence against anyone.

    Each of the two questions is given up after ``timeout`` seconds."""
    slot = market.job(job).tasks[index]
    node = market.node_at(slot.node)
    owner, committed = node.owner, bytes(slot.commitment)
    topic = announcement_topic(job, index)
    store_down: str | None = None
    try:
        record = store.get_record(str(owner), topic, timeout=timeout)
    except StorageError as exc:  # StoreUnavailable, or an answer that is neither a record nor a 404
        store_down = f"{type(exc).__name__}: {exc}"
    else:
        if record is not None:
            ann = None
            if record.valid():
                try:
                    ann = announcement_from(jsonparse.loads(record.body))
                except ValueError:
                    ann = None
            if (ann is not None and ann.signed_by(owner) and (ann.job, ann.index) == (str(job), index)
                    and ann.opens(committed)):
                return ann
            log.info("ignoring the store's record %s of %s: not a signed announcement opening the commitment",
                     topic, owner)
    url = node_endpoint(node).rstrip("/")
    away = None
    try:
        # within ``timeout`` in all: an executor trickling its answer must not hold a validator past its window
        with httpx.Client() as http:
            r = bounded(http, "GET", f"{url}/market/jobs/{job}/tasks/{index}/announcement", timeout,
                        max_bytes=CONTROL_BYTES)
    except httpx.HTTPError as exc:
        away = f"announcement of {job} #{index} from {url!r}: {type(exc).__name__}: {exc}"
    else:
        if r.status_code >= 500:
            away = f"announcement of {job} #{index} from {url!r}: HTTP {r.status_code}"
    if away is not None:
        if store_down is not None:
            raise NodeUnreachable(f"{away}; and the store: {store_down}") from None
        log.info("%s, and nothing valid published in the store: the node's fault", away)
        return None
    if r.status_code != 200:
        return None
    try:
        return announcement_from(jsonparse.loads(r.content))
    except ValueError:
        return None


class WorkedTasks:
    """The (job, task index) pairs this node has signed a statement for (a receipt, a hand-off), kept on
    disk across restarts. Such a task is never accepted again: statements carry the job and task
    index, not the acceptance, so after the task reopened a client could hold the first turn's statements
    against the second turn's commitment (a hand-off that differs from the new transcript: a slash for an
    honest node)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._known: set[tuple[str, int]] = set()
        for f in directory.glob("*-*") if directory.is_dir() else ():
            job, _, index = f.name.rpartition("-")
            if index.isdigit():
                self._known.add((job, int(index)))
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._known

    def add(self, job: str, index: int) -> None:
        """Written down before the statement leaves the node (on the hop path: a file once per task)."""
        key = (job, int(index))
        if key in self._known:
            return
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{job}-{int(index)}").touch()
            self._known.add(key)

    def forget_closed(self, open_jobs: set[str]) -> None:
        """A closed job's address is never posted again (the program's nonce rule): its marks can go."""
        with self._lock:
            for job, index in [k for k in self._known if k[0] not in open_jobs]:
                (self.dir / f"{job}-{index}").unlink(missing_ok=True)
                self._known.discard((job, index))


class MarketAgent:
    def __init__(self, market: Market, owner: Keypair, node: RecordingNode, store_url: str, *,
                 blobs: Store | None = None, poll_s: float = 0.25, validate: bool = True,
                 primary: set[str] | None = None, standby_s: float = 3.0, idle_commit_s: float = 60.0,
                 idle_release_s: float = 60.0) -> None:
        self.market, self.owner, self.node = market, owner, node
        self.address = market.node_address(owner.pubkey())
        # transcripts, and the announcements the agent publishes before it commits
        blobs = blobs or HttpBlobs(store_url)
        self.store: Store = blobs
        engine, bundles = NodeRunners(node), node_bundles(node, store_url)
        self.executor = Executor(market, owner, engine, bundles, blobs)  # type: ignore[arg-type]
        self.validator = Validator(market, owner, engine, bundles, blobs)  # type: ignore[arg-type]
        self.poll_s = poll_s
        self.validate = validate
        # Tasks held as a stand-in (not primary) are taken only when nobody else took them in standby_s.
        self.primary = primary
        self.standby_s = standby_s
        # A client that vanishes never says "commit"; the node commits on its own after this much silence
        # rather than be slashed for missing its deadline.
        self.idle_commit_s = idle_commit_s
        # A task accepted but never fed (the client died before reaching it) is released, unslashed,
        # after this long, so the node's collateral is not held until the job's deadline.
        self.idle_release_s = idle_release_s
        self._accepted_at: dict[tuple[str, int], float] = {}
        self.orphan_grace_s = 15.0
        self._receipted: set[tuple[str, int]] = set()
        # the signed receipt of each task's first input, by (job, index), and which accepted task a hop's
        # (job, task id) is: node.hop_evidence hands the receipt back to the client with the hop
        self._receipts: dict[tuple[str, int], dict[str, Any]] = {}
        self._released: dict[tuple[str, int], Pubkey] = {}
        self._index_of: dict[tuple[str, str], int] = {}
        node.hop_evidence = self.hop_receipt
        # each open job's task indices by task id, for hops of tasks this node did not accept (a stand-in's),
        # learned by the tick; and each model's task ids
        self._model_index: dict[str, dict[str, int]] = {}
        self._model_tasks: dict[str, list[str]] = {}
        self.handoffs = Handoffs(market, owner, HandoffStore(Path(node.config.cache_dir) / "handoffs.sqlite"),
                                 self._task_index)
        self.worked = WorkedTasks(Path(node.config.cache_dir) / "worked")
        node.sign_handoff = self._sign_handoff
        node.handoff_check = self.handoffs.check
        self.accepted: dict[tuple[str, int], Pubkey] = {}
        self.accepting = True  # False while the node drains: it finishes what it took and takes nothing new
        self.announced: dict[tuple[str, int], Announcement] = {}
        self.stats = {"accepted": 0, "committed": 0, "released": 0, "validated": 0, "disagreed": 0, "errors": 0}
        self.last_error = ""
        self._first_seen: dict[tuple[str, int], float] = {}
        self._orphan_seen: dict[tuple[str, int], float] = {}
        self._looked = 0.0  # when the current look at the chain fetched its snapshot (monotonic)
        self._busy: set[tuple[str, int]] = set()
        self._fetched: dict[tuple[str, int], Announcement | None] = {}  # executors' announcements, to validate
        self._commit_lock = threading.RLock()  # finish -> commit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="splitup-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the chain or a peer misbehaving must not stop the node
                self._error(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)

    def _error(self, text: str) -> None:
        self.stats["errors"] += 1
        self.last_error = text
        log.warning("agent: %s", text)

    # --- one look at the chain ----------------------------------------------------------------------------
    def tick(self) -> None:
        self._receipt_inputs()
        me = self.owner.pubkey()
        held = set(self.node.runners)
        # What the agent learns while this look runs (a takeover landing, a commit) is newer than the
        # snapshot: nothing it holds is dropped on the snapshot's word alone (``_stale``).
        self._looked = time.monotonic()
        jobs = self.market.jobs()
        self._learn_tasks(jobs)
        slot = self.market.t.slot()
        by_name = {str(job): info for job, info in jobs}
        self._commit_idle(by_name, slot)
        # (a short timeout: the tick must not stall on a sender that does not answer, its own commits wait)
        self.handoffs.prove(by_name, slot,
                            lambda job, index: fetch_announcement(self.market, job, index, 3.0, store=self.store))
        self._forget_closed(set(by_name))
        for job, info in jobs:
            if info.header.client == me:
                continue  # a node may not work on its own job
            model = None
            for i, t in enumerate(info.tasks):
                if t.status == TaskStatus.ACCEPTED and t.node == self.address and (str(job), i) in self._released:
                    if slot > t.deadline:  # the client's window to show a receipt is over: free the collateral
                        self._expire_released(job, i)
                    continue
                if t.status == TaskStatus.ACCEPTED and t.node == self.address and (str(job), i) not in self.accepted:
                    # Lost with a restart. Not at once: the client may be handing it to a stand-in, and a
                    # snapshot taken before a commit or takeover landed says so for a moment. The grace
                    # counts from the first look that found it orphaned, not from when the job was seen.
                    key = (str(job), i)
                    if key in self.announced or self._stale(key):
                        continue
                    seen = self._orphan_seen.setdefault(key, time.monotonic())
                    if time.monotonic() - seen > self.orphan_grace_s:
                        self._orphan(job, i)
                    continue
                self._orphan_seen.pop((str(job), i), None)
                # A check this node took up but whose verdict did not land (the ledger was down) is taken
                # again: a validator that stays silent past its window is slashed.
                mine = t.status == TaskStatus.VALIDATING and t.validator == self.address
                if t.status != TaskStatus.OPEN and not ((t.status == TaskStatus.SAMPLED or mine) and self.validate):
                    continue
                if model is None:
                    model = self.market.model(info.header.model)
                task_id = bytes(model.tasks[i].task_id).hex()
                if task_id not in held:
                    continue
                if t.status == TaskStatus.OPEN:
                    if not self.accepting:
                        continue
                    seen = self._first_seen.setdefault((str(job), i), time.monotonic())
                    standby = self.primary is not None and task_id not in self.primary
                    if not standby or time.monotonic() - seen >= self.standby_s:
                        self._accept(job, i)
                elif t.node != self.address and (str(job), i) not in self._busy:
                    self._busy.add((str(job), i))
                    threading.Thread(target=self._validate, args=(job, i), daemon=True).start()

    def _release(self, job: Pubkey, index: int) -> None:
        """Give the task up. Without its receipt on chain the program only cuts its deadline (the client may
        still show the receipt); the tick expires it once that window is over."""
        self.market.release_task(self.owner, job, index)
        self._released[(str(job), index)] = job
        self.stats["released"] += 1

    def _expire_released(self, job: Pubkey, index: int) -> None:
        try:
            self.market.expire(job, index)
        except MarketError as exc:  # someone else expired it first, or the client released it
            log.debug("expire released %s #%d: %s", job, index, exc)
        self._released.pop((str(job), index), None)

    def _orphan(self, job: Pubkey, index: int) -> None:
        """A task this node accepted that its agent does not know: accepted before the process restarted.
        Whatever was computed died with the process; give the task up (a liveness fault if its input was
        receipted, unslashed otherwise) rather than hold the collateral until the deadline."""
        try:
            self._release(job, index)
            log.warning("released task %d of %s, accepted before this node restarted", index, job)
        except MarketError as exc:
            self._error(f"release of orphaned task {index} of {job}: {exc}")

    def hop_receipt(self, env: Envelope, tensors: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
        """The owner's signed receipt of a task's first input (``splitup.market.evidence``), once per task
        and job: the client keeps it, and proves it on chain if the node later claims it was never fed.
        Signed once and handed out again on a retried first step; later steps carry nothing."""
        index = self._index_of.get((env.job, env.current.task))
        if index is None or env.current.step not in (None, 0):
            return None
        key = (env.job, index)
        if key not in self._receipts:
            self.worked.add(env.job, index)
            signed = Signed.make(RECEIPT, self.owner, self.market.program_id, Pubkey.from_string(env.job), index,
                                 input_digest(tensors))
            self._receipts[key] = {"receipt": signed.compact().hex(), "index": index,
                                   "signer": str(self.owner.pubkey())}
        return self._receipts[key]

    def _sign_handoff(self, job: str, task_id: str, call: int, digest: bytes) -> dict[str, Any] | None:
        signed = self.handoffs.sign(job, task_id, call, digest)
        if signed is not None:
            self.worked.add(job, signed["index"])
        return signed

    def _task_index(self, job: str, task_id: str) -> int | None:
        """The index of task ``task_id`` in market job ``job`` (None: not a market job this node knows):
        the accepted task's, else the one the tick learned (a stand-in computes before it takes the task
        over). Read on the hop path, so never from the chain: the market's client is the agent thread's."""
        index = self._index_of.get((job, task_id))
        return index if index is not None else self._model_index.get(job, {}).get(task_id)

    def _learn_tasks(self, jobs: Sequence[tuple[Pubkey, Any]]) -> None:
        """Index every open job's tasks by task id, for ``_task_index`` (a model's tasks never change once
        a job can be posted on it)."""
        for job, info in jobs:
            if str(job) in self._model_index:
                continue
            ids = self._model_tasks.get(str(info.header.model))
            if ids is None:
                ids = [bytes(t.task_id).hex() for t in self.market.model(info.header.model).tasks]
                self._model_tasks[str(info.header.model)] = ids
            self._model_index[str(job)] = {tid: i for i, tid in enumerate(ids)}

    def _receipt_inputs(self) -> None:
        """Receipt on chain the first input of each task this node accepted: from then on the client can
        no longer release the task (and its pay) from under the node."""
        for key, job in list(self.accepted.items()):
            if key in self._receipted or key in self.announced:
                continue
            try:
                task_id = self.executor.task(job, key[1]).task_id
            except Exception:  # committed or released meanwhile: nothing left to receipt
                self._receipted.add(key)
                continue
            ins = self.node.first_inputs.get((key[0], task_id))
            if ins is None:
                continue
            self._receipted.add(key)
            try:
                self.market.receive_input(self.owner, job, key[1], input_digest(ins))
            except MarketError as exc:  # committed or released meanwhile: nothing to protect any more
                log.debug("receipt %s #%d: %s", job, key[1], exc)

    def _kept_path(self, job: str, index: int) -> Path:
        return Path(self.node.config.cache_dir) / "announcements" / f"{job}-{int(index)}.json"

    def _keep(self, ann: Announcement) -> None:
        """Run before the commit is sent. Published in the store under the owner's key, where validators
        and the arbiter read it without this node's help (``fetch_announcement``): once committed, a task
        with no announcement there and a node that does not show one is blamed on the node, so a failure
        to publish stops the commit (a MarketError: tried again on the next look, as a failed commit is).
        On disk as well: this node serves it from its endpoint too, also after a restart, and a commit
        that landed while its answer was lost is recognised by it."""
        try:
            self.store.publish_record(self.owner, announcement_topic(ann.job, ann.index), _announcement_bytes(ann))
        except StorageError as exc:
            raise MarketError(f"task {ann.index} of {ann.job}: cannot publish its announcement in the store "
                              f"({exc}); not committing") from exc
        path = self._kept_path(ann.job, ann.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(announcement_json(ann)))
        os.replace(tmp, path)

    def _kept(self, job: str, index: int) -> Announcement | None:
        try:
            Pubkey.from_string(job)
            return announcement_from(jsonparse.loads(self._kept_path(job, index).read_text()))
        except (OSError, ValueError):
            return None

    def _forget_closed(self, open_jobs: set[str]) -> None:
        """A closed job's account is gone from the chain; what this node kept about it can go too."""
        kept = Path(self.node.config.cache_dir) / "announcements"
        if kept.is_dir():
            for f in kept.glob("*.json"):
                if f.name.split("-")[0] not in open_jobs:
                    f.unlink(missing_ok=True)
        for key in [k for k in self._receipted if k[0] not in open_jobs]:
            self._receipted.discard(key)
        self.node.forget_sealed(open_jobs)
        self.worked.forget_closed(open_jobs)
        for job in [j for j in self._model_index if j not in open_jobs]:
            del self._model_index[job]
        for table in (self.announced, self._first_seen, self._accepted_at, self._receipts, self._index_of,
                      self._released, self._fetched, self._orphan_seen):
            for key in [k for k in table if k[0] not in open_jobs]:
                table.pop(key, None)

    def _accept(self, job: Pubkey, index: int) -> None:
        if (str(job), index) in self.worked:
            log.info("not taking task %d of %s again: this node signed statements for it before", index, job)
            return
        try:
            self.executor.accept(job, index)
        except MarketError as exc:  # another node was faster, or our stake is locked elsewhere
            log.debug("accept %s #%d: %s", job, index, exc)
            return
        self.stats["accepted"] += 1
        self._index_of[(str(job), self.executor.task(job, index).task_id)] = index
        self.accepted[(str(job), index)] = job
        self._accepted_at[(str(job), index)] = time.monotonic()
        log.info("accepted %s task %d", job, index)

    def _stale(self, key: tuple[str, int]) -> bool:
        """Whether the agent took ``key`` on (accepted it, or took it over) after this look's snapshot."""
        return self._accepted_at.get(key, 0.0) >= self._looked

    def _commit_idle(self, jobs: Mapping[str, Any], slot: int) -> None:
        """Commit (or release) tasks whose client went silent, and any task whose deadline is near: the
        node must not be expired for a client that never said "done"."""
        now = time.monotonic()
        for key, job in list(self.accepted.items()):
            info = jobs.get(key[0])
            if key in self.announced:
                self.accepted.pop(key, None)
                continue
            t = info.tasks[key[1]] if info is not None else None
            if t is None or t.status != TaskStatus.ACCEPTED or t.node != self.address:
                if not self._stale(key):  # a takeover that landed after the snapshot is ours all the same
                    self.accepted.pop(key, None)
                continue
            late = t.deadline - slot < max(10, int(info.header.task_timeout_slots) // 4)
            last = self.node.last_hop.get((key[0], self._task_id(job, key[1])))
            idle = last is not None and (late or now - last > self.idle_commit_s)
            never_fed = last is None and (late or now - self._accepted_at.get(key, now) > self.idle_release_s)
            if idle or never_fed:
                log.warning("task %d of %s: no word from the client for %.0f s; %s", key[1], job,
                            now - (last if last is not None else self._accepted_at.get(key, now)),
                            "committing" if idle else "releasing")
                try:
                    self.finish(job, key[1])
                except MarketError as exc:
                    # Kept: the next look tries again (dropped, the task would pass for one accepted before
                    # a restart, and be released as an orphan: with the liveness penalty if receipted).
                    self._error(f"idle finish {job} #{key[1]}: {exc}")
                    continue
                self.accepted.pop(key, None)

    # --- executor -----------------------------------------------------------------------------------------
    def finish(self, job: Pubkey, index: int) -> Announcement | None:
        """Commit what this node computed for the task; when it computed nothing, release the task
        (unpaid; unslashed when its input was never receipted). None when released."""
        # One decision at a time: the client's "commit" and the idle tick may ask together, and one must
        # not take the other's commit in progress for "nothing computed".
        # Whether it computed something is asked of the node's record, by the task id on chain, never of
        # the agent's own bookkeeping: that may have lost the task (a stale snapshot), and releasing a task
        # whose input is receipted costs the liveness penalty.
        with self._commit_lock:
            slot = self.market.job(job).tasks[index]
            if slot.node == self.address and slot.status == TaskStatus.ACCEPTED:
                key = (str(job), index)
                if not self.node.computed(str(job), self._task_id(job, index)):
                    self._release(job, index)
                    self.accepted.pop(key, None)
                    self.executor.forget(job, index)
                    log.info("released task %d of %s: nothing was computed for it", index, job)
                    return None
                if not self.executor.holds(job, index):
                    self.executor.adopt(job, index)
                self.accepted.setdefault(key, job)
            return self.commit(job, index)

    def _task_id(self, job: Pubkey, index: int) -> str:
        if self.executor.holds(job, index):
            return self.executor.task(job, index).task_id
        return bytes(self.market.model(self.market.job(job).header.model).tasks[index].task_id).hex()

    def wind_down(self) -> dict[str, list[str]]:
        """A draining node's last act on chain: commit every accepted task it computed something for, and
        release (unpaid, unslashed) those it never received input for, so no task expires against it."""
        out: dict[str, list[str]] = {"committed": [], "released": [], "failed": []}
        for key, job in list(self.accepted.items()):
            name = f"{key[0]}#{key[1]}"
            if key in self.announced:
                continue
            try:
                out["committed" if self.finish(job, key[1]) is not None else "released"].append(name)
            except MarketError as exc:
                self._error(f"wind-down {name}: {exc}")
                out["failed"].append(name)
        return out

    def take_over(self, job: Pubkey, index: int, raw: bytes) -> None:
        """Become the executor of a task this node computed as a stand-in (the co-signed ``take_over``);
        from then on it is committed, paid and verified as this node's work."""
        from splitup.market.cosign import cosign_takeover

        if not self.node.computed(str(job), self._task_id(job, index)):
            raise MarketError(f"this node computed nothing for task {index} of {job}")
        key = (str(job), index)
        self.executor.adopt(job, index)
        # Known before the chain says so, or the next tick would take it for an orphan and release it.
        self.accepted[key] = job
        self._accepted_at[key] = time.monotonic()
        self._receipted.add(key)  # the takeover records the input as received
        try:
            cosign_takeover(self.market, self.owner, raw, job, index)
        except Exception:
            # The takeover may have landed while its answer was lost (the ledger died): then the task is
            # this node's, received, and forgetting it would release it later with the liveness penalty.
            # Forget it only when the chain says it is not ours; if unsure, the tick sorts it out.
            try:
                ours = self.market.job(job).tasks[index].node == self.address
            except Exception:
                ours = True
            if not ours:
                self.accepted.pop(key, None)
                self.executor.forget(job, index)
            raise
        log.info("took over task %d of %s as a stand-in", index, job)

    def commit(self, job: Pubkey, index: int) -> Announcement:
        """Seal what this node computed for task ``index`` of ``job``: upload, commit on chain, announce."""
        key = (str(job), index)
        with self._commit_lock:
            if key in self.announced:
                return self.announced[key]
            slot = self.market.job(job).tasks[index]
            kept = self._kept(*key)
            if (slot.node == self.address and slot.status != TaskStatus.ACCEPTED and kept is not None
                    and kept.commitment == bytes(slot.commitment)):
                self.announced[key] = kept  # the commit landed, its answer was lost (the ledger died)
                return kept
            if slot.node != self.address or slot.status != TaskStatus.ACCEPTED:
                raise MarketError(f"task {index} of {job} is not accepted by this node")
            task = self.executor.task(job, index)
            transcript = self.node.transcript(str(job), index, task.task_id)
            if not transcript.steps:
                raise MarketError(f"this node computed nothing for task {index} of {job}")
            self.executor.record(job, index, transcript, self.node.final_state(str(job), task.task_id))
            # Kept on disk before the commit is sent (its answer may be lost while the commit lands).
            ann = self.executor.commit(job, index, keep=self._keep)
            self.executor.forget(job, index)
            self.node.forget(str(job), task.task_id)  # only now: a failed commit is tried again
            self.announced[key] = ann
            self.stats["committed"] += 1
            return ann

    # --- validator ----------------------------------------------------------------------------------------
    def _validate(self, job: Pubkey, index: int) -> None:
        try:
            slot = self.market.job(job).tasks[index]
            again = slot.status == TaskStatus.VALIDATING and slot.validator == self.address
            if slot.status != TaskStatus.SAMPLED and not again:
                return
            # Asked before taking the task up: a validator that can reach neither the store nor the
            # executor does not vote (the next look asks again; the lottery lets another validator in).
            # Kept once fetched: taken up, the check must not depend on reaching the executor again.
            key = (str(job), index)
            if key not in self._fetched:
                self._fetched[key] = fetch_announcement(self.market, job, index, store=self.store)
            check = self.validator.validate(job, index, self._fetched[key], assigned=again)
            self.stats["validated"] += 1
            if not check.agree:
                self.stats["disagreed"] += 1
                log.warning("task %d of %s disagrees: %s", index, job, check.reason)
        except NodeUnreachable as exc:
            log.info("not validating yet: %s", exc)
        except MarketError as exc:  # another validator took it first
            log.debug("validate %s #%d: %s", job, index, exc)
        except Exception as exc:
            self._error(f"validate {job} #{index}: {type(exc).__name__}: {exc}")
        finally:
            self._busy.discard((str(job), index))

    # --- HTTP --------------------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        r = APIRouter(prefix="/market")

        @r.get("/agent")
        def agent() -> dict[str, Any]:
            return {"owner": str(self.owner.pubkey()), "node": str(self.address), "stats": self.stats,
                    "last_error": self.last_error, "tasks": sorted(self.node.runners)}

        @r.post("/jobs/{job}/tasks/{index}/commit")
        async def commit(job: str, index: int) -> JSONResponse:
            """The client is done with the task: commit what was computed, or release it if nothing was."""
            try:
                ann = await run_in_threadpool(self.finish, Pubkey.from_string(job), index)
            except Exception as exc:
                return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=409)
            return JSONResponse({"released": True} if ann is None else announcement_json(ann))

        @r.post("/jobs/{job}/tasks/{index}/take_over")
        async def take_over(job: str, index: int, request: Request) -> JSONResponse:
            """The client asks this node, which ran the task as a stand-in, to become its executor on
            chain: the body is the takeover transaction the client signed; this node co-signs it."""
            try:
                body = await request.json()
                raw = base64.b64decode(str(body["tx"]), validate=True)
                if len(raw) > 4096:
                    raise ValueError("transaction too large")
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                return JSONResponse({"error": f"send {{\"tx\": base64}}: {exc}"}, status_code=400)
            try:
                await run_in_threadpool(self.take_over, Pubkey.from_string(job), index, raw)
            except Exception as exc:
                return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=409)
            return JSONResponse({"node": str(self.address), "job": job, "index": index})

        @r.get("/jobs/{job}/tasks/{index}/announcement")
        def announcement(job: str, index: int) -> JSONResponse:
            ann = self.announced.get((job, index)) or self._kept(job, index)
            if ann is None:
                return JSONResponse({"error": "this node announced nothing for this task"}, status_code=404)
            return JSONResponse(announcement_json(ann))

        return r


class DisputeJudge:
    """The market authority's ``Arbiter`` over every disputed task, in a background thread.

    Tasks small enough are decided by ``onnx.reference``; for larger ones the Arbiter counts opinions,
    and the authority gives its own: it re-executes the transcript on its own onnxruntime (off chain).
    """

    def __init__(self, market: Market, authority: Keypair, store_url: str, cache_dir: Path, *,
                 poll_s: float = 0.5) -> None:
        from splitup.runtime import get_engine
        from splitup.verify.blobs import store_bundles

        self.market = market
        bundles, blobs = store_bundles(store_url, Path(cache_dir)), HttpBlobs(store_url)
        self.store = blobs
        self.arbiter = Arbiter(market, authority, bundles, blobs)
        self.own_check = Validator(market, authority, get_engine("onnxruntime"), bundles, blobs)
        self.poll_s = poll_s
        self.rulings: list[tuple[str, int, bool, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="splitup-arbiter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.judge_once()
            except Exception as exc:
                log.warning("arbiter: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.poll_s)

    def judge_once(self) -> None:
        """Rule on every disputed task whose announcement can be had (``fetch_announcement``: the store's
        copy, else the executor's word; none in the store and the executor away is the executor's fault).
        With both the store and the executor away the task is left for a later look: blame needs evidence,
        and if that lasts past the arbiter's window the dispute expires with nobody slashed."""
        for job, index in self.market.tasks_in(TaskStatus.DISPUTED):
            try:
                ann = fetch_announcement(self.market, job, index, store=self.store)
            except NodeUnreachable as exc:
                log.info("arbiter: not ruling yet: %s", exc)
                continue
            ruling = self.arbiter.arbitrate(job, index, ann, [self.own_check])
            self.rulings.append((str(job), index, ruling.node_honest, ruling.reason))
