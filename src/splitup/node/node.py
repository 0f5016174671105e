"""The node's core, free of HTTP: tasks it holds, their sessions, and running one hop."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitup.errors import SplitUpError
from splitup.node.wire import Envelope
from splitup.runtime import Runner, SessionStore, available_engines, check_feeds, check_positions, get_engine
from splitup.runtime.batching import Batcher, batch_limit

log = logging.getLogger("splitup.node")


class NotHere(SplitUpError):
    """This node does not hold the task a request names."""


class Draining(SplitUpError):
    """The node is shutting down: it finishes the sessions it has and takes no new ones."""


LATENCY_WINDOW = 2048  # recent hop latencies kept for the percentiles of the status page and /metrics


@dataclass(frozen=True)
class NodeConfig:
    engine: str = "onnxruntime"
    threads: int | None = None
    cache_dir: Path = Path(".splitup/node-cache")
    store_url: str | None = None
    node_id: str = field(default_factory=lambda: secrets.token_hex(4))
    max_body_bytes: int = 256 << 20
    max_sessions: int = 64
    # Budget for session caches (each reserves twice its task's KV cache at the maximum context: the
    # cache and the copy kept for a retried step). None: half the memory available at start.
    max_session_bytes: int | None = None
    max_concurrent: int = 16
    # TCP port taking hops as binary frames (splitup.node.frames); 0: any free port, None: no frame port.
    # The port in use is reported by GET /health.
    frame_port: int | None = 0
    # Final results bigger than this wait on the last node for the client to fetch (GET /results/{id})
    # instead of being relayed back through every node of the route.
    park_above_bytes: int = 1 << 20
    shelf_bytes: int = 1 << 30
    shelf_ttl_s: float = 120.0
    session_idle_s: float = 300.0
    heartbeat_s: float = 10.0
    recent_hops: int = 4  # outputs can be large (logits, KV caches): keep only the last few


@dataclass(frozen=True)
class HopRecord:
    """What one hop computed; kept (a few of them) so outputs can be committed to after the fact."""

    job: str
    hop: int
    task_id: str
    session: str | None
    step: int | None
    outputs: dict[str, np.ndarray]
    seconds: float


class Node:
    def __init__(self, config: NodeConfig, *, on_hop: Callable[[HopRecord], None] | None = None) -> None:
        self.config = config
        self.engine = get_engine(config.engine, threads=config.threads)
        self.runners: dict[str, Runner] = {}
        self.batchers: dict[str, Batcher] = {}
        budget = config.max_session_bytes
        if budget is None:
            free = memory_report()["host_free_bytes"]
            budget = free // 2 if free else None
        self.sessions = SessionStore(config.max_sessions, config.session_idle_s, max_bytes=budget)
        self.recent: deque[HopRecord] = deque(maxlen=config.recent_hops)
        self.shelf = ResultShelf(config.shelf_bytes, config.shelf_ttl_s)
        self.on_hop = on_hop
        self.started = time.time()
        self.hops_done = 0
        self._engines: dict[str, str] | None = None
        self.draining = False
        self.hop_seconds: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.hops_by_task: dict[str, int] = {}
        self.hop_listeners: list[Callable[[str, float], None]] = []
        self.last_heartbeat: float | None = None
        # Signs what a hop received (its market agent's receipt): fields added to the hop's record, which
        # travels back to the client over HTTP and frames alike. None: no market, nothing signed.
        self.hop_evidence: Callable[[Envelope, Mapping[str, np.ndarray]], dict[str, Any] | None] | None = None
        # Checks (and keeps) the previous node's signed hand-off of what a hop received, before the hop is
        # computed; raises a WireError to refuse the hop. None: no market, nothing checked.
        self.handoff_check: Callable[[Envelope, Mapping[str, np.ndarray], dict[str, Any] | None], None] | None = None

    # --- tasks ---------------------------------------------------------------------------------------------
    def load_bundle(self, directory: Path, task_id: str | None = None) -> Runner:
        runner = self.engine.load(directory, task_id=task_id)
        self.runners[runner.task.task_id] = runner
        self.batchers[runner.task.task_id] = Batcher(runner)
        log.info("node %s: task %s (%s #%d) loaded on %s", self.config.node_id, runner.task.task_id[:12],
                 runner.task.model, runner.task.index, runner.device)
        return runner

    def preload(self, task_id: str) -> Runner:
        """Fetch a task from the blob store into the cache (verified), then load it (verified again)."""
        from splitup.storage import fetch_task

        if task_id in self.runners:
            return self.runners[task_id]
        if self.config.store_url is None:
            raise NotHere(f"task {task_id[:12]} is not loaded and this node has no blob store to fetch it from")
        return self.load_bundle(fetch_task(task_id, self.config.store_url, self.config.cache_dir), task_id)

    def runner(self, task_id: str) -> Runner:
        r = self.runners.get(task_id)
        if r is None:
            raise NotHere(f"this node does not hold task {task_id[:12]}")
        return r

    def open_session(self, task_id: str) -> str:
        """A session reserves its sequence's share of the task's KV cache (the plan sizes it for the graph's
        maximum batch) twice: the cache and the copy kept for a retried step."""
        if self.draining:
            raise Draining("this node is draining for a restart: open the session on another holder of the task")
        task = self.runner(task_id).task
        return self.sessions.open(task_id, reserve_bytes=session_reserve(task)).id

    def expected_peers(self, env: Envelope) -> int:
        """How many sessions' steps may arrive with this one and share its engine call (1: run it alone)."""
        hop = env.current
        runner = self.runners.get(hop.task)
        if hop.session is None or runner is None or not self.batchers[hop.task].applies:
            return 1
        session = self.sessions.peek(hop.session)
        # With per-sequence lengths every session of the task can share a call; otherwise equal caches only.
        return 1 if session is None else self.sessions.peers(session, same_cache=runner.kv is None)

    # --- one hop -------------------------------------------------------------------------------------------
    def hop(self, env: Envelope, tensors: Mapping[str, np.ndarray],
            handoff: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """One hop as served: ``handoff`` (the previous node's signed hand-off of ``tensors``) checked
        first, then ``compute``; returns what to send on and this node's signed hand-off of it (None: a
        node outside the market signs nothing)."""
        if self.handoff_check is not None:
            self.handoff_check(env, tensors, handoff)
        return self.compute(env, tensors), None

    def compute(self, env: Envelope, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the envelope's current hop on ``tensors``; returns the tensors to send on (``hop.send``)."""
        hop = env.current
        runner = self.runner(hop.task)
        task = runner.task
        check_feeds(task, tensors, passthrough=set(hop.send), state_held=hop.session is not None)
        names = {s.name for s in task.inputs}
        given = {k: v for k, v in tensors.items() if k in names}
        t0 = time.perf_counter()
        outs: dict[str, np.ndarray] = {}
        if hop.session is None:
            check_positions(task, given)
            outs = runner.step(given, None)[0]
        else:
            session = self.sessions.get(hop.session, task.task_id)
            if self.batchers[task.task_id].max_rows > 1 and any(v.shape[:1] != (1,) for v in given.values()):
                from splitup.runtime import InterfaceError

                # A session reserved one sequence's cache: it must not grow a batch of them.
                raise InterfaceError("a session holds one sequence: the leading (batch) axis must be 1")
            expected = self.expected_peers(env)

            def step(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                # Positions past the task's context are refused before any engine runs, naming the limit.
                check_positions(task, {**state, **given})
                done, new_state = self.batchers[task.task_id].step(given, state, expected)
                outs.update(done)
                return new_state

            assert hop.step is not None  # the envelope parser requires it with a session
            session.advance(hop.step, step)
        seconds = time.perf_counter() - t0
        self.hops_done += 1
        self.hop_seconds.append(seconds)
        self.hops_by_task[task.task_id] = self.hops_by_task.get(task.task_id, 0) + 1
        for listener in self.hop_listeners:
            listener(task.task_id, seconds)
        record = HopRecord(env.job, env.hop, task.task_id, hop.session, hop.step, outs, seconds)
        self.recent.append(record)
        if self.on_hop is not None:
            self.on_hop(record)
        available = {**tensors, **outs}
        missing = [n for n in hop.send if n not in available]
        if missing:
            from splitup.runtime import InterfaceError

            raise InterfaceError(f"hop {env.hop} is asked to send {', '.join(missing)}, which it neither "
                                 "received nor computed")
        sent = {n: available[n] for n in hop.send}
        for n in hop.last:
            if n in sent and sent[n].ndim >= 2:
                sent[n] = sent[n][:, -1:]
        return sent

    # --- reports -------------------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        return {
            "node": self.config.node_id,
            "engine": self.engine.name,
            "devices": self.engine.devices(),
            "engines": self.engines(),
            "memory": memory_report(),
            "tasks": [{"task_id": r.task.task_id, "model": r.task.model, "index": r.task.index,
                       "vram_bytes": r.task.vram_bytes, "device": r.device} for r in self.runners.values()],
            "sessions": {"open": len(self.sessions), "max": self.sessions.max_sessions,
                         "max_bytes": self.sessions.max_bytes,
                         "idle_s": self.sessions.idle_s, "state_bytes": self.sessions.state_bytes()},
            "limits": {"max_body_bytes": self.config.max_body_bytes, "max_concurrent": self.config.max_concurrent},
        }

    def engines(self) -> dict[str, str]:
        """Which engines this machine can run, probed once: probing imports each engine's library, which
        takes seconds (tinygrad) and does not change while the process runs."""
        if self._engines is None:
            self._engines = available_engines()
        return self._engines

    def status(self) -> dict[str, Any]:
        """The heartbeat payload: small, cheap to compute. ``free_sessions`` (per task id) is how many more
        generations this node would take now, within its session count and cache-memory budget: what a
        client's or gateway's admission control reads before it escrows a job."""
        return {"node": self.config.node_id, "time": time.time(), "uptime_s": round(time.time() - self.started, 1),
                "tasks": sorted(self.runners), "sessions": len(self.sessions), "hops_done": self.hops_done,
                "draining": self.draining,
                "max_sessions": self.sessions.max_sessions, "session_bytes_max": self.sessions.max_bytes,
                "session_bytes_reserved": self.sessions.reserved_bytes(),
                "free_sessions": {tid: self.sessions.free_for(session_reserve(r.task))
                                  for tid, r in self.runners.items()}}

    def latency_ms(self) -> dict[str, float | None]:
        """p50/p95/p99 of the last hops' compute time, in milliseconds."""
        window = sorted(self.hop_seconds)
        if not window:
            return {"p50": None, "p95": None, "p99": None}
        pick = lambda q: round(window[min(len(window) - 1, int(q * len(window)))] * 1000, 3)  # noqa: E731
        return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}

    def page(self) -> dict[str, Any]:
        """What the node's own page shows: tasks, sessions and memory against the budget, hops, latency."""
        mem = memory_report()
        return {**self.status(), "engine": self.engine.name, "devices": self.engine.devices(),
                "tasks": [{"task_id": r.task.task_id, "model": r.task.model, "index": r.task.index,
                           "vram_bytes": r.task.vram_bytes, "device": r.device,
                           "hops": self.hops_by_task.get(r.task.task_id, 0)} for r in self.runners.values()],
                "session_bytes": self.sessions.state_bytes(), "session_budget_bytes": self.sessions.max_bytes,
                "max_sessions": self.sessions.max_sessions, "latency_ms": self.latency_ms(),
                "host_free_bytes": mem["host_free_bytes"], "host_total_bytes": mem["host_total_bytes"],
                "last_heartbeat": self.last_heartbeat}


def session_reserve(task: Any) -> int:
    """Bytes a session of ``task`` reserves: its sequence's share of the KV cache at the maximum context
    (the plan sizes it for the graph's maximum batch) and the copy kept for a retried step."""
    return 2 * int(task.kv_cache_bytes) // batch_limit(task)


class ResultShelf:
    """Parked final results, each taken at most once; bounded in bytes and dropped after ``ttl_s``."""

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes, self.ttl_s = max_bytes, ttl_s
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, body: bytes) -> str | None:
        """Park ``body``; None when it cannot fit even after dropping older results."""
        if len(body) > self.max_bytes:
            return None
        with self._lock:
            now = time.monotonic()
            while self._items and (self._bytes + len(body) > self.max_bytes
                                   or next(iter(self._items.values()))[0] < now):
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= len(old)
            rid = secrets.token_hex(16)
            self._items[rid] = (now + self.ttl_s, body)
            self._bytes += len(body)
            return rid

    def take(self, rid: str) -> bytes | None:
        with self._lock:
            item = self._items.pop(rid, None)
            if item is None:
                return None
            self._bytes -= len(item[1])
            return item[1] if item[0] >= time.monotonic() else None


def memory_report() -> dict[str, int | None]:
    """Free and total host memory (bytes), from /proc/meminfo or sysconf; GPU memory where torch can see it."""
    free = total = None
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        free, total = info.get("MemAvailable"), info.get("MemTotal")
    except (OSError, ValueError):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            free, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            pass
    return {"host_free_bytes": free, "host_total_bytes": total, "gpu_free_bytes": _gpu_free()}


def _gpu_free() -> int | None:
    import sys

    torch = sys.modules.get("torch")  # only if already imported: never pay torch's import for a report
    if torch is not None and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    return None
