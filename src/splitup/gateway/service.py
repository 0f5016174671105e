"""The gateway's state: the SDK client it pays with, the jobs it ran, node heartbeats, chain snapshots.

Closed jobs vanish from the chain, so the gateway keeps its own history of the jobs it posted (with
the settlement report taken just before closing). Jobs are settled by one background worker, so an
HTTP answer does not wait for verification.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from solders.pubkey import Pubkey

from splitup.market.accounts import node_endpoint
from splitup.sdk.client import Client
from splitup.sdk.reports import JobReport

log = logging.getLogger("splitup.gateway")


@dataclass
class GatewayJob:
    address: str
    model: str
    created: float
    prompt: str
    kind: str  # "completion" or "chat"
    state: str = "running"  # running -> settling -> closed | failed
    tokens: int = 0
    seconds: float = 0.0
    report: JobReport | None = None
    error: str = ""
    task_ids: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    at: float
    slot: int
    config: Any
    nodes: list[tuple[Pubkey, Any]]
    models: list[Any]  # catalog entries
    jobs: list[tuple[Pubkey, Any]]


class GatewayService:
    def __init__(self, client: Client, *, heartbeat_s: float = 2.0, snapshot_ttl: float = 0.5) -> None:
        self.client = client
        self.jobs: dict[str, GatewayJob] = {}
        self.heartbeats: dict[str, dict[str, Any]] = {}  # endpoint -> last /status and when it came
        self.heartbeat_s = heartbeat_s
        self.snapshot_ttl = snapshot_ttl
        self._snap: Snapshot | None = None
        self._snap_lock = threading.Lock()
        self._lock = threading.Lock()
        self._settle: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._settle_loop, name="gateway-settle", daemon=True),
                         threading.Thread(target=self._heartbeat_loop, name="gateway-heartbeat", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._settle.put(None)
        for t in self._threads:
            t.join(timeout=10)

    # --- chain ----------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The market as of at most ``snapshot_ttl`` ago (a console poll must not hammer the RPC node)."""
        with self._snap_lock:
            if self._snap is None or time.monotonic() - self._snap.at > self.snapshot_ttl:
                m = self.client.market
                self._snap = Snapshot(time.monotonic(), m.t.slot(), m.config(), m.nodes(), self.client.models(),
                                      m.jobs())
            return self._snap

    # --- jobs -----------------------------------------------------------------------------------------------
    def job_started(self, job: Pubkey, model: str, prompt: str, kind: str, task_ids: list[str]) -> None:
        with self._lock:
            self.jobs[str(job)] = GatewayJob(str(job), model, time.time(), prompt[:200], kind, task_ids=task_ids)

    def job_generated(self, job: str, tokens: int, seconds: float) -> None:
        with self._lock:
            j = self.jobs[job]
            j.tokens, j.seconds, j.state = tokens, seconds, "settling"
        self._settle.put(job)

    def job_failed(self, job: str, error: str) -> None:
        with self._lock:
            if job in self.jobs:
                self.jobs[job].state, self.jobs[job].error = "failed", error[:500]

    def _settle_loop(self) -> None:
        while not self._stop.is_set():
            job = self._settle.get()
            if job is None:
                return
            j = self.jobs[job]
            try:
                report = self.client.wait(Pubkey.from_string(job), model_name=j.model, task_ids=j.task_ids)
                with self._lock:
                    j.report, j.state = report, "closed"
            except Exception as exc:  # keep settling the other jobs
                log.warning("settling %s failed: %s", job, exc)
                self.job_failed(job, f"{type(exc).__name__}: {exc}")

    # --- heartbeats -----------------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        with httpx.Client(timeout=1.5) as http:
            while not self._stop.is_set():
                try:
                    endpoints = {node_endpoint(n) for _, n in self.snapshot().nodes}
                except Exception as exc:
                    log.debug("heartbeat: chain unavailable: %s", exc)
                    endpoints = set()
                for url in sorted(e for e in endpoints if e.startswith(("http://", "https://"))):
                    try:
                        r = http.get(url.rstrip("/") + "/status")
                        if r.status_code == 200:
                            self.heartbeats[url] = {"received": time.time(), "status": r.json()}
                    except (httpx.HTTPError, ValueError):
                        pass  # silence is the signal: the age of the last heartbeat grows
                self._stop.wait(self.heartbeat_s)
