"""The gateway's state: the SDK client it pays with, the jobs it ran, node heartbeats, chain snapshots,
the market's free capacity per model, and admission.

Closed jobs vanish from the chain, so the gateway keeps its own history of the jobs it posted (with
the settlement report taken just before closing), on disk (:mod:`splitup.gateway.jobstore`) so that a
restarted gateway winds up what it left. Jobs are settled, or wound up when they failed, by background
workers, so an HTTP answer does not wait for verification; a job whose windows have not run out yet is
tried again later, never dropped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from solders.pubkey import Pubkey

from splitup.gateway.admission import Admission
from splitup.gateway.jobstore import JobStore
from splitup.market.accounts import node_endpoint
from splitup.sdk.capacity import fetch_statuses, market_capacity, shortfall
from splitup.sdk.client import Client, JobGone
from splitup.sdk.errors import JobError
from splitup.sdk.reports import JobReport, TaskReport

log = logging.getLogger("splitup.gateway")

# running -> settling -> closed: served and paid.  running -> failed -> wound_up: the job ended early, what
# the nodes computed was paid, the rest of the escrow refunded (report.refund).
FINAL = ("closed", "wound_up")
# A node that has not said how it is within this long is silent this round (asked all at once)
HEARTBEAT_TIMEOUT_S = 1.5


@dataclass
class GatewayJob:
    address: str
    model: str
    created: float
    prompt: str
    kind: str  # "completion" or "chat"
    state: str = "running"
    tokens: int = 0
    seconds: float = 0.0
    report: JobReport | None = None
    error: str = ""
    task_ids: list[str] = field(default_factory=list)
    # The job's draw secret (hex) until the job is over: written with the job's row, so a gateway killed
    # before revealing it still reveals it after a restart (else every task of the job is verified).
    secret: str = ""
    # the nodes' signed receipts of their inputs, by task index (splitup.market.evidence): written down with
    # the job so that a restarted gateway can still prove them when it winds the job up
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["report"] = None if self.report is None else asdict(self.report)
        return body

    @staticmethod
    def from_json(d: dict[str, Any]) -> GatewayJob:
        rep = d.get("report")
        report = None
        if rep is not None:
            report = JobReport(**{**rep, "tasks": [TaskReport(**t) for t in rep["tasks"]]})
        return GatewayJob(**{**d, "report": report})


@dataclass
class Snapshot:
    at: float
    slot: int
    config: Any
    nodes: list[tuple[Pubkey, Any]]
    models: list[Any]  # catalog entries
    jobs: list[tuple[Pubkey, Any]]


class GatewayService:
    def __init__(self, client: Client, *, heartbeat_s: float = 1.0, snapshot_ttl: float = 0.5,
                 db_path: Path | None = None, max_running: int = 4, max_queue: int = 16,
                 queue_timeout: float = 20.0, workers: int = 2, retry_s: float = 5.0) -> None:
        self.client = client
        self.jobs: dict[str, GatewayJob] = {}
        self.heartbeats: dict[str, dict[str, Any]] = {}  # endpoint -> last /status and when it came
        self.heartbeat_s = heartbeat_s
        self.snapshot_ttl = snapshot_ttl
        self.retry_s = retry_s
        self.store = JobStore(db_path) if db_path is not None else None
        self._snap: Snapshot | None = None
        self._snap_lock = threading.Lock()
        self._lock = threading.Lock()
        # Jobs to settle or wind up: address -> when to try next.
        self._due: dict[str, float] = {}
        self._due_cv = threading.Condition()
        self._busy: set[str] = set()
        self._asked: set[str] = set()  # jobs whose nodes were asked to commit or release
        self._stop = threading.Event()
        # The market's room per model (free job slots and, when none, why), and jobs admitted but not
        # yet placed, which the chain and the nodes cannot see yet.
        self._room: dict[str, tuple[int, str]] = {}
        self._pending: dict[str, int] = {}
        client.on_receipt = self._receipt_arrived
        self.admission = Admission(max_running=max_running, max_queue=max_queue, queue_timeout=queue_timeout,
                                   room=self.room, taken=self._placing)
        self._threads = [threading.Thread(target=self._work_loop, name=f"gateway-settle-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._heartbeat_loop, name="gateway-heartbeat", daemon=True))
        if self.store is not None:
            for body in self.store.all():
                j = GatewayJob.from_json(body)
                self.jobs[j.address] = j
                if j.state not in FINAL:
                    # Left by a gateway that stopped or was killed: whatever it was, wind it up.
                    j.state = "failed" if j.state == "running" else j.state
                    j.error = j.error or "the gateway restarted while the job ran"
                    if j.secret:
                        client.keep_secret(Pubkey.from_string(j.address), bytes.fromhex(j.secret))
                    self._due[j.address] = 0.0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._due_cv:
            self._due_cv.notify_all()
        for t in self._threads:
            t.join(timeout=10)
        if self.store is not None:
            self.store.close()

    # --- chain ----------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The market as of at most ``snapshot_ttl`` ago (a console poll must not hammer the RPC node)."""
        with self._snap_lock:
            if self._snap is None or time.monotonic() - self._snap.at > self.snapshot_ttl:
                m = self.client.market
                self._snap = Snapshot(time.monotonic(), m.t.slot(), m.config(), m.nodes(), self.client.models(),
                                      m.jobs())
            return self._snap

    # --- capacity -------------------------------------------------------------------------------------------
    def room(self, model: str) -> str:
        """Why the market cannot take a job of ``model`` now; '' when it can (or nothing is known yet: the
        chain's accept then decides). Reads the forecast the heartbeat keeps; never blocks."""
        with self._lock:
            known = self._room.get(model)
            pending = self._pending.get(model, 0)
        if known is None:
            return ""
        slots, why = known
        if slots - pending >= 1:
            return ""
        return why or f"the {slots} free slot(s) for {model} are taken by requests being placed"

    def _placing(self, model: str) -> None:
        with self._lock:
            self._pending[model] = self._pending.get(model, 0) + 1

    def placed(self, model: str) -> None:
        """An admitted request's job was accepted (or gave up): the chain and nodes now count it."""
        with self._lock:
            self._pending[model] = max(0, self._pending.get(model, 0) - 1)

    def _refresh_room(self, snap: Snapshot) -> None:
        now = time.time()
        statuses = {url: b["status"] for url, b in self.heartbeats.items()
                    if now - b["received"] < 3 * self.heartbeat_s + 2}
        room: dict[str, tuple[int, str]] = {}
        for e in snap.models:
            if e.manifest.kind != "decoder":
                continue
            caps = market_capacity(snap.nodes, snap.config, e.task_ids(), [int(t.price) for t in e.info.tasks],
                                   statuses, exclude_owner=self.client.payer.pubkey(), slot=snap.slot)
            room[e.name] = (min((c.slots for c in caps), default=0), shortfall(caps))
        with self._lock:
            self._room = room

    # --- jobs -----------------------------------------------------------------------------------------------
    def _save(self, j: GatewayJob) -> None:
        held = self.client.receipts.get(j.address)
        if held:
            j.receipts = {str(index): record for (_, index), record in list(held.items())}
        if self.store is not None:
            self.store.put(j.address, j.created, j.to_json())

    def _receipt_arrived(self, job: str, index: int, record: dict[str, Any]) -> None:
        """A node's signed receipt of its input, written down as it arrives: a gateway killed mid-stream
        still proves it after a restart, when it winds the job up."""
        with self._lock:
            j = self.jobs.get(job)
            if j is None:
                return
            j.receipts[str(index)] = dict(record)
        try:
            self._save(j)
        except sqlite3.Error as exc:  # the stream goes on; the receipt is written with the job's next save
            log.warning("job %s: receipt of task %d not written down: %s", job, index, exc)

    def job_started(self, job: Pubkey, model: str, prompt: str, kind: str, task_ids: list[str]) -> None:
        secret = self.client.draw_secret(job)
        j = GatewayJob(str(job), model, time.time(), prompt[:200], kind, task_ids=task_ids,
                       secret=secret.hex() if secret is not None else "")
        with self._lock:
            self.jobs[j.address] = j
        self._save(j)

    def job_generated(self, job: str, tokens: int, seconds: float) -> None:
        with self._lock:
            j = self.jobs[job]
            j.tokens, j.seconds, j.state = tokens, seconds, "settling"
        self._save(j)
        self._schedule(job, 0.0)

    def job_failed(self, job: str, error: str) -> None:
        with self._lock:
            j = self.jobs.get(job)
            if j is None or j.state in FINAL:
                return
            j.state, j.error = "failed", error[:500]
        self._save(j)
        self._schedule(job, 0.0)

    def _schedule(self, job: str, delay: float) -> None:
        with self._due_cv:
            self._due[job] = time.monotonic() + delay
            self._due_cv.notify()

    def open_jobs(self) -> list[str]:
        with self._lock:
            return [a for a, j in self.jobs.items() if j.state not in FINAL]

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            with self._due_cv:
                now = time.monotonic()
                ready = [a for a, t in self._due.items() if t <= now and a not in self._busy]
                if not ready:
                    nxt = min((t for a, t in self._due.items() if a not in self._busy), default=now + 1.0)
                    self._due_cv.wait(timeout=max(0.05, min(1.0, nxt - now)))
                    continue
                job = min(ready, key=lambda a: self._due[a])
                del self._due[job]
                self._busy.add(job)
            try:
                self._finish(job)
            finally:
                with self._due_cv:
                    self._busy.discard(job)

    def _finish(self, job: str) -> None:
        """Settle a served job, or wind up a failed one; on no success yet, try again in ``retry_s``."""
        j = self.jobs[job]
        key = Pubkey.from_string(job)
        final = "closed" if j.state == "settling" else "wound_up"
        first = job not in self._asked
        self._asked.add(job)
        if j.receipts and job not in self.client.receipts:  # read back after a restart
            self.client.receipts[job] = {(job, int(i)): r for i, r in j.receipts.items()}
        try:
            # Settling is winding up a job that was served: executors that did not commit yet are asked
            # (once); then one pass over the chain per turn, so a job waiting for a validator does not
            # hold a worker while others could close.
            report = self.client.wind_up(key, model_name=j.model, task_ids=j.task_ids, timeout=0.0, ask=first,
                                         before_close=lambda r: self._save_before_close(j, r))
        except Exception as exc:  # keep the job: its windows are bounded, a later try gets it closed
            if isinstance(exc, JobGone) or self._closed_elsewhere(key):
                report = j.report  # written down before the close (by this run or one that was killed)
                if report is not None:
                    report.closed = True
            else:
                if not isinstance(exc, JobError) or "not settled" not in str(exc):
                    log.warning("job %s not finished yet (%s: %s); trying again", job, type(exc).__name__, exc)
                    self._asked.discard(job)  # the chain or a node failed: ask again next time
                self._schedule(job, self.retry_s if job not in self._asked else 0.5)
                return
        with self._lock:
            j.report, j.state, j.secret = report, final, ""
        self._save(j)

    def _save_before_close(self, j: GatewayJob, report: Any) -> None:
        """The job's final figures, durable before its account is closed: a gateway killed between the
        close and its own bookkeeping still shows what was paid and refunded after a restart."""
        with self._lock:
            j.report = report
        self._save(j)

    def _closed_elsewhere(self, job: Pubkey) -> bool:
        """Closed already (by a run of this gateway that died before writing it down)."""
        try:
            acc = self.client.market.t.get_account(job)
        except Exception:
            return False
        # Never posted (the send failed), or closed: gone, or emptied of its lamports.
        return acc is None or acc.lamports == 0

    # --- heartbeats -----------------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        with httpx.Client() as http:
            while not self._stop.is_set():
                snap = None
                try:
                    snap = self.snapshot()
                    endpoints = {node_endpoint(n) for _, n in snap.nodes}
                except Exception as exc:
                    log.debug("heartbeat: chain unavailable: %s", exc)
                    endpoints = set()
                for url, status in fetch_statuses(sorted(endpoints), http, HEARTBEAT_TIMEOUT_S).items():
                    if status is not None:  # silence is the signal: the age of the last heartbeat grows
                        self.heartbeats[url] = {"received": time.time(), "status": status}
                if snap is not None:
                    try:
                        self._refresh_room(snap)
                    except Exception as exc:
                        log.warning("capacity forecast failed: %s: %s", type(exc).__name__, exc)
                self._stop.wait(self.heartbeat_s)
