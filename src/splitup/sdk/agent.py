"""The node operator's side of the market, running inside the node process next to the node daemon.

``MarketAgent`` watches the chain and acts for one staked node: it accepts open tasks the node holds,
records every hop the node computes for a job (a :class:`RecordingNode`), commits the task's transcript
when the client says the job's compute is done, serves the transcript to validators, and validates
tasks of other nodes that the chain's sampling drew (re-execution + the tolerance rule).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market.accounts import node_endpoint
from splitup.market.constants import TaskStatus
from splitup.market.errors import MarketError
from splitup.market.market import Market
from splitup.node.node import HopRecord, Node, NodeConfig
from splitup.node.wire import Envelope
from splitup.sdk.transcript import Sealed, Transcript, check

log = logging.getLogger("splitup.agent")
REPLAY_SUFFIX = ".replay"  # splitup.client.pipeline re-prefills a stand-in under this job id


class RecordingNode(Node):
    """A node that keeps, per (job, task), the inputs and outputs of every step it computed."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config, on_hop=self._on_hop)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.transcripts: dict[tuple[str, str], Transcript] = {}

    def compute(self, env: Envelope, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._local.inputs = tensors
        try:
            return super().compute(env, tensors)
        finally:
            self._local.inputs = None

    def _on_hop(self, rec: HopRecord) -> None:
        task = self.runners[rec.task_id].task
        names = {s.name for s in task.inputs if s.name not in task.state}
        given = getattr(self._local, "inputs", None) or {}
        ins = {k: v for k, v in given.items() if k in names}
        outs = {k: v for k, v in rec.outputs.items() if k not in task.state.values()}
        job = rec.job.removesuffix(REPLAY_SUFFIX)
        with self._lock:
            t = self.transcripts.setdefault((job, rec.task_id), Transcript())
            t.add(rec.step if rec.step is not None else len(t.steps), ins, outs)

    def take(self, job: str, task_id: str) -> Transcript | None:
        with self._lock:
            return self.transcripts.pop((job, task_id), None)


class MarketAgent:
    def __init__(self, market: Market, owner: Keypair, node: RecordingNode, *, poll_s: float = 0.25,
                 validate: bool = True, primary: set[str] | None = None, standby_s: float = 3.0) -> None:
        self.market, self.owner, self.node = market, owner, node
        # Tasks held as a stand-in (not primary) are taken only when nobody else took them in standby_s.
        self.primary = primary
        self.standby_s = standby_s
        self._first_seen: dict[tuple[str, int], float] = {}
        self.address = market.node_address(owner.pubkey())
        self.poll_s = poll_s
        self.validate = validate
        self.sealed: dict[tuple[str, int], Sealed] = {}
        self.stats = {"accepted": 0, "committed": 0, "validated": 0, "disagreed": 0, "errors": 0}
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy: set[tuple[str, int]] = set()
        self._commit_lock = threading.Lock()

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
                self.stats["errors"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("agent tick failed: %s", self.last_error)
            self._stop.wait(self.poll_s)

    # --- one look at the chain ----------------------------------------------------------------------------
    def tick(self) -> None:
        me = self.owner.pubkey()
        held = set(self.node.runners)
        for job, info in self.market.jobs():
            if info.header.client == me:
                continue  # a node may not work on its own job
            model = None
            for i, t in enumerate(info.tasks):
                if t.status == TaskStatus.OPEN or (t.status == TaskStatus.SAMPLED and self.validate):
                    if model is None:
                        model = self.market.model(info.header.model)
                    task_id = model.tasks[i].task_id.hex()
                    if task_id not in held:
                        continue
                    if t.status == TaskStatus.OPEN:
                        seen = self._first_seen.setdefault((str(job), i), time.monotonic())
                        standby = self.primary is not None and task_id not in self.primary
                        if not standby or time.monotonic() - seen >= self.standby_s:
                            self._accept(job, i)
                    elif t.node != self.address and (str(job), i) not in self._busy:
                        self._busy.add((str(job), i))
                        threading.Thread(target=self._validate, args=(job, i, task_id), daemon=True).start()

    def _accept(self, job: Pubkey, index: int) -> None:
        try:
            self.market.accept_task(self.owner, job, index)
        except MarketError as exc:  # another node was faster, or our stake is locked elsewhere
            log.debug("accept %s #%d: %s", job, index, exc)
            return
        self.stats["accepted"] += 1
        log.info("accepted %s task %d", job, index)

    # --- executor -----------------------------------------------------------------------------------------
    def commit(self, job: Pubkey, index: int) -> Sealed:
        """Seal what this node computed for task ``index`` of ``job`` and commit it on chain."""
        key = (str(job), index)
        with self._commit_lock:
            if key in self.sealed:
                return self.sealed[key]
            info = self.market.job(job)
            slot = info.tasks[index]
            if slot.node != self.address or slot.status != TaskStatus.ACCEPTED:
                raise MarketError(f"task {index} of {job} is not accepted by this node")
            task_id = self.market.model(info.header.model).tasks[index].task_id.hex()
            transcript = self.node.take(str(job), task_id)
            if transcript is None or not transcript.steps:
                raise MarketError(f"this node computed nothing for task {index} of {job}")
            sealed = transcript.seal()
            self.market.commit_result(self.owner, job, index, sealed.digest)
            self.sealed[key] = sealed
            self.stats["committed"] += 1
            return sealed

    # --- validator ----------------------------------------------------------------------------------------
    def _validate(self, job: Pubkey, index: int, task_id: str) -> None:
        try:
            self._validate_once(job, index, task_id)
        except Exception as exc:
            self.stats["errors"] += 1
            self.last_error = f"validate {job} #{index}: {type(exc).__name__}: {exc}"
            log.warning(self.last_error)
        finally:
            self._busy.discard((str(job), index))

    def _validate_once(self, job: Pubkey, index: int, task_id: str) -> None:
        info = self.market.job(job)
        slot = info.tasks[index]
        if slot.status != TaskStatus.SAMPLED:
            return
        # Fetch and check the executor's transcript before taking the job: once assigned, a validator
        # that cannot deliver a verdict in time is slashed.
        sealed = fetch_transcript(self.market, job, index)
        self.market.assign_validator(self.owner, job, index)
        if sealed is None or sealed.digest != bytes(slot.commitment):
            agree, result = False, bytes(32)
            log.warning("task %d of %s: transcript missing or not the committed one", index, job)
        else:
            verdict = check(self.node.runner(task_id), sealed)
            agree, result = verdict.agree, verdict.result_hash
            if not agree:
                log.warning("task %d of %s disagrees: %s", index, job, verdict.reason)
        self.market.submit_verdict(self.owner, job, index, agree, result)
        self.stats["validated"] += 1
        if not agree:
            self.stats["disagreed"] += 1

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
                sealed = await run_in_threadpool(self.commit, Pubkey.from_string(job), index)
            except (MarketError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)
            return JSONResponse({"job": job, "index": index, "commitment": sealed.digest.hex()})

        @r.get("/jobs/{job}/tasks/{index}/transcript")
        def transcript(job: str, index: int) -> Response:
            sealed = self.sealed.get((job, index))
            if sealed is None:
                return JSONResponse({"error": "no committed transcript for this task here"}, status_code=404)
            return Response(sealed.to_bytes(), media_type="application/vnd.splitup.safetensors")

        return r


def fetch_transcript(market: Market, job: Pubkey, index: int, timeout: float = 60.0) -> Sealed | None:
    """The executor's transcript of a committed task, from the endpoint its node registered; None if
    the executor does not serve it or serves something that is not a transcript."""
    import httpx

    slot = market.job(job).tasks[index]
    url = node_endpoint(market.node_at(slot.node)).rstrip("/")
    try:
        r = httpx.get(f"{url}/market/jobs/{job}/tasks/{index}/transcript", timeout=timeout)
        if r.status_code != 200:
            return None
        return Sealed.from_bytes(r.content)
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("transcript of %s #%d from %s: %s", job, index, url, exc)
        return None
    except Exception as exc:  # a malformed body is the executor's failure, not ours
        log.warning("transcript of %s #%d from %s rejected: %s", job, index, url, exc)
        return None


class Arbiter:
    """The market authority's judge: re-executes a disputed task itself and rules on chain."""

    def __init__(self, market: Market, authority: Keypair, store_url: str, cache_dir, *,  # noqa: ANN001
                 poll_s: float = 0.5, engine: str = "onnxruntime") -> None:
        from splitup.runtime import get_engine

        self.market, self.authority, self.store_url, self.cache_dir = market, authority, store_url, cache_dir
        self.engine = get_engine(engine)
        self.poll_s = poll_s
        self.rulings: list[tuple[str, int, bool]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="splitup-arbiter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for job, index in self.market.tasks_in(TaskStatus.DISPUTED):
                    self.rule(job, index)
            except Exception as exc:
                log.warning("arbiter: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.poll_s)

    def rule(self, job: Pubkey, index: int) -> bool:
        from splitup.storage import fetch_task

        info = self.market.job(job)
        task_id = self.market.model(info.header.model).tasks[index].task_id.hex()
        sealed = fetch_transcript(self.market, job, index)
        honest = False
        if sealed is not None and sealed.digest == bytes(info.tasks[index].commitment):
            runner = self.engine.load(fetch_task(task_id, self.store_url, self.cache_dir), task_id=task_id)
            honest = check(runner, sealed).agree
        self.market.arbitrate(self.authority, job, index, honest)
        self.rulings.append((str(job), index, honest))
        return honest


def wait_until(predicate, timeout: float, poll: float = 0.1) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False
