"""The node's HTTP service. Every failure a request can cause is a 4xx/5xx JSON answer, never a crash.

Errors carry ``{"error": message, "kind": ..., "hop": index}``; ``hop`` names the route position that
failed, so a client can re-route exactly that task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from splitup import jsonparse
from splitup.node.failures import HopFailed, classify
from splitup.node.forward import ForwardError, HopClient, Reply
from splitup.node.metrics import NodeMetrics
from splitup.node.node import Node, NotHere
from splitup.node.stream import FrameForwarder, FrameServer
from splitup.node.threads import name_this_thread
from splitup.node.wire import HANDOFF_HEADER, Envelope, decode, encode, envelope_of, handoff_of
from splitup.partition.task import PlanError
from splitup.runtime import EngineError
from splitup.storage import StorageError

log = logging.getLogger("splitup.node")
_PAGE = resources.files("splitup.node").joinpath("page.html").read_text()
HOPS_HEADER = "x-splitup-hops"
PARKED_HEADER = "x-splitup-result"
CONTENT_TYPE = "application/vnd.splitup.safetensors"


def _respond(failure: HopFailed) -> JSONResponse:
    # A full node says when to come back, as HTTP's 429 does; the pipeline client waits or re-routes.
    # A draining node is gone for good: come back never, re-route now.
    headers = ({"retry-after": "1"} if failure.status == 429 else
               {"retry-after": "0"} if failure.kind == "draining" else None)
    return JSONResponse({"error": str(failure), "kind": failure.kind, "hop": failure.hop},
                        status_code=failure.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HopFailed(413, "too_large", f"body of {declared} bytes exceeds the node's {limit}-byte limit", None)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HopFailed(413, "too_large", f"body exceeds the node's {limit}-byte limit", None)
    return bytes(body)


class HopDispatch:
    """Admission (at most ``max_concurrent`` hops at once, over HTTP and frames together) and where a hop's
    compute runs. A frame connection's own thread computes its hops where it stands (``compute_here``). An
    HTTP hop computes on the event loop when no other HTTP hop is computing and it cannot be batched (handing
    off to a worker thread and back costs two wake-ups, milliseconds per hop on busy cores), otherwise on a
    worker thread, so the loop keeps taking the hops that may join its engine call. Hops that only wait
    for the next node's reply (a direct answer's ``sent`` among them) do not count: they join no call."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.in_flight = 0  # hops admitted, over HTTP and frames
        self.computing = 0  # HTTP hops computing on worker threads
        self._lock = threading.Lock()  # the event loop and the frame connections' threads both count
        self.pool = ThreadPoolExecutor(node.config.max_concurrent + 2, thread_name_prefix="splitup-hop",
                                       initializer=name_this_thread)

    def admit(self) -> None:
        """Take a hop in, or refuse it (429) when the node serves its maximum; ``release`` when it is done."""
        with self._lock:
            if self.in_flight >= self.node.config.max_concurrent:
                raise HopFailed(429, "busy", f"this node is serving its maximum of {self.node.config.max_concurrent} "
                                "requests; retry later", None)
            self.in_flight += 1

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    async def compute(self, env: Envelope, tensors: Mapping[str, Any], handoff: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """An HTTP hop's outputs, its timing record and this node's signed hand-off of the outputs
        (``handoff``: the previous node's, checked before anything is computed; ``Node.hop``)."""
        t0 = time.perf_counter()
        if self.computing == 0 and self.node.expected_peers(env) == 1:
            out, signed, cpu = self._timed(env, tensors, handoff)
        else:
            with self._lock:
                self.computing += 1  # counted from now: the loop must not compute the next hop itself meanwhile
            try:
                out, signed, cpu = await asyncio.get_running_loop().run_in_executor(self.pool, self._timed, env,
                                                                                    tensors, handoff)
            finally:
                with self._lock:
                    self.computing -= 1
        return out, self._record(env, tensors, t0, cpu), signed

    def compute_here(self, env: Envelope, tensors: Mapping[str, Any], handoff: dict[str, Any] | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """A frame connection's hop, admitted (``admit``), computed on the calling thread and released, in one
        call: every hop runs this with the caches cold after the last engine call, so it is kept to few steps.
        Not counted in ``computing``: that tells the event loop whether to compute an HTTP hop itself, and a
        frame hop never needs the loop."""
        self.admit()
        try:
            t0 = time.perf_counter()
            out, signed, cpu = self._timed(env, tensors, handoff)
            return out, self._record(env, tensors, t0, cpu), signed
        finally:
            self.release()

    def _record(self, env: Envelope, tensors: Mapping[str, Any], t0: float, cpu: float) -> dict[str, Any]:
        record = {"hop": env.hop, "node": self.node.config.node_id, "task": env.current.task[:16],
                  "ms": round((time.perf_counter() - t0) * 1000, 3), "cpu_ms": round(cpu * 1000, 3)}
        if self.node.hop_evidence is not None:
            record.update(self.node.hop_evidence(env, tensors) or {})
        return record

    def _timed(self, env: Envelope, tensors: Mapping[str, Any], handoff: dict[str, Any] | None
               ) -> tuple[dict[str, Any], dict[str, Any] | None, float]:
        # CPU time of the computing thread (the engine's own with one intra-op thread): with "ms" it tells
        # compute from waiting for a core on a busy machine.
        c0 = time.thread_time()
        out, signed = self.node.hop(env, tensors, handoff)
        return out, signed, time.thread_time() - c0


def create_app(node: Node, *, heartbeat: Callable[[dict[str, Any]], None] | None = None,
               frames_host: str | None = None, market: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """The node's HTTP service; with ``frames_host`` also its frame port (``node.config.frame_port``).
    ``market``: a market node's chain-side summary (stake, earnings, agent), shown on its page and
    exported as metrics."""
    dispatch = HopDispatch(node)
    frames = {"port": None}
    metrics = NodeMetrics(node, None if market is None else lambda: _numbers(market()))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        app.state.http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=32))
        app.state.hops = HopClient(max_reply_bytes=node.config.max_body_bytes)
        forwarder = FrameForwarder(node.config.max_body_bytes)
        server = None
        if frames_host is not None and node.config.frame_port is not None:
            server = FrameServer(node, dispatch, forwarder)
            frames["port"] = server.start(frames_host, node.config.frame_port)
        # Probed off the event loop at start, so the first GET /capabilities does not wait seconds for it
        # (on the loop's default executor: the hop pool's threads serve hops only).
        asyncio.get_running_loop().run_in_executor(None, node.engines)
        beat = asyncio.create_task(_heartbeat_loop(node, heartbeat)) if heartbeat is not None else None
        try:
            yield
        finally:
            if beat is not None:
                beat.cancel()
            if server is not None:
                server.close()
            await app.state.http.aclose()
            await app.state.hops.aclose()
            forwarder.close()
            dispatch.pool.shutdown(wait=False)

    app = FastAPI(title="SplitUp node", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, Any]:
        # ``frames``: the TCP port taking hops as binary frames (splitup.node.frames), on this URL's host.
        return {"status": "ok", "node": node.config.node_id, "tasks": sorted(node.runners), "frames": frames["port"]}

    @app.get("/capabilities")
    def capabilities() -> dict[str, Any]:
        return node.capabilities()

    @app.get("/status")
    def status() -> dict[str, Any]:
        return node.status()

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_PAGE)

    @app.get("/api/page")
    def page_data() -> dict[str, Any]:
        out = node.page()
        if market is not None:
            try:
                out["market"] = market()
            except Exception as exc:  # the page still shows the node when the chain is unreachable
                out["market"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/tasks")
    async def preload(request: Request) -> JSONResponse:
        body = await _json_body(request)
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if not isinstance(task_id, str):
            return JSONResponse({"error": "send {\"task_id\": \"<sha256>\"}", "kind": "bad_request"}, status_code=400)
        try:
            runner = await run_in_threadpool(node.preload, task_id)
        except (StorageError, PlanError, EngineError) as exc:
            return JSONResponse({"error": str(exc), "kind": "refused"}, status_code=422)
        except NotHere as exc:
            return JSONResponse({"error": str(exc), "kind": "not_here"}, status_code=404)
        return JSONResponse({"task_id": runner.task.task_id, "index": runner.task.index, "device": runner.device})

    @app.post("/sessions")
    async def open_session(request: Request) -> JSONResponse:
        body = await _json_body(request)
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if not isinstance(task_id, str):
            return JSONResponse({"error": "send {\"task_id\": \"<sha256>\"}", "kind": "bad_request"}, status_code=400)
        try:
            session = node.open_session(task_id)
        except Exception as exc:
            return _respond(classify(exc, None))
        return JSONResponse({"session": session, "task_id": task_id, "idle_s": node.sessions.idle_s},
                            status_code=201)

    @app.get("/results/{rid}")
    def take_result(rid: str) -> Response:
        body = node.shelf.take(rid)
        if body is None:
            return JSONResponse({"error": "result unknown, expired or already taken", "kind": "lost_result"},
                                status_code=404)
        return Response(body, media_type=CONTENT_TYPE)

    @app.delete("/sessions/{session_id}")
    def close_session(session_id: str) -> JSONResponse:
        if node.sessions.close(session_id):
            return JSONResponse({"closed": session_id})
        return JSONResponse({"error": "session unknown or expired", "kind": "session"}, status_code=404)

    @app.post("/execute")
    async def execute(request: Request) -> Response:
        try:
            dispatch.admit()
        except HopFailed as exc:
            return _respond(exc)
        try:
            return await _execute(request)
        finally:
            dispatch.release()

    async def _execute(request: Request) -> Response:
        hop: int | None = None
        try:
            body = await _read_body(request, node.config.max_body_bytes)
            tensors, meta = decode(body, max_tensor_bytes=node.config.max_body_bytes)
            env = envelope_of(meta)
            hop = env.hop
            out, record, signed = await dispatch.compute(env, tensors, handoff_of(meta))
            if hop + 1 == len(env.route):
                body = encode(out)
                headers = {HOPS_HEADER: json.dumps([record])}
                if signed is not None:
                    headers[HANDOFF_HEADER] = json.dumps(signed)
                rid = node.shelf.put(body) if len(body) > node.config.park_above_bytes else None
                if rid is not None:
                    # The address the previous hop used for this node is one the route's client can use too.
                    headers[PARKED_HEADER] = f"{str(request.base_url).rstrip('/')}/results/{rid}"
                    body = b""
                return Response(body, media_type=CONTENT_TYPE, headers=headers)
            return await _forward(request.app.state, env.next(), encode(out, env.next(), signed), record)
        except HopFailed as exc:
            if exc.hop is None:
                exc.hop = hop
            return _respond(exc)
        except Exception as exc:  # a bad request must never take the node down
            return _respond(classify(exc, hop))

    return app


async def _post(app_state: Any, url: str, body: bytes, timeout: float) -> Reply:
    """Plain http:// goes through the lean hop client; anything else (https) through httpx. Either is given
    ``timeout`` seconds in all (``TimeoutError``): httpx's own timeout bounds each read, which a next node
    that trickles its answer, a byte at a time, never runs into."""
    if url.startswith("http://"):
        return await app_state.hops.post(url, body, CONTENT_TYPE, timeout)
    try:
        async with asyncio.timeout(timeout):
            r = await app_state.http.post(url, content=body, timeout=timeout,
                                          headers={"content-type": CONTENT_TYPE})
    except httpx.TimeoutException:
        raise TimeoutError(f"no reply within {timeout} s") from None
    except httpx.HTTPError as exc:
        raise ForwardError(repr(exc)) from None
    return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


async def _forward(app_state: Any, env: Envelope, body: bytes, record: dict[str, Any]) -> Response:
    """Send to the next hop and relay its answer unparsed; try stand-ins for a stateless hop that is down."""
    nxt = env.current
    remaining = len(env.route) - env.hop
    # Deeper hops give up first, so the error that comes back names the hop that really failed.
    timeout = env.hop_timeout * remaining
    urls = nxt.urls if nxt.session is None else nxt.urls[:1]  # a session lives on one node only
    failure: HopFailed | None = None
    for attempt, url in enumerate(urls):
        try:
            r = await _post(app_state, url.rstrip("/") + "/execute", body, timeout)
        except TimeoutError:
            failure = HopFailed.timed_out(env.hop, url, timeout)
            continue
        except ForwardError as exc:
            failure = HopFailed.unreachable(env.hop, url, exc)
            continue
        if r.status == 404 and nxt.session is None and _kind(r) == "not_here" and attempt + 1 < len(urls):
            continue
        hops = [record | ({"failover": attempt} if attempt else {}), *_hop_records(r)]
        headers = {HOPS_HEADER: json.dumps(hops)}
        for name in (PARKED_HEADER, HANDOFF_HEADER):  # the last node's, for the client
            if name in r.headers:
                headers[name] = r.headers[name]
        return Response(r.content, status_code=r.status, headers=headers,
                        media_type=r.headers.get("content-type", CONTENT_TYPE))
    assert failure is not None
    raise failure


def _hop_records(r: Reply) -> list[Any]:
    """The downstream nodes' timing records; a malformed header from a stranger is dropped, not fatal."""
    raw = r.headers.get(HOPS_HEADER, "[]")
    try:
        records = jsonparse.loads(raw) if len(raw) <= 16384 else []
    except ValueError:
        return []
    return records if isinstance(records, list) else []


def _kind(r: Reply) -> str | None:
    try:
        body = jsonparse.loads(r.content)
    except ValueError:
        return None
    return body.get("kind") if isinstance(body, dict) else None


async def _json_body(request: Request) -> Any:
    try:
        raw = await _read_body(request, 64 << 10)
    except HopFailed:
        return None
    try:
        return jsonparse.loads(raw)
    except ValueError:
        return None


async def _heartbeat_loop(node: Node, heartbeat: Callable[[dict[str, Any]], None]) -> None:
    while True:
        node.sessions.sweep()
        try:
            await asyncio.to_thread(heartbeat, node.status())
            node.last_heartbeat = time.time()
        except Exception:  # the market layer's problems must not stop the node serving
            log.exception("heartbeat hook failed")
        await asyncio.sleep(node.config.heartbeat_s)


def _numbers(summary: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a market summary, flattened (``agent.accepted`` -> ``agent_accepted``)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update({f"{key}_{k}": v for k, v in _numbers(value).items()})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out

