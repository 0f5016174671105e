"""``splitup.Client``: run a model on the market from Python.

    client = splitup.Client("http://127.0.0.1:8899", "~/.config/solana/id.json", store_url="http://127.0.0.1:8600")
    print(client.generate("smollm2-135m", "The capital of France is", max_tokens=16).text)

Underneath, one job is: ``plan`` (the model's manifest and plan, found by its on-chain hash in the
blob store) -> ``post_job`` (escrow on chain) -> the nodes that hold the tasks accept them -> the
client drives the pipeline through those nodes (activations pass node to node) -> each executor
commits its transcript -> ``wait`` cranks sampling and settlement while validators check the drawn
tasks -> the job is closed and the rest of the escrow comes back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.errors import SplitUpError
from splitup.market.accounts import node_endpoint, node_specialized
from splitup.market.constants import TaskStatus
from splitup.market.errors import TooEarlyError, WrongTaskStateError
from splitup.market.localnet import DEFAULT_RPC_URL
from splitup.market.market import Market
from splitup.market.transport import DEFAULT_PROGRAM_ID
from splitup.market.wallet import default_keypair_path
from splitup.sdk.catalog import Catalog, CatalogEntry
from splitup.sdk.chain import WalletLike, as_keypair, connect
from splitup.sdk.reports import JobReport, job_report

DEFAULT_STORE_URL = "http://127.0.0.1:8600"
log = logging.getLogger("splitup.sdk")
_TERMINAL = (TaskStatus.SETTLED, TaskStatus.FAILED)


class JobError(SplitUpError):
    """A job could not be placed, run or settled."""


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (end-of-sequence) or "length"
    job: str
    seconds: float
    report: JobReport | None = None
    route: list[str] = field(default_factory=list)
    # seconds: waiting for nodes to accept, generating (prefill included), committing, settling
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    job: str
    seconds: float
    report: JobReport | None = None


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    text: str  # the new text this token completes (may be empty inside a multi-byte character)


class Detokenizer:
    """Turns a growing token list into text deltas without splitting a multi-byte character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        now = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if now.endswith("\ufffd"):
            return ""
        delta, self.shown = now[len(self.shown):], now
        return delta

    def flush(self) -> str:
        now = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        delta, self.shown = now[len(self.shown):], now
        return delta


def input_hash(obj: Any) -> bytes:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).digest()


class Client:
    def __init__(self, rpc_url: str = DEFAULT_RPC_URL, wallet: WalletLike | None = None, *,
                 store_url: str | None = None, program_id: Pubkey = DEFAULT_PROGRAM_ID,
                 market: Market | None = None, accept_timeout: float = 60.0, hop_timeout: float = 120.0,
                 deadline_slots: int = 20_000, task_timeout_slots: int = 10_000) -> None:
        self.payer: Keypair = as_keypair(wallet if wallet is not None else default_keypair_path())
        self.market = market or connect(rpc_url, self.payer, program_id)
        self.store_url = store_url or os.environ.get("SPLITUP_STORE_URL", DEFAULT_STORE_URL)
        self.catalog = Catalog(self.market, self.store_url)
        self.accept_timeout, self.hop_timeout = accept_timeout, hop_timeout
        self.deadline_slots, self.task_timeout_slots = deadline_slots, task_timeout_slots
        self._http = httpx.Client(timeout=hop_timeout)

    def close(self) -> None:
        self.catalog.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the market, step by step -------------------------------------------------------------------------
    def models(self) -> list[CatalogEntry]:
        return self.catalog.entries()

    def plan(self, model: str) -> CatalogEntry:
        """The model's chain record, manifest and plan (tasks in pipeline order)."""
        return self.catalog.get(model)

    def post_job(self, model: str | CatalogEntry, inputs_hash: bytes, *, max_fee: int | None = None) -> Pubkey:
        entry = self.plan(model) if isinstance(model, str) else model
        res = self.market.post_job(self.payer, entry.address, inputs_hash, max_fee=max_fee,
                                   deadline_slots=self.deadline_slots, task_timeout_slots=self.task_timeout_slots)
        assert res.address is not None
        return res.address

    def route(self, job: Pubkey, entry: CatalogEntry) -> list[list[str]]:
        """Wait until every task is accepted; per task the accepting node first, other holders as stand-ins."""
        deadline = time.monotonic() + self.accept_timeout
        while True:
            info = self.market.job(job)
            if all(t.status != TaskStatus.OPEN for t in info.tasks):
                break
            if time.monotonic() > deadline:
                open_ = [i for i, t in enumerate(info.tasks) if t.status == TaskStatus.OPEN]
                raise JobError(f"job {job}: no node accepted task(s) {open_} within {self.accept_timeout:.0f} s")
            time.sleep(0.1)
        nodes = dict(self.market.nodes())
        routes = []
        for i, slot in enumerate(info.tasks):
            first = node_endpoint(nodes[slot.node])
            want = bytes.fromhex(entry.task_ids()[i])
            others = [node_endpoint(n) for k, n in sorted(nodes.items(), key=lambda kv: str(kv[0]))
                      if k != slot.node and want in node_specialized(n) and node_endpoint(n)]
            routes.append([first, *others])
        return routes

    def finish(self, job: Pubkey, routes: Sequence[Sequence[str]]) -> None:
        """Ask each executor to commit its transcript of the job (it signs; we only tell it we are done)."""
        for i, urls in enumerate(routes):
            r = self._http.post(f"{urls[0].rstrip('/')}/market/jobs/{job}/tasks/{i}/commit")
            if r.status_code != 200:
                raise JobError(f"task {i}: the executor at {urls[0]} did not commit: {r.text[:300]}")

    def _finish_quietly(self, job: Pubkey, routes: Sequence[Sequence[str]]) -> None:
        try:
            self.finish(job, routes)
        except (JobError, httpx.HTTPError) as exc:
            log.warning("job %s: not every executor could commit: %s", job, exc)

    def wait(self, job: Pubkey, timeout: float = 300.0, *, model_name: str = "", task_ids: Sequence[str] = (),
             close: bool = True) -> JobReport:
        """Crank sampling and settlement until every task is final, then close the job (escrow rest returns).

        Validators and the arbiter act on their own; this only pushes the permissionless steps along.
        """
        deadline = time.monotonic() + timeout
        m = self.market
        while True:
            info = m.job(job)
            for i, t in enumerate(info.tasks):
                status = TaskStatus(t.status)
                try:
                    if status == TaskStatus.COMMITTED:
                        m.sample(job, i)
                    elif status in (TaskStatus.READY, TaskStatus.RESOLVED):
                        m.settle(job, i)
                    elif status != TaskStatus.OPEN and status not in _TERMINAL and m.t.slot() > t.deadline:
                        m.expire(job, i)
                except (TooEarlyError, WrongTaskStateError):
                    pass  # no slot hash for the draw yet; or another party moved the task on meanwhile
            info = m.job(job)
            if all(TaskStatus(t.status) in _TERMINAL for t in info.tasks):
                break
            if time.monotonic() > deadline:
                states = [TaskStatus(t.status).name for t in info.tasks]
                raise JobError(f"job {job} not settled within {timeout:.0f} s: {states}")
            time.sleep(0.1)
        report = job_report(job, info, m.config(), model_name, list(task_ids))
        if close:
            before = m.t.balance(self.payer.pubkey())
            m.close_job(self.payer, job)
            report.closed = True
            # The refund is what came back beyond the fee of the close transaction itself.
            report.refund = int(info.header.deposit) - int(info.header.paid)
            report.extra["close_balance_delta"] = m.t.balance(self.payer.pubkey()) - before
        return report

    # --- one call ------------------------------------------------------------------------------------------
    def run(self, model: str, inputs: Mapping[str, np.ndarray], *, wait: bool = True) -> RunResult:
        """One stateless pass of any task graph through the market."""
        from splitup.client.pipeline import PipelineClient, PipelineError, plan_sends
        from splitup.node.wire import Hop

        entry = self.plan(model)
        digest = hashlib.sha256()
        for name in sorted(inputs):
            digest.update(name.encode() + np.ascontiguousarray(inputs[name]).tobytes())
        job = self.post_job(entry, digest.digest())
        t0 = time.perf_counter()
        routes = self.route(job, entry)
        want = [o.name for o in entry.plan.outputs]
        initial, sends = plan_sends(entry.plan.tasks, want)
        missing = [n for n in initial if n not in inputs]
        if missing:
            raise PipelineError(f"inputs missing: {', '.join(missing)}")
        with PipelineClient(entry.plan, [r[:1] for r in routes], hop_timeout=self.hop_timeout) as pc:
            hops = [Hop(list(r[:1]), t.task_id, s) for r, t, s in zip(routes, entry.plan.tasks, sends, strict=True)]
            outputs = pc.call(hops, {n: np.asarray(inputs[n]) for n in initial}, str(job))
        seconds = time.perf_counter() - t0
        self.finish(job, routes)
        report = self.wait(job, model_name=entry.name, task_ids=entry.task_ids()) if wait else None
        return RunResult({k: outputs[k] for k in want}, str(job), seconds, report)

    def encode(self, model: str | CatalogEntry, text: str) -> list[int]:
        entry = self.plan(model) if isinstance(model, str) else model
        return list(self.catalog.tokenizer(entry).encode(text).ids)

    def chat_prompt(self, model: str | CatalogEntry, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text for chat ``messages``, from the model's own chat template (rendered sandboxed)."""
        from splitup.models.real import render_chat

        entry = self.plan(model) if isinstance(model, str) else model
        if not entry.manifest.chat_template:
            raise JobError(f"model {entry.name} has no chat template")
        return render_chat(entry.manifest.chat_template, messages, add_generation_prompt=True)

    def generate(self, model: str, prompt: str, max_tokens: int = 64, temperature: float = 0.0, *,
                 stream: bool = False, seed: int | None = None, top_k: int | None = None,
                 wait: bool = True) -> Completion | Iterator[str]:
        """Text from a decoder on the market; ``stream=True`` gives the text piece by piece instead."""
        events = self.stream(model, prompt, max_tokens, temperature, seed=seed, top_k=top_k, wait=wait)
        if stream:
            return (e.text for e in events if isinstance(e, TokenEvent) and e.text)
        for e in events:
            if isinstance(e, Completion):
                return e
        raise JobError("generation ended without a result")

    def stream(self, model: str, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.0, *,
               seed: int | None = None, top_k: int | None = None, wait: bool = True,
               on_job: Any = None) -> Iterator[TokenEvent | Completion]:
        """Token events as they arrive, then the :class:`Completion` (after settlement when ``wait``)."""
        from splitup.client.pipeline import PipelineClient
        from splitup.client.sampling import decoding_for, pick_token

        if max_tokens < 1:
            raise JobError("max_tokens must be at least 1")
        entry = self.plan(model)
        if entry.manifest.kind != "decoder":
            raise JobError(f"model {entry.name} does not generate text (kind {entry.manifest.kind})")
        tok = self.catalog.tokenizer(entry)
        ids = list(prompt) if not isinstance(prompt, str) else list(tok.encode(prompt).ids)
        if not ids:
            raise JobError("the prompt is empty")
        params = {"prompt_ids": ids, "max_tokens": max_tokens, "temperature": temperature, "seed": seed,
                  "top_k": top_k}
        job = self.post_job(entry, input_hash(params))
        if on_job is not None:
            on_job(job)
        t0 = time.perf_counter()
        routes = self.route(job, entry)
        accepted = time.perf_counter()
        eos = set(entry.manifest.eos_ids)
        decoding = decoding_for(temperature, top_k, seed)
        out: list[int] = []
        finish = "length"
        detok = Detokenizer(tok)
        complete = False
        try:
            with PipelineClient(entry.plan, routes, hop_timeout=self.hop_timeout) as pc, pc.session() as gen:
                gen.job = str(job)  # nodes record their hops under the chain job they accepted
                gen.decoding = decoding
                feed = np.asarray([ids], dtype=np.int64)
                for _ in range(max_tokens):
                    logits = gen.step(feed)
                    token = pick_token(logits[0, -1], decoding, len(ids) + len(out))
                    if token in eos:
                        finish = "stop"
                        break
                    out.append(token)
                    yield TokenEvent(token, detok.push(token))
                    feed = np.asarray([[token]], dtype=np.int64)
            complete = True
        finally:
            if not complete:
                # Abandoned (the caller stopped reading, or a failure): the nodes did work they accepted on
                # chain; let them commit it, or they would be slashed for missing their deadline.
                self._finish_quietly(job, routes)
        generated = time.perf_counter()
        tail = detok.flush()
        if tail:
            yield TokenEvent(-1, tail)
        self.finish(job, routes)
        committed = time.perf_counter()
        report = self.wait(job, model_name=entry.name, task_ids=entry.task_ids()) if wait else None
        timings = {"accept": accepted - t0, "generate": generated - accepted, "commit": committed - generated,
                   "settle": time.perf_counter() - committed if wait else 0.0}
        yield Completion(text=detok.shown, token_ids=out, prompt_tokens=len(ids), finish_reason=finish,
                         job=str(job), seconds=generated - accepted, report=report, route=[r[0] for r in routes],
                         timings=timings)

