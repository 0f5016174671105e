"""OpenAI-compatible text generation: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Every request becomes one market job, paid by the gateway's wallet. Supported parameters: ``model``,
``prompt`` (one string) / ``messages``, ``max_tokens`` (or ``max_completion_tokens``), ``temperature``
(0 is greedy), ``seed``, ``stop``, ``stream``; ``n`` and ``top_p`` only at their defaults (1). Errors
use OpenAI's ``{"error": {...}}`` shape. Each answer carries ``"splitup": {"job": address}``.

Money moves last: every field, the prompt's tokens plus ``max_tokens`` against the model's context,
and the market's room are checked before a job is posted. A request at fault gets 400
``invalid_request_error`` naming the limit (OpenAI clients do not retry it); a full market gets 429
with ``Retry-After`` (they retry after it); 5xx only for failures of the market itself.
"""

from __future__ import annotations

import inspect
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from splitup import jsonparse
from splitup.errors import SplitUpError
from splitup.gateway.service import GatewayService
from splitup.sdk.catalog import CatalogError
from splitup.sdk.client import Completion, TokenEvent
from splitup.sdk.errors import MarketBusy, RequestError
from splitup.sdk.limits import check_generation

MAX_TOKENS_LIMIT = 4096
MAX_BODY_BYTES = 4 << 20
MAX_PROMPT_CHARS = 1 << 20  # tokenizing is bounded work; the context check comes right after
MAX_MESSAGES = 1024


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                 code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.code, self.retry_after = param, status, kind, code, retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, round(self.retry_after)))} if self.retry_after is not None else {}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())

    @staticmethod
    def of(exc: Exception) -> BadRequest:
        """The HTTP answer for an SDK error: the caller's fault 400, a full market 429, the market's 503."""
        if isinstance(exc, RequestError):
            return BadRequest(str(exc), exc.param, 400, "invalid_request_error", exc.code)
        if isinstance(exc, MarketBusy):
            return BadRequest(str(exc), None, 429, "rate_limit_error", "market_busy", exc.retry_after)
        return BadRequest(str(exc), None, 503, "market_error", None, 5.0)


@dataclass(frozen=True)
class GenRequest:
    model: str
    prompt_text: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    seed: int | None
    stop: list[str]
    stream: bool
    chat: bool


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be a number in [{lo}, {hi}]", key)
    return float(v)


def parse(body: Any, svc: GatewayService, *, chat: bool) -> GenRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", "model")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    if body.get("top_p", 1) not in (1, 1.0, None):
        raise BadRequest("only top_p=1 is supported (use temperature)", "top_p")
    default_max = 128 if chat else 16
    raw_max = body.get("max_completion_tokens", body.get("max_tokens", default_max))
    max_tokens = default_max if raw_max is None else raw_max
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"max_tokens must be an integer in [1, {MAX_TOKENS_LIMIT}]", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed must be an integer", "seed")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise BadRequest("stop must be a string or up to 4 strings", "stop")
    try:
        entry = svc.client.plan(model)
    except CatalogError as exc:
        raise BadRequest(str(exc), "model", 404, "model_not_found") from None
    except SplitUpError as exc:  # the chain or the store is unreachable: not the caller's fault
        raise BadRequest(f"the market is unavailable: {exc}", None, 503, "market_error", retry_after=5.0) from None
    if entry.manifest.kind != "decoder":
        raise BadRequest(f"model {model} does not generate text", "model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", "messages")
        if len(messages) > MAX_MESSAGES:
            raise BadRequest(f"at most {MAX_MESSAGES} messages", "messages")
        clean = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest("each message needs a role and content", "messages")
            content = m.get("content")
            if isinstance(content, list):  # the typed-parts form: keep the text parts
                texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
                if not all(isinstance(t, str) for t in texts):
                    raise BadRequest("a text part's text must be a string", "messages")
                content = "".join(texts)
            if not isinstance(content, str):
                raise BadRequest("message content must be text", "messages")
            if len(content) > MAX_PROMPT_CHARS:
                raise BadRequest(f"a message of {len(content)} characters exceeds the limit of {MAX_PROMPT_CHARS}",
                                 "messages", code="context_length_exceeded")
            clean.append({"role": m["role"], "content": content})
        try:
            text = svc.client.chat_prompt(entry, clean)
        except SplitUpError as exc:
            raise BadRequest(str(exc), "messages") from None
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt must be one non-empty string", "prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f"a prompt of {len(prompt)} characters exceeds the limit of {MAX_PROMPT_CHARS}",
                             "prompt", code="context_length_exceeded")
        text = prompt
    if len(text) > MAX_PROMPT_CHARS:
        raise BadRequest(f"the prompt of {len(text)} characters exceeds the limit of {MAX_PROMPT_CHARS}",
                         "messages" if chat else "prompt", code="context_length_exceeded")
    ids = svc.client.encode(entry, text, add_special_tokens=not chat)  # a template writes its own
    try:
        check_generation(entry.plan, ids, int(max_tokens), temperature, None, seed)
    except RequestError as exc:
        param = ("messages" if chat else "prompt") if exc.param == "messages" else exc.param
        raise BadRequest(str(exc), param, code=exc.code) from None
    return GenRequest(model, text, ids, int(max_tokens), temperature, seed, stop, bool(body.get("stream", False)),
                      chat)


class Run:
    """One request's generation: token events with stop strings applied, the job recorded in the service."""

    def __init__(self, svc: GatewayService, req: GenRequest) -> None:
        self.svc, self.req = svc, req
        self.text = ""
        self.held = ""  # generated text not shown yet: it may be the start of a stop string
        self.finish = "length"
        self.completion: Completion | None = None
        self.prompt_tokens = 0
        self.job = ""

    def deltas(self) -> Iterator[str]:
        svc, req = self.svc, self.req
        entry = svc.client.plan(req.model)
        ids = req.prompt_ids
        self.prompt_tokens = len(ids)

        def on_job(job: Any) -> None:
            if self.job:  # the previous job lost the race for nodes; the SDK wound it up: record that too
                svc.job_failed(self.job, "no node accepted in time; posted again")
            self.job = str(job)
            svc.job_started(job, req.model, req.prompt_text, "chat" if req.chat else "completion", entry.task_ids())

        # Admitted by the gateway already (``Admission``): the SDK does not check capacity a second time.
        events = svc.client.stream(req.model, ids, req.max_tokens, req.temperature, seed=req.seed, wait=False,
                                   on_job=on_job, admit=False)
        stopped = False
        t0 = time.perf_counter()
        tokens = 0
        placing = True
        try:
            for e in events:
                if placing:
                    placing = False
                    svc.placed(req.model)
                if isinstance(e, TokenEvent):
                    tokens += e.token_id >= 0
                    if stopped or not e.text:
                        continue
                    # After a stop string the job still runs to its end (it is paid for) but nothing is shown.
                    piece, stopped = self._cut(e.text)
                    if piece:
                        yield piece
                elif isinstance(e, Completion):
                    self.completion = e
                    if not stopped:
                        self.finish = e.finish_reason
                        tail, self.held = self.held, ""
                        self.text += tail
                        if tail:
                            yield tail
                    svc.job_generated(e.job, len(e.token_ids), e.seconds)
        except Exception as exc:
            if self.job:  # wound up in the background: commit what was computed, release the rest, refund
                svc.job_failed(self.job, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if placing:
                svc.placed(req.model)
            if self.job and self.completion is None:
                events.close()  # the SDK has the executors commit what they computed
                if tokens:  # the client went away mid-stream: settle the work that was done
                    svc.job_generated(self.job, tokens, time.perf_counter() - t0)
                else:
                    svc.job_failed(self.job, "the client went away before any token")

    def _cut(self, piece: str) -> tuple[str, bool]:
        """The text that may be shown now, and whether a stop string ended the text.

        Text that could be the beginning of a stop string is held back until the next piece decides.
        """
        buf = self.held + piece
        hits = [buf.find(s) for s in self.req.stop if s in buf]
        if hits:
            out = buf[: min(hits)]
            self.text, self.held, self.finish = self.text + out, "", "stop"
            return out, True
        keep = max((k for s in self.req.stop for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        out, self.held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        self.text += out
        return out, False

    def usage(self) -> dict[str, int]:
        done = len(self.completion.token_ids) if self.completion else 0
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}


ARRIVED = "splitup.arrived"  # the scope key under which :class:`Arrival` leaves the client it counted in
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


def client_of(scope: Mapping[str, Any]) -> str:
    """The admission queue's line of a request: its API key, or else its address (a client's burst then
    waits behind itself, not in front of others)."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return value.decode("latin-1")
    peer = scope.get("client")
    return str(peer[0]) if peer else "-"


class Arrival:
    """ASGI middleware: each generation request is counted in (:meth:`Admission.arrive`) before routing or
    reading its body, and one the gateway cannot start within its deadline gets its 429 from here, at
    the least cost a request can have: a burst of hundreds is answered while the event loop also streams
    tokens to the requests that were let in."""

    def __init__(self, app: Any, svc: GatewayService) -> None:
        self.app, self.svc = app, svc

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GENERATION_PATHS:
            who = client_of(scope)
            busy = self.svc.admission.arrive(who)
            if busy is not None:
                err = BadRequest.of(busy)
                body = json.dumps(err.body(), separators=(",", ":")).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                           *((k.encode(), v.encode()) for k, v in err.headers().items())]
                await send({"type": "http.response.start", "status": err.status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            scope[ARRIVED] = who
            try:
                await self.app(scope, receive, send)
            finally:
                if scope.pop(ARRIVED, None) is not None:  # the handler never took it up: count it out
                    self.svc.admission.depart(who)
            return
        await self.app(scope, receive, send)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def router(svc: GatewayService) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/models")
    def list_models() -> dict[str, Any]:
        entries = [e for e in svc.snapshot().models if e.manifest.kind == "decoder"]
        return {"object": "list", "data": [{"id": e.name, "object": "model", "created": 0, "owned_by": "splitup",
                                            "splitup": {"address": str(e.address), "tasks": len(e.plan.tasks)}}
                                           for e in entries]}

    async def handle(request: Request, chat: bool) -> Any:
        who = request.scope.pop(ARRIVED, None)  # taken up: from here on this handler pairs it
        if who is None:  # not through :class:`Arrival` (an app mounted without it)
            who = client_of(request.scope)
            busy = svc.admission.arrive(who)
            if busy is not None:
                return BadRequest.of(busy).response()
        entering = [False]
        try:
            return await checked(request, chat, entering, who)
        finally:
            if not entering[0]:  # refused by its checks before it queued: count it out
                svc.admission.depart(who)

    async def checked(request: Request, chat: bool, entering: list[bool], who: str) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return BadRequest(f"the body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES}", None,
                              413).response()
        try:
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                return BadRequest(f"the body exceeds the limit of {MAX_BODY_BYTES} bytes", None, 413).response()
            body = jsonparse.loads(raw)
        except ValueError:
            return BadRequest("the body is not JSON").response()
        try:
            req = await run_in_threadpool(parse, body, svc, chat=chat)
        except BadRequest as exc:
            return exc.response()
        entering[0] = True  # enter() counts it out of the arrivals itself
        try:
            await svc.admission.enter(who, req.model)
        except MarketBusy as exc:
            return BadRequest.of(exc).response()
        t0 = time.monotonic()
        run = Run(svc, req)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if req.stream:
            pieces = run.deltas()
            try:
                # Placement and the first token before the status line: a refusal still gets its code.
                first = await run_in_threadpool(next, pieces, None)
            except Exception as exc:
                svc.admission.leave(time.monotonic() - t0)
                if isinstance(exc, SplitUpError):
                    return BadRequest.of(exc).response()
                raise
            def finished() -> None:
                svc.admission.leave(time.monotonic() - t0)

            events = _stream(run, first, pieces, rid, created, req.model, chat, finished)
            return StreamingResponse(_pumped(_Pump(events, lambda: (pieces.close(), finished()))),
                                     media_type="text/event-stream", headers={"cache-control": "no-cache"})
        try:
            text = await run_in_threadpool(lambda: "".join(run.deltas()))
        except SplitUpError as exc:
            return BadRequest.of(exc).response()
        finally:
            svc.admission.leave(time.monotonic() - t0)
        choice: dict[str, Any] = {"index": 0, "finish_reason": run.finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice],
                "usage": run.usage(), "splitup": {"job": run.job}}

    @r.post("/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, chat=False)

    @r.post("/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, chat=True)

    return r


_END = object()


class _Pump:
    """A blocking generator driven from the event loop one item at a time in worker threads, and closed
    exactly once after the item in flight (if any) is done: a generator cannot be closed while it runs."""

    def __init__(self, gen: Generator[str, None, None], unstarted: Callable[[], Any]) -> None:
        self.gen, self.unstarted = gen, unstarted
        self._lock = threading.Lock()

    def next(self) -> Any:
        with self._lock:
            return next(self.gen, _END)

    def close(self) -> None:
        with self._lock:
            never_ran = inspect.getgeneratorstate(self.gen) == inspect.GEN_CREATED
            self.gen.close()  # runs the generator's own clean-up (its finally) if it started
            if never_ran:
                self.unstarted()


async def _pumped(pump: _Pump) -> AsyncIterator[str]:
    try:
        while (item := await run_in_threadpool(pump.next)) is not _END:
            yield item
    finally:
        # A client that hangs up cancels this coroutine, and every later await here would be cancelled too;
        # the clean-up blocks (the job is committed and settled), so it runs on its own thread, after the
        # item being computed for the vanished client is done.
        threading.Thread(target=pump.close, name="sse-close", daemon=True).start()


def _stream(run: Run, first: str | None, pieces: Iterator[str], rid: str, created: int, model: str, chat: bool,
            done: Any) -> Generator[str, None, None]:
    """Server-sent events: one ``data: {chunk}`` per text piece, a last chunk with the finish reason, ``[DONE]``."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {}
            if first:
                d["role"] = "assistant"
            if delta is not None:
                d["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}

    try:
        if chat:
            yield _sse(chunk("", None, first=True))
        try:
            if first is not None:
                yield _sse(chunk(first, None))
                for piece in pieces:
                    yield _sse(chunk(piece, None))
        except SplitUpError as exc:
            err = BadRequest.of(exc)
            yield _sse({"error": {"message": str(err), "type": err.kind, "param": err.param, "code": err.code}})
            return
        last = chunk(None if chat else "", run.finish)
        last["usage"] = run.usage()
        last["splitup"] = {"job": run.job}
        yield _sse(last)
        yield "data: [DONE]\n\n"
    finally:
        pieces.close()
        done()
