"""Run a plan across node processes: the client sends to the first node, nodes pass activations to each
other, and the last node's answer comes back along the chain.

A route names, per task, the endpoints holding it: the first is used, the others stand in when it fails.
Batch calls are stateless, so a node with stand-ins in the envelope re-runs only the failed hop itself.
Generation keeps each task's KV cache in a session on its node; when a node dies, the client opens a
session on a stand-in, re-prefills it from the tokens so far, and repeats the step (steps are idempotent
on the nodes, see :mod:`splitup.runtime.sessions`), so the output is the same as without the failure.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import select
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from splitup import jsonparse
from splitup.client.sampling import GREEDY, Decoding, decoding_for, generate_tokens
from splitup.errors import SplitUpError
from splitup.node.app import CONTENT_TYPE, HOPS_HEADER, PARKED_HEADER
from splitup.node.bounded import CONTROL_BYTES, bounded
from splitup.node.frames import Frame, FrameError, FramePool, FrameSocket, frame_address
from splitup.node.wire import DECODING_META, Envelope, Hop, WireError, decode, encode
from splitup.partition.task import Plan, TaskDefinition

log = logging.getLogger("splitup.client")

# Failures that mean "this node, not this request": the task moves to a stand-in. ``malformed``: a reply no
# honest node sends (an error report with odd fields, tensors that do not fit the declared outputs, a result
# parked elsewhere); nodes are strangers, so it is the node's failure, never the request's.
REROUTABLE = ("unreachable", "timeout", "not_here", "internal", "malformed")
MAX_REPLY_BYTES = 1 << 30
TRANSPORTS = ("frames", "http")


class PipelineError(SplitUpError):
    """The pipeline refused a request or could not complete it on any node holding a task."""


class NodeFailure(PipelineError):
    def __init__(self, message: str, *, hop: int | None, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.hop, self.kind, self.status = hop, kind, status


def _needs(task: TaskDefinition) -> list[str]:
    """Inputs the task must receive; KV-cache inputs come from the node (session or empty)."""
    return [s.name for s in task.inputs if s.name not in task.state]


def plan_sends(tasks: Sequence[TaskDefinition], want: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """What the client sends to the first hop, and what each hop sends on (the last: back to the client).

    A tensor rides along from where it is made (or from the client) to the last hop that reads it.
    """
    after: list[set[str]] = [set() for _ in tasks]
    acc = set(want)
    for k in range(len(tasks) - 1, -1, -1):
        after[k] = set(acc)
        acc |= set(_needs(tasks[k]))
    initial = sorted(n for n in acc if not _made_before(n, tasks, len(tasks)))
    have = set(initial)
    sends: list[list[str]] = []
    for k, task in enumerate(tasks):
        produced = have | {o.name for o in task.outputs}
        send = sorted(after[k] & produced)
        sends.append(send)
        have = set(send)
    return initial, sends


_NOTEWORTHY = frozenset(("receipt", "failover"))
_DICTS = frozenset((dict,))


def _noteworthy(records: list[Any]) -> bool:
    """Whether a hop record carries a receipt or a failover (``_keep_receipts``, ``_learn``), or is not a record
    at all; looked over in C (a record's keys against the two), since most steps have none."""
    try:
        return any(map(_NOTEWORTHY.intersection, records)) or not _DICTS.issuperset(map(type, records))
    except TypeError:
        return True


def _made_before(name: str, tasks: Sequence[TaskDefinition], stop: int) -> bool:
    return any(name in {o.name for o in t.outputs} for t in tasks[:stop])


class PipelineClient:
    def __init__(self, plan: Plan, route: Sequence[str | Sequence[str]], *, hop_timeout: float = 30.0,
                 max_failovers: int = 4, token_input: str = "input_ids", logits_output: str = "logits",
                 transport: str = "frames", busy_wait_s: float = 10.0, direct: bool = True) -> None:
        """``transport``: ``frames`` sends hops as binary frames over kept-open connections to nodes that
        have a frame port (HTTP to those that do not); ``http`` always POSTs to ``/execute``.
        ``direct``: with frames, a generation step's last node sends the logits straight to this client
        (tasks + 1 one-way messages a step) instead of back along the chain (2 x tasks).
        ``busy_wait_s``: how long to wait for a full node (429) before giving up."""
        if len(route) != len(plan.tasks):
            raise PipelineError(f"route names {len(route)} hops for a plan of {len(plan.tasks)} tasks")
        if transport not in TRANSPORTS:
            raise PipelineError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.transport = transport
        self.direct = direct and transport == "frames"
        self._frames = FramePool(MAX_REPLY_BYTES)
        self._step_ids = itertools.count(1)
        self._frame_addrs: dict[str, tuple[str, int] | None] = {}
        self.plan = plan
        self.candidates: list[list[str]] = [[route_k] if isinstance(route_k, str) else list(route_k)
                                            for route_k in route]
        if not all(self.candidates):
            raise PipelineError("every task needs at least one endpoint")
        self.hop_timeout = hop_timeout
        self.busy_wait_s = busy_wait_s  # how long to wait for a full node (429) before giving up
        self.max_failovers = max_failovers
        self.token_input, self.logits_output = token_input, logits_output
        state_outputs = {present for t in plan.tasks for present in t.state.values()}
        self.stateless_outputs = [o.name for o in plan.outputs if o.name not in state_outputs]
        self.last_hops: list[dict[str, Any]] = []
        # what a reply's tensors must look like (``_fit``): (dtype, shape, max shape) of every declared tensor
        self._specs = {spec.name: (spec.dtype, list(spec.shape), list(spec.max_shape))
                       for spec in [*plan.inputs, *(o for t in plan.tasks for o in t.outputs)]}
        self._last_env: Envelope | None = None  # the last call's envelope, whose route text the next may reuse
        # the nodes' signed receipts of their tasks' first inputs, by (job, task index), as their hop records
        # brought them (``splitup.market.evidence``): what the client proves on chain if a node walks away
        self.receipts: dict[tuple[str, int], dict[str, Any]] = {}
        # told (job, task index, record) of each receipt as it first arrives: a caller that may be killed
        # mid-job (the gateway) writes it down at once
        self.on_receipt: Callable[[str, int, dict[str, Any]], None] | None = None
        self.last_parked = False
        self.last_direct = False  # whether the last call's answer came straight from its last node
        self._http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=64, max_connections=64))

    def close(self) -> None:
        self._http.close()
        self._frames.close()

    def __enter__(self) -> PipelineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the wire ------------------------------------------------------------------------------------------
    def call(self, hops: list[Hop], tensors: Mapping[str, np.ndarray], job: str,
             meta: Mapping[str, str] | None = None, *, direct: bool = False,
             envelope: Envelope | None = None) -> dict[str, np.ndarray]:
        """One trip through ``hops``; raises :class:`NodeFailure` naming the hop that failed. ``direct``:
        ask the last hop (one URL: a session's) to answer this client directly (see ``frames``).
        ``envelope``: the trip's envelope made already (a generation's next step), in place of hops, job and meta."""
        env = envelope or Envelope(job, 0, hops, self.hop_timeout, dict(meta or {}))
        hops = env.route
        if self.transport == "frames" and env.wire is None:
            # a generation's route changes only in its steps: the previous call's route text, if it fits
            env.to_wire(like=self._last_env)
        self._last_env = env
        listen = self._listener(hops[-1].urls[0]) if direct and self.direct else None
        first = hops[0]
        urls = first.urls if first.session is None else first.urls[:1]
        failure: NodeFailure | None = None
        for attempt, url in enumerate(urls):
            try:
                content, parked = self._exchange_waiting(url, env, tensors, listen)
            except NodeFailure as f:
                self._keep_receipts(job)  # a failed trip still brings the records of the hops before it
                if f.kind not in ("timeout", "unreachable") or f.status is not None:
                    raise
                failure = f
                continue
            self.last_parked = parked is not None
            if parked is not None:
                content = _decoded(self._take_parked(parked, hops[-1], len(hops) - 1), len(hops) - 1)
            self._fit(content, hops)
            # most steps' records carry neither receipts nor failovers: looked over once, in C, before any work
            if attempt or _noteworthy(self.last_hops):
                self._keep_receipts(job)
                self._learn(hops, attempt)
            return content
        assert failure is not None
        raise failure

    def _fit(self, tensors: Mapping[str, Any], hops: list[Hop]) -> None:
        """Refuse a result that is not what the route's last hop was asked to send back, as the plan declares
        it: a stranger's tensors of other names, types or shapes (or NaN logits) must not reach the caller or
        its sampler. Blamed on the last hop, which made them (one relaying them cannot be told apart)."""
        hop = len(hops) - 1
        want = hops[-1].send
        if len(tensors) != len(want) or not all(n in tensors for n in want):
            raise NodeFailure(f"hop {hop} sent back {sorted(tensors)[:8]}, not {want}", hop=hop, kind="malformed")
        for name, value in tensors.items():
            spec = self._specs.get(name)
            if type(value) is not np.ndarray:
                raise NodeFailure(f"hop {hop} sent {name!r} as {type(value).__name__}", hop=hop, kind="malformed")
            if spec is None:
                continue
            dtype, shape, most = spec
            if value.dtype.name != dtype or value.ndim != len(shape) or not all(
                    got == want if type(want) is int else got <= top
                    for got, want, top in zip(value.shape, shape, most, strict=True)):
                raise NodeFailure(f"hop {hop} sent {name!r} as {value.dtype.name} {list(value.shape)}, which does not "
                                  f"fit the declared {dtype} {shape}", hop=hop, kind="malformed")
            # max, not isnan().any(): one pass with no mask array, on every step's logits (NaN propagates)
            if name == self.logits_output and value.dtype.kind == "f" and value.size and np.isnan(value.max()):
                raise NodeFailure(f"hop {hop} sent NaN {name!r}", hop=hop, kind="malformed")

    def _keep_receipts(self, job: str) -> None:
        for record in self.last_hops:
            if isinstance(record, dict) and "receipt" in record and isinstance(record.get("index"), int):
                key = (job, record["index"])
                if key in self.receipts:
                    continue
                self.receipts[key] = {k: record.get(k) for k in ("receipt", "index", "signer")}
                if self.on_receipt is not None:
                    self.on_receipt(job, record["index"], self.receipts[key])

    def _exchange_waiting(self, url: str, env: Envelope, tensors: Mapping[str, np.ndarray],
                          listen: tuple[tuple[str, int], str, FrameSocket] | None = None) \
            -> tuple[dict[str, np.ndarray], str | None]:
        """``_exchange``, and while the node answers 429 (every worker busy) wait and send again, up to
        ``busy_wait_s``; steps are idempotent on the nodes, so resending one is safe."""
        deadline = time.monotonic() + self.busy_wait_s
        pause = 0.02
        while True:
            try:
                return self._exchange(url, env, tensors, listen)
            except NodeFailure as f:
                if f.status != 429 or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _exchange(self, url: str, env: Envelope, tensors: Mapping[str, np.ndarray],
                  listen: tuple[tuple[str, int], str, FrameSocket] | None = None) \
            -> tuple[dict[str, np.ndarray], str | None]:
        """Send the route to its first node at ``url``: (tensors, None) or ({}, URL of a parked result)."""
        timeout = self.hop_timeout * (len(env.route) + 1)
        addr = self._frame_address(url, timeout) if self.transport == "frames" else None
        if addr is not None:
            return self._exchange_frames(url, addr, env, tensors, timeout, listen)
        try:
            r = bounded(self._http, "POST", url.rstrip("/") + "/execute", timeout, max_bytes=MAX_REPLY_BYTES,
                        content=encode(tensors, env),
                        headers={"content-type": CONTENT_TYPE})
        except httpx.HTTPError as exc:
            raise _unanswered(exc, 0, url) from None
        try:
            records = jsonparse.loads(r.headers.get(HOPS_HEADER, "[]"))
        except ValueError:
            records = None
        if not isinstance(records, list):  # as a malformed frame is: the node is not one to talk to
            raise NodeFailure(f"hop 0 at {url} sent malformed hop records", hop=0, kind="unreachable")
        self.last_hops = records
        if r.status_code != 200:
            raise _failure(r, len(env.route))
        if PARKED_HEADER in r.headers:
            return {}, r.headers[PARKED_HEADER]
        return _decoded(r.content, len(env.route) - 1), None

    def _frame_address(self, url: str, timeout: float) -> tuple[str, int] | None:
        """Where the node at ``url`` takes frames (asked once, from its /health); None: HTTP only."""
        if url not in self._frame_addrs:
            try:
                r = bounded(self._http, "GET", url.rstrip("/") + "/health", timeout,
                            max_bytes=CONTROL_BYTES)
                health = jsonparse.loads(r.content) if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError) as exc:  # ValueError: not JSON
                raise _unanswered(exc, 0, url) from None
            if not isinstance(health, dict):
                raise NodeFailure(f"hop 0 at {url}: no health report", hop=0, kind="unreachable")
            self._frame_addrs[url] = frame_address(health, urlsplit(url).hostname or "")
        return self._frame_addrs[url]

    def _listener(self, url: str) -> tuple[tuple[str, int], str, FrameSocket] | None:
        """(address, token, connection) on which the node at ``url`` answers this thread directly; None
        when it cannot (no frame port, unreachable, or it takes no listeners): replies come along the chain."""
        try:
            addr = self._frame_address(url, self.hop_timeout)
        except NodeFailure:
            return None
        entry = None if addr is None else self._frames.listener(addr, self.hop_timeout)
        return None if entry is None or addr is None else (addr, *entry)

    def _exchange_frames(self, url: str, addr: tuple[str, int], env: Envelope, tensors: Mapping[str, np.ndarray],
                         timeout: float, listen: tuple[tuple[str, int], str, FrameSocket] | None = None) \
            -> tuple[dict[str, np.ndarray], str | None]:
        # which of the first hop's URLs this is: a stand-in that parks the result names it for the fetch
        request = Frame("exec", dict(tensors), env, via=env.current.urls.index(url))
        direct = listen is not None
        if listen is not None:
            # the token is the secret; a step's id only tells this listener's answers apart
            request.reply = {"to": listen[1], "id": f"{next(self._step_ids):x}"}
        deadline = time.monotonic() + timeout
        self.last_direct = False
        while True:
            reused = False
            try:
                reused, conn = self._frames.get(addr, timeout, direct=direct)
                if listen is None:
                    reply = conn.request(request, timeout, MAX_REPLY_BYTES)
                else:
                    conn.send(request, timeout)
                    reply = self._await_direct(conn, listen, request.reply["id"], deadline)  # type: ignore[index]
                break
            except TimeoutError as exc:
                self._frames.drop(addr, direct=direct)
                if direct:  # a step sent on succeeds silently: which hop hangs, only the chain's timeouts tell
                    raise NodeFailure(f"no direct answer in time: {exc!r}", hop=None, kind="timeout") from None
                raise NodeFailure(f"hop 0 at {url} timed out: {exc!r}", hop=0, kind="timeout") from None
            except (OSError, FrameError) as exc:
                self._frames.drop(addr, direct=direct)
                if reused and not isinstance(exc, FrameError):
                    continue  # a kept-open connection the node had closed: a fresh one
                raise NodeFailure(f"hop 0 at {url} unreachable: {exc!r}", hop=0, kind="unreachable") from None
        self.last_hops = reply.hops
        if reply.kind == "error":
            raise _reported(reply.error, len(env.route), None)
        if reply.kind != "ok":
            sender = len(env.route) - 1 if self.last_direct else 0
            raise NodeFailure(f"hop {sender} answered a {str(reply.kind)[:40]!r} frame", hop=sender, kind="malformed")
        return reply.tensors, reply.parked

    def _await_direct(self, conn: FrameSocket, listen: tuple[tuple[str, int], str, FrameSocket], rid: str,
                      deadline: float) -> Frame:
        """The step's answer: its result on the listening connection, or an error (or, from a last node that
        has no listener for us, the result) back along the chain on ``conn``. Frames of earlier, abandoned
        steps (another reply id) are dropped; one without an id is the node refusing the frame itself."""
        addr, _, listener = listen
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within the route's {self.hop_timeout} s per hop")
            ready = select.select([conn.sock, listener.sock], [], [], left)[0]
            if listener.sock in ready:
                try:
                    result = listener.receive(left, MAX_REPLY_BYTES)
                except (OSError, FrameError) as exc:
                    self._frames.drop_listener(addr)  # the step is repeated (steps are idempotent)
                    raise NodeFailure(f"the last node's direct answer was lost: {exc!r}", hop=None,
                                      kind="lost_result") from None
                if (result.reply or {}).get("id") == rid:
                    self.last_direct = True
                    return result
            if conn.sock in ready:
                reply = conn.receive(left, MAX_REPLY_BYTES)
                if (reply.reply or {}).get("id", rid) == rid:
                    return reply

    def _take_parked(self, url: str, last: Hop, hop: int) -> bytes:
        """A large result the last node kept for us: fetched straight from it, not relayed along the route.
        Only from a node the route names for that hop: a stranger's URL elsewhere would have this client
        fetch (and return) whatever is there, or call a service of the stranger's choice."""
        if not _same_origin(url, last.urls):
            raise NodeFailure(f"hop {hop} parked its result at {str(url)[:200]!r}, not on a node of that hop",
                              hop=hop, kind="malformed")
        try:
            r = bounded(self._http, "GET", url, self.hop_timeout, max_bytes=MAX_REPLY_BYTES)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _unanswered(exc, hop, url) from None
        if r.status_code != 200:
            raise NodeFailure(f"result at {url}: HTTP {r.status_code}", hop=hop, kind="lost_result")
        return r.content

    def _learn(self, hops: list[Hop], first_attempt: int) -> None:
        """Endpoints that failed on the way (tried by us or by a node) go to the back of their lists, so the
        next call does not wait for them again. Routes always start at task 0."""
        for url in hops[0].urls[:first_attempt]:
            self._retire(0, url)
        for record in self.last_hops:
            # a record is a stranger's JSON: only a whole number of failovers at a hop of this route counts
            if not isinstance(record, dict) or type(record.get("hop")) is not int \
                    or type(record.get("failover")) is not int:
                continue
            k = record["hop"] + 1
            if record["failover"] > 0 and 0 < k < len(hops):
                for url in hops[k].urls[: record["failover"]]:
                    self._retire(k, url)

    def _retire(self, task_index: int, url: str) -> None:
        """Move a failed endpoint to the back of its task's list (it may come back later)."""
        cands = self.candidates[task_index]
        if url in cands and len(cands) > 1:
            cands.remove(url)
            cands.append(url)
        log.warning("task %d: %s failed; now using %s", task_index, url, cands[0])

    # --- batch ---------------------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray], *, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One stateless pass (KV caches start empty); returns ``outputs`` (default: all plan outputs)."""
        want = list(outputs) if outputs is not None else [o.name for o in self.plan.outputs]
        initial, sends = plan_sends(self.plan.tasks, want)
        missing = [n for n in initial if n not in feeds]
        if missing:
            raise PipelineError(f"inputs missing: {', '.join(missing)}")
        job = secrets.token_hex(8)
        for _ in range(self.max_failovers + 1):
            hops = [Hop(list(c), t.task_id, s) for c, t, s in zip(self.candidates, self.plan.tasks, sends, strict=True)]
            try:
                return self.call(hops, {n: feeds[n] for n in initial}, job)
            except NodeFailure as f:
                if f.kind == "lost_result":  # the work is done and stateless: run it again
                    continue
                if f.kind not in REROUTABLE or f.hop is None:
                    raise
                self._retire(f.hop, self.candidates[f.hop][0])
        raise PipelineError(f"gave up after {self.max_failovers} failovers")

    def run_batch(self, items: Sequence[Mapping[str, np.ndarray]], *, concurrency: int | None = None,
                  outputs: Sequence[str] | None = None, progress: bool = False) -> list[dict[str, np.ndarray]]:
        """Run many inputs with up to ``concurrency`` in flight (default: one per hop), so every node is busy."""
        workers = concurrency or len(self.plan.tasks)
        with ThreadPoolExecutor(workers) as pool, _progress(progress, "batch", len(items)) as advance:
            futures = [pool.submit(self.run, item, outputs=outputs) for item in items]
            results = []
            for f in futures:
                results.append(f.result())
                advance()
            return results

    # --- generation ----------------------------------------------------------------------------------------
    def session(self) -> GenerationSession:
        return GenerationSession(self)

    def generate(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None, eos_id: int | None = None,
                 progress: bool = False) -> list[int]:
        with self.session() as gen, _progress(progress, "tokens", max_new_tokens) as advance:
            gen.decoding = decoding_for(temperature, top_k, seed)
            return generate_tokens(gen.step, list(prompt), max_new_tokens, decoding=gen.decoding, eos_id=eos_id,
                                   on_token=lambda _t: advance())

    # --- node requests -------------------------------------------------------------------------------------
    def open_session(self, task_index: int) -> tuple[str, str]:
        """A new session for a task on the first of its endpoints that accepts one: (url, session id).

        A node that is full (429) is passed over for the next holder; when every holder is full, the
        client waits as they ask and tries again, up to ``busy_wait_s``, then raises ``NodeFailure``
        of kind ``busy`` (status 429)."""
        task = self.plan.tasks[task_index]
        deadline = time.monotonic() + self.busy_wait_s
        pause = 0.05
        while True:
            busy = 0
            wait = pause
            for _ in range(len(self.candidates[task_index])):
                url = self.candidates[task_index][0]
                try:
                    r = bounded(self._http, "POST", url.rstrip("/") + "/sessions", self.hop_timeout,
                                max_bytes=CONTROL_BYTES, json={"task_id": task.task_id})
                    if r.status_code == 201 and (session := _session_of(r)) is not None:
                        return url, session
                    if r.status_code == 429:
                        busy += 1
                        wait = min(wait, _retry_after(r))
                    log.warning("task %d: %s refused a session: %s", task_index, url, r.text[:200])
                except httpx.HTTPError as exc:
                    log.warning("task %d: %s unreachable: %r", task_index, url, exc)
                self._retire(task_index, url)
            if not busy:
                raise PipelineError(f"no node holding task {task_index} accepts a session")
            if time.monotonic() + wait > deadline:
                raise NodeFailure(f"every node holding task {task_index} is full (429) after waiting "
                                  f"{self.busy_wait_s:.0f} s", hop=task_index, kind="busy", status=429)
            time.sleep(wait)
            pause = min(pause * 2, 1.0)

    def close_session(self, url: str, session: str) -> None:
        try:
            bounded(self._http, "DELETE", f"{url.rstrip('/')}/sessions/{session}", self.hop_timeout,
                    max_bytes=CONTROL_BYTES)
        except httpx.HTTPError:
            pass  # a dead node's sessions died with it; live ones expire


class GenerationSession:
    """One generation job: a session per task, step counters, and the tokens every session has consumed."""

    def __init__(self, client: PipelineClient) -> None:
        self.client = client
        self.plan = client.plan
        self.places: list[tuple[str, str]] = []
        try:
            for k in range(len(self.plan.tasks)):
                self.places.append(client.open_session(k))
        except PipelineError:
            self.close()
            raise
        self._broken: set[int] = set()
        # Which endpoint serves each task now (a stand-in after a failure); kept current in place.
        self.places_urls = [url for url, _ in self.places]
        # Told (task index, new endpoint) once a stand-in holds a task's state again after a failure.
        self.on_move: Callable[[int, str], None] | None = None
        self.steps = [0] * len(self.plan.tasks)
        self.context: list[int] = []
        self.job = secrets.token_hex(8)
        # The job's token rule, sent along so the node emitting logits records it for its validator.
        self.decoding: Decoding = GREEDY
        spec = next(s for s in self.plan.inputs if s.name == client.token_input)
        self.max_chunk = int(spec.max_shape[-1])
        self.recoveries = 0
        self._sends = plan_sends(self.plan.tasks, [client.logits_output])[1]
        self._last: tuple[list[tuple[str, str]], list[list[str]], Envelope] | None = None  # (places, sends, envelope)

    def __enter__(self) -> GenerationSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for url, sid in self.places:
            self.client.close_session(url, sid)

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed ``ids`` (``(n,)`` or ``(1, n)``); returns the logits of the last position, ``(1, 1, vocab)``.

        Prompts longer than the graph's maximum chunk go in several steps. This is also the ``step``
        that ``splitup.models.generate`` drives."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if 0 < ids.shape[1] <= self.max_chunk:  # one chunk (every decode step): no loop
            return self._step(ids)
        logits = None
        for i in range(0, ids.shape[1], self.max_chunk):
            logits = self._step(ids[:, i : i + self.max_chunk])
        if logits is None:
            raise PipelineError("a generation step needs at least one token")
        return logits

    def _hops(self, sends: list[list[str]], stop: int, temp: dict[int, tuple[str, str]] | None = None,
              steps: Sequence[int] | None = None, last: Sequence[str] = ()) -> list[Hop]:
        hops = []
        for k in range(stop + 1):
            url, sid = (temp or {}).get(k, self.places[k])
            hops.append(Hop([url], self.plan.tasks[k].task_id, sends[k], sid, (steps or self.steps)[k],
                            list(last) if k == stop else []))
        return hops

    def _step(self, ids: np.ndarray) -> np.ndarray:
        c = self.client
        sends = self._sends
        direct = True
        for _ in range(c.max_failovers + 1):
            try:
                # Tasks whose session was lost get a new one first, lowest first: a replay runs through the
                # tasks before it, which must be whole again themselves.
                for k in sorted(self._broken):
                    self._recover(k)
                    self._broken.discard(k)
                out = c.call([], {c.token_input: ids}, self.job, direct=direct, envelope=self._envelope(sends))
            except NodeFailure as f:
                if f.kind == "lost_result":  # every node ran the step: repeating it is idempotent, and along
                    direct = False              # the chain, as a last node that spoils its direct answers
                    continue                    # would spoil each repeat too
                if f.kind == "timeout" and f.hop is None:  # no direct answer: along the chain, whose node
                    direct = False                          # timeouts name the hop that hangs
                    continue
                if f.hop is None or f.kind not in (*REROUTABLE, "session"):
                    raise
                if f.kind != "session":  # the node failed, not just its session: use a stand-in
                    c._retire(f.hop, self.places[f.hop][0])
                self._broken.add(f.hop)
                continue
            self.steps = [s + 1 for s in self.steps]
            self.context.extend(ids[0].tolist())
            return out[c.logits_output]
        raise PipelineError(f"generation gave up after {c.max_failovers} failovers")

    def _envelope(self, sends: list[list[str]]) -> Envelope:
        """The next step's envelope: the last one at the new steps while the route's endpoints and the job's
        decoding rule stay the same (the usual step: no route to build, compare or encode again)."""
        meta = self._meta()
        last = self._last
        if last is not None and last[0] == self.places and last[1] is sends and last[2].meta == meta:
            env = last[2].at_steps(self.steps)
        else:
            env = Envelope(self.job, 0, self._hops(sends, len(sends) - 1, last=[self.client.logits_output]),
                           self.client.hop_timeout, meta)
        self._last = (list(self.places), sends, env)
        return env

    def _meta(self) -> dict[str, str]:
        return {} if self.decoding == GREEDY else {DECODING_META: json.dumps(self.decoding.to_json())}

    def _recover(self, k: int) -> None:
        """Give task ``k`` a fresh session on the first endpoint of its list and re-prefill it with the
        context, through temporary sessions on the tasks before it."""
        c = self.client
        self.recoveries += 1
        self.places[k] = c.open_session(k)
        self.places_urls[k] = self.places[k][0]
        self.steps[k] = 0
        if not self.context:
            return
        _, sends = plan_sends(self.plan.tasks[: k + 1], [])
        temp: dict[int, tuple[str, str]] = {}
        steps = [0] * (k + 1)
        try:
            for j in range(k):
                temp[j] = c.open_session(j)
            ctx = np.asarray([self.context], dtype=np.int64)
            for i in range(0, ctx.shape[1], self.max_chunk):
                c.call(self._hops(sends, k, temp, steps), {c.token_input: ctx[:, i : i + self.max_chunk]},
                       self.job + ".replay", self._meta())
                steps = [s + 1 for s in steps]
        finally:
            for url, sid in temp.values():
                c.close_session(url, sid)
        self.steps[k] = steps[k]
        if self.on_move is not None:
            self.on_move(k, self.places[k][0])


def _retry_after(r: httpx.Response) -> float:
    try:
        return max(0.0, min(float(r.headers.get("retry-after", "1")), 30.0))
    except ValueError:
        return 1.0


def _unanswered(exc: Exception, hop: int, url: str) -> NodeFailure:
    """A request to ``hop`` at ``url`` that got no whole, readable answer: it timed out, or the node is
    unreachable."""
    if isinstance(exc, httpx.TimeoutException):
        return NodeFailure(f"hop {hop} at {url} timed out: {exc!r}", hop=hop, kind="timeout")
    return NodeFailure(f"hop {hop} at {url} unreachable: {exc!r}", hop=hop, kind="unreachable")


def _failure(r: httpx.Response, hops: int) -> NodeFailure:
    try:
        body = jsonparse.loads(r.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return NodeFailure(f"HTTP {r.status_code}: {r.text[:200]}", hop=None, kind="http", status=r.status_code)
    return _reported(body, hops, r.status_code)


def _reported(error: Any, hops: int, status: int | None) -> NodeFailure:
    """A node's error report (an error frame's, an HTTP error's body) as the failure it names. The re-routing
    acts on its hop and kind, so a report whose hop is not one of the route's ``hops``, or whose kind or
    status is not what nodes send, is the failure of the node that sent it: hop 0, ``malformed``."""
    if not isinstance(error, dict):
        return NodeFailure(f"hop 0 sent an error without a report: {str(error)[:200]}", hop=0, kind="malformed")
    hop, kind = error.get("hop"), error.get("kind", "http")
    if status is None:
        status = error.get("status")
    if (hop is not None and not (type(hop) is int and 0 <= hop < hops)) or type(kind) is not str \
            or not (status is None or type(status) is int and 100 <= status < 600):
        return NodeFailure(f"hop 0 sent a malformed error report: {str(error)[:200]}", hop=0, kind="malformed")
    return NodeFailure(str(error.get("error"))[:1000], hop=hop, kind=kind[:64], status=status)


def _decoded(body: bytes, hop: int) -> dict[str, np.ndarray]:
    """The tensors of a result's body; one that is not a well-formed message is the failure of ``hop``."""
    try:
        return decode(body)[0]
    except WireError as exc:
        raise NodeFailure(f"hop {hop} sent a malformed result: {exc}", hop=hop, kind="malformed") from None


def _same_origin(url: Any, urls: Sequence[str]) -> bool:
    """Whether ``url`` is an http(s) URL on the scheme, host and port of one of ``urls``."""
    try:
        where = urlsplit(url) if type(url) is str else None
        origins = {(u.scheme, u.hostname, u.port) for u in map(urlsplit, urls)}
        return where is not None and where.scheme in ("http", "https") \
            and (where.scheme, where.hostname, where.port) in origins
    except ValueError:  # not a URL (an unclosed IPv6 bracket, a port that is not a number)
        return False


def _session_of(r: httpx.Response) -> str | None:
    """The session id of a node's 201 answer to ``POST /sessions``; None if the answer holds none."""
    try:
        body = jsonparse.loads(r.content)
    except ValueError:
        return None
    session = body.get("session") if isinstance(body, dict) else None
    return session if type(session) is str and 0 < len(session) <= 256 else None


class _progress:
    """A rich progress bar for long jobs, or nothing."""

    def __init__(self, enabled: bool, what: str, total: int) -> None:
        self.enabled, self.what, self.total = enabled, what, total

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._p = Progress(transient=True)
        self._p.__enter__()
        task = self._p.add_task(self.what, total=self.total)
        return lambda: self._p.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._p.__exit__(*exc)
