"""The node operator's side of the market, running inside the node process next to the node daemon.

``MarketAgent`` acts for one staked node with the Proof-of-Sampling roles of ``splitup.verify.roles``:
as an ``Executor`` it accepts open tasks the node holds, turns the hops the node computed for a job (a
:class:`RecordingNode` keeps them) into the task's transcript when the client says the compute is done,
uploads it to the blob store, commits it on chain and serves the signed announcement; as a
``Validator`` it takes up tasks of other nodes that the chain's sampling drew, re-executes them and
votes. ``DisputeJudge`` runs the market authority's ``Arbiter`` over disputed tasks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.decoding import GREEDY, Decoding, DecodingError
from splitup.market.accounts import node_endpoint
from splitup.market.constants import TaskStatus
from splitup.market.errors import MarketError
from splitup.market.market import Market
from splitup.node.node import HopRecord, Node, NodeConfig
from splitup.node.wire import DECODING_META, Envelope, WireError
from splitup.runtime import Runner
from splitup.storage import fetch_task
from splitup.verify.blobs import Blobs, BundleSource, HttpBlobs
from splitup.verify.cheats import Cheat
from splitup.verify.roles import Announcement, Arbiter, Executor, Validator
from splitup.verify.transcript import Transcript

log = logging.getLogger("splitup.agent")
REPLAY_SUFFIX = ".replay"  # splitup.client.pipeline re-prefills a stand-in under this job id


class RecordingNode(Node):
    """A node that keeps, per (job, task), the inputs and outputs of every step it computed.

    ``cheat`` (``splitup.verify.cheats``; the demo's ``--cheat``) makes it a dishonest node: what it
    forwards and records are the cheat's outputs, as a real cheater's would be.
    """

    def __init__(self, config: NodeConfig, *, cheat: Cheat | None = None) -> None:
        super().__init__(config, on_hop=self._on_hop)
        self.cheat = cheat
        self._local = threading.local()
        self._lock = threading.Lock()
        self.steps: dict[tuple[str, str], dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]] = {}
        self.last_hop: dict[tuple[str, str], float] = {}
        # The token rule the client sent with the job's hops (greedy when it sent none).
        self.decodings: dict[tuple[str, str], Decoding] = {}

    def compute(self, env: Envelope, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._local.inputs, self._local.reported = tensors, None
        self._local.decoding = _decoding(env.meta)
        try:
            sent = super().compute(env, tensors)
            reported = self._local.reported
            if self.cheat is not None and reported is not None:
                sent = {k: reported.get(k, v) for k, v in sent.items()}
            return sent
        finally:
            self._local.inputs = self._local.reported = None

    def _on_hop(self, rec: HopRecord) -> None:
        task = self.runners[rec.task_id].task
        names = {s.name for s in task.inputs if s.name not in task.state}
        given = getattr(self._local, "inputs", None) or {}
        ins = {k: np.array(v) for k, v in given.items() if k in names}
        outs = {k: np.array(v) for k, v in rec.outputs.items() if k not in task.state.values()}
        job = rec.job.removesuffix(REPLAY_SUFFIX)
        with self._lock:
            steps = self.steps.setdefault((job, rec.task_id), {})
            if self.cheat is not None:
                outs = self.cheat(len(steps), ins, outs)
                self._local.reported = outs
            # A repeated step (a client retry) replaces the earlier one: nodes treat steps as idempotent.
            steps[rec.step if rec.step is not None else len(steps)] = (ins, outs)
            self.last_hop[(job, rec.task_id)] = time.monotonic()
            decoding = getattr(self._local, "decoding", None)
            if decoding is not None:
                self.decodings[(job, rec.task_id)] = decoding

    def transcript(self, job: str, index: int, task_id: str) -> Transcript:
        """Everything computed for (job, task) as a ``splitup.verify`` transcript; forgotten here."""
        with self._lock:
            steps = self.steps.pop((job, task_id), {})
            self.last_hop.pop((job, task_id), None)
            decoding = self.decodings.pop((job, task_id), GREEDY)
        t = Transcript(job, index, task_id, decoding=decoding)
        for _, (ins, outs) in sorted(steps.items()):
            t.add(ins, outs)
        return t


def _decoding(meta: Mapping[str, str]) -> Decoding | None:
    """The client's token rule from a hop's envelope; refused (4xx) when malformed, not silently dropped."""
    if DECODING_META not in meta:
        return None
    try:
        return Decoding.from_json(json.loads(meta[DECODING_META]))
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
            "signer": a.signer, "signature": a.signature.hex()}


def announcement_from(d: Any) -> Announcement | None:
    """Parse an announcement; its signature is checked by whoever relies on it (the roles do)."""
    try:
        return Announcement(str(d["job"]), int(d["index"]), str(d["task_id"]), str(d["transcript_sha"]),
                            bytes.fromhex(d["commitment"]), {str(k): bytes.fromhex(v) for k, v in d["fingerprints"].items()},
                            str(d["signer"]), bytes.fromhex(d["signature"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def fetch_announcement(market: Market, job: Pubkey, index: int, timeout: float = 30.0) -> Announcement | None:
    """The executor's signed announcement of a committed task, from the endpoint its node registered."""
    slot = market.job(job).tasks[index]
    url = node_endpoint(market.node_at(slot.node)).rstrip("/")
    try:
        r = httpx.get(f"{url}/market/jobs/{job}/tasks/{index}/announcement", timeout=timeout)
        return announcement_from(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("announcement of %s #%d from %s: %s", job, index, url, exc)
        return None


class MarketAgent:
    def __init__(self, market: Market, owner: Keypair, node: RecordingNode, store_url: str, *,
                 blobs: Blobs | None = None, poll_s: float = 0.25, validate: bool = True,
                 primary: set[str] | None = None, standby_s: float = 3.0, idle_commit_s: float = 60.0) -> None:
        self.market, self.owner, self.node = market, owner, node
        self.address = market.node_address(owner.pubkey())
        blobs = blobs or HttpBlobs(store_url)
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
        self.accepted: dict[tuple[str, int], Pubkey] = {}
        self.announced: dict[tuple[str, int], Announcement] = {}
        self.stats = {"accepted": 0, "committed": 0, "validated": 0, "disagreed": 0, "errors": 0}
        self.last_error = ""
        self._first_seen: dict[tuple[str, int], float] = {}
        self._busy: set[tuple[str, int]] = set()
        self._commit_lock = threading.Lock()
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
        self._commit_idle()
        me = self.owner.pubkey()
        held = set(self.node.runners)
        jobs = self.market.jobs()
        self._forget_closed({str(job) for job, _ in jobs})
        for job, info in jobs:
            if info.header.client == me:
                continue  # a node may not work on its own job
            model = None
            for i, t in enumerate(info.tasks):
                if t.status != TaskStatus.OPEN and not (t.status == TaskStatus.SAMPLED and self.validate):
                    continue
                if model is None:
                    model = self.market.model(info.header.model)
                task_id = bytes(model.tasks[i].task_id).hex()
                if task_id not in held:
                    continue
                if t.status == TaskStatus.OPEN:
                    seen = self._first_seen.setdefault((str(job), i), time.monotonic())
                    standby = self.primary is not None and task_id not in self.primary
                    if not standby or time.monotonic() - seen >= self.standby_s:
                        self._accept(job, i)
                elif t.node != self.address and (str(job), i) not in self._busy:
                    self._busy.add((str(job), i))
                    threading.Thread(target=self._validate, args=(job, i), daemon=True).start()

    def _forget_closed(self, open_jobs: set[str]) -> None:
        """A closed job's account is gone from the chain; what this node kept about it can go too."""
        for table in (self.announced, self._first_seen):
            for key in [k for k in table if k[0] not in open_jobs]:
                table.pop(key, None)

    def _accept(self, job: Pubkey, index: int) -> None:
        try:
            self.executor.accept(job, index)
        except MarketError as exc:  # another node was faster, or our stake is locked elsewhere
            log.debug("accept %s #%d: %s", job, index, exc)
            return
        self.stats["accepted"] += 1
        self.accepted[(str(job), index)] = job
        log.info("accepted %s task %d", job, index)

    def _commit_idle(self) -> None:
        now = time.monotonic()
        for key, job in list(self.accepted.items()):
            if key in self.announced:
                self.accepted.pop(key, None)
                continue
            task_id = self.executor.task(job, key[1]).task_id
            last = self.node.last_hop.get((key[0], task_id))
            if last is not None and now - last > self.idle_commit_s:
                log.warning("task %d of %s: no word from the client for %.0f s; committing", key[1], job, now - last)
                try:
                    self.commit(job, key[1])
                except MarketError as exc:
                    self._error(f"idle commit {job} #{key[1]}: {exc}")
                self.accepted.pop(key, None)

    # --- executor -----------------------------------------------------------------------------------------
    def commit(self, job: Pubkey, index: int) -> Announcement:
        """Seal what this node computed for task ``index`` of ``job``: upload, commit on chain, announce."""
        key = (str(job), index)
        with self._commit_lock:
            if key in self.announced:
                return self.announced[key]
            slot = self.market.job(job).tasks[index]
            if slot.node != self.address or slot.status != TaskStatus.ACCEPTED:
                raise MarketError(f"task {index} of {job} is not accepted by this node")
            task = self.executor.task(job, index)
            transcript = self.node.transcript(str(job), index, task.task_id)
            if not transcript.steps:
                raise MarketError(f"this node computed nothing for task {index} of {job}")
            self.executor.record(job, index, transcript)
            ann = self.executor.commit(job, index)
            self.executor.forget(job, index)
            self.announced[key] = ann
            self.stats["committed"] += 1
            return ann

    # --- validator ----------------------------------------------------------------------------------------
    def _validate(self, job: Pubkey, index: int) -> None:
        try:
            if TaskStatus(self.market.job(job).tasks[index].status) != TaskStatus.SAMPLED:
                return
            check = self.validator.validate(job, index, fetch_announcement(self.market, job, index))
            self.stats["validated"] += 1
            if not check.agree:
                self.stats["disagreed"] += 1
                log.warning("task %d of %s disagrees: %s", index, job, check.reason)
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
            try:
                ann = await run_in_threadpool(self.commit, Pubkey.from_string(job), index)
            except Exception as exc:
                return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=409)
            return JSONResponse(announcement_json(ann))

        @r.get("/jobs/{job}/tasks/{index}/announcement")
        def announcement(job: str, index: int) -> JSONResponse:
            ann = self.announced.get((job, index))
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
                for job, index in self.market.tasks_in(TaskStatus.DISPUTED):
                    ruling = self.arbiter.arbitrate(job, index, fetch_announcement(self.market, job, index),
                                                    [self.own_check])
                    self.rulings.append((str(job), index, ruling.node_honest, ruling.reason))
            except Exception as exc:
                log.warning("arbiter: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.poll_s)
