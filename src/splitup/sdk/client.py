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

import base64
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup import jsonparse
from splitup.market.accounts import node_endpoint, node_specialized
from splitup.market.connect import connect
from splitup.market.constants import TaskStatus
from splitup.market.errors import MarketError, TooEarlyError, TransactionFailed, WrongTaskStateError
from splitup.market.evidence import RECEIPT, Signed
from splitup.market.localnet import DEFAULT_RPC_URL
from splitup.market.market import Market, heartbeat_fresh
from splitup.market.transport import DEFAULT_PROGRAM_ID
from splitup.market.wallet import WalletLike, as_keypair, default_keypair_path
from splitup.node.bounded import CONTROL_BYTES, bounded
from splitup.sdk.capacity import TaskCapacity, fetch_statuses, market_capacity, shortfall
from splitup.sdk.catalog import Catalog, CatalogEntry
from splitup.sdk.errors import JobError, MarketBusy, RequestError
from splitup.sdk.limits import check_generation
from splitup.sdk.reports import FINAL_TASK, JobReport, job_report

DEFAULT_STORE_URL = "http://127.0.0.1:8600"
log = logging.getLogger("splitup.sdk")

__all__ = ["Client", "Completion", "JobError", "MarketBusy", "RequestError", "RunResult", "TokenEvent"]


class JobGone(JobError):
    """The job's account is not on chain: closed already, or its posting never landed."""


class NotAccepted(JobError):
    """The job was posted but no node accepted some task in time (capacity taken by another client)."""


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


def _says_released(r: httpx.Response) -> bool:
    """Whether a node's answer to "commit" is that it released the task (it computed nothing for it)."""
    try:
        body = jsonparse.loads(r.content)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("released") is True


def input_hash(obj: Any) -> bytes:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).digest()


class Client:
    def __init__(self, rpc_url: str = DEFAULT_RPC_URL, wallet: WalletLike | None = None, *,
                 store_url: str | None = None, program_id: Pubkey = DEFAULT_PROGRAM_ID,
                 market: Market | None = None, accept_timeout: float = 30.0, hop_timeout: float = 120.0,
                 deadline_slots: int = 20_000, task_timeout_slots: int = 10_000, queue_timeout: float = 0.0,
                 place_timeout: float = 90.0, wind_up_timeout: float = 300.0, template_timeout: float = 2.0) -> None:
        """``queue_timeout``: how long a request waits for room in the market before :class:`MarketBusy`
        (0: refuse at once); ``place_timeout``: how long it keeps re-posting after losing a race for
        nodes; ``wind_up_timeout``: how long winding up a failed job may take before it is left to
        :meth:`wind_up` again (its windows stay bounded by the chain either way); ``template_timeout``:
        how long rendering a model's chat template may take (any publisher writes one)."""
        self.payer: Keypair = as_keypair(wallet if wallet is not None else default_keypair_path())
        self.market = market or connect(rpc_url, self.payer, program_id)
        self.store_url = store_url or os.environ.get("SPLITUP_STORE_URL", DEFAULT_STORE_URL)
        self.catalog = Catalog(self.market, self.store_url)
        self.accept_timeout, self.hop_timeout = accept_timeout, hop_timeout
        self.deadline_slots, self.task_timeout_slots = deadline_slots, task_timeout_slots
        self.queue_timeout, self.place_timeout, self.wind_up_timeout = queue_timeout, place_timeout, wind_up_timeout
        self.template_timeout = template_timeout
        self._http = httpx.Client(timeout=hop_timeout)
        # per job, the nodes' signed receipts of their inputs as the hops bring them (PipelineClient.receipts,
        # filled in place): proved on chain when a job is wound up and a node that had its input did not
        # deliver, so it cannot leave as if never fed. Dropped when the job is closed.
        self.receipts: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
        # told (job, task index, record) of each receipt as a hop brings it (PipelineClient.on_receipt)
        self.on_receipt: Callable[[str, int, dict[str, Any]], None] | None = None

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

    def post_job(self, model: str | CatalogEntry, inputs_hash: bytes, *, max_fee: int | None = None,
                 on_job: Any = None) -> Pubkey:
        """Escrow a job; ``on_job(address)`` hears its address *before* the transaction is sent, so a caller
        that writes it down can wind the job up even if it dies (or the ledger does) mid-send. The job's
        draw secret is known by then too (:meth:`draw_secret`): a caller that keeps it with the address
        can still reveal it after a restart, so the job's tasks are drawn at their rate, not all verified."""
        entry = self.plan(model) if isinstance(model, str) else model
        nonce = self.market.fresh_nonce()
        address = self.market.job_address(self.payer.pubkey(), nonce)
        secret = secrets.token_bytes(32)
        self.keep_secret(address, secret)
        if on_job is not None:
            on_job(address)
        self.market.post_job(self.payer, entry.address, inputs_hash, max_fee=max_fee, nonce=nonce,
                             deadline_slots=self.deadline_slots, task_timeout_slots=self.task_timeout_slots,
                             secret=secret)
        return address

    def draw_secret(self, job: Pubkey) -> bytes | None:
        """The draw secret of a job this client posted, until it is revealed (None after, or if unknown)."""
        held = self.market.secrets.get(job)
        return None if held is None else held[1]

    def keep_secret(self, job: Pubkey, secret: bytes) -> None:
        """Hold ``job``'s draw secret (one written down before a restart): settling reveals it first."""
        self.market.secrets[job] = (self.payer, secret)

    def capacity(self, model: str | CatalogEntry) -> list[TaskCapacity]:
        """Per task of the model: its holders, how many answer, and how many more jobs they can take now."""
        entry = self.plan(model) if isinstance(model, str) else model
        nodes, config, slot = self.market.nodes(), self.market.config(), self.market.t.slot()
        want = {bytes.fromhex(t) for t in entry.task_ids()}
        endpoints = sorted({node_endpoint(n) for _, n in nodes
                            if want & set(node_specialized(n)) and heartbeat_fresh(n, config, slot)})
        statuses = fetch_statuses(endpoints, self._http)
        return market_capacity(nodes, config, entry.task_ids(), [int(t.price) for t in entry.info.tasks], statuses,
                               exclude_owner=self.payer.pubkey(), slot=slot)

    def admit(self, entry: CatalogEntry, wait_s: float | None = None) -> None:
        """Return once every task of ``entry`` has a node that can take it; otherwise wait up to ``wait_s``
        (default ``queue_timeout``) and raise :class:`MarketBusy`. Nothing is posted or escrowed here."""
        deadline = time.monotonic() + (self.queue_timeout if wait_s is None else wait_s)
        while True:
            caps = self.capacity(entry)
            why = shortfall(caps)
            if not why:
                return
            if time.monotonic() >= deadline:
                unheld = any(c.holders == 0 for c in caps)
                raise MarketBusy(f"the market cannot take a job of {entry.name} now: {why}",
                                 retry_after=30.0 if unheld else 1.0)
            time.sleep(0.25)

    def route(self, job: Pubkey, entry: CatalogEntry) -> list[list[str]]:
        """Wait until every task is accepted; per task the accepting node first, other holders that
        heartbeat within the config's window as stand-ins."""
        deadline = time.monotonic() + self.accept_timeout
        while True:
            info = self.market.job(job)
            if all(t.status != TaskStatus.OPEN for t in info.tasks):
                break
            if time.monotonic() > deadline:
                open_ = [i for i, t in enumerate(info.tasks) if t.status == TaskStatus.OPEN]
                raise NotAccepted(f"job {job}: no node accepted task(s) {open_} within {self.accept_timeout:.0f} s")
            time.sleep(0.1)
        nodes = dict(self.market.nodes())
        live = set(self.live_holders(entry))
        routes = []
        for i, slot in enumerate(info.tasks):
            first = node_endpoint(nodes[slot.node])
            want = bytes.fromhex(entry.task_ids()[i])
            others = [node_endpoint(n) for k, n in sorted(nodes.items(), key=lambda kv: str(kv[0]))
                      if k != slot.node and k in live and want in node_specialized(n) and node_endpoint(n)]
            routes.append([first, *others])
        return routes

    def live_holders(self, entry: CatalogEntry) -> list[Pubkey]:
        """Nodes holding some task of ``entry`` whose last on-chain heartbeat is within the config's
        window: those a job of it may be routed to (a node killed without warning drops out of this
        list one window after its last beat)."""
        want = {bytes.fromhex(t) for t in entry.task_ids()}
        return [k for k, n in self.market.live_nodes() if want & set(node_specialized(n))]

    def place(self, entry: CatalogEntry, inputs_hash: bytes, *, on_job: Any = None,
              admit: bool = True) -> tuple[Pubkey, list[list[str]]]:
        """Admit, post and wait for acceptance; a job that loses the race for nodes is wound up (its
        escrow comes back) and posted again until ``place_timeout``. Returns the job and its routes."""
        deadline = time.monotonic() + self.place_timeout
        while True:
            if admit:
                self.admit(entry)
            job = self.post_job(entry, inputs_hash, on_job=on_job)
            try:
                return job, self.route(job, entry)
            except NotAccepted as exc:
                log.info("%s; winding it up and trying again", exc)
                self.wind_up_quietly(job, model_name=entry.name, task_ids=entry.task_ids())
                if time.monotonic() > deadline:
                    raise MarketBusy(f"no node took a job of {entry.name} within {self.place_timeout:.0f} s",
                                     retry_after=2.0) from None

    def finish(self, job: Pubkey, routes: Sequence[Sequence[str]]) -> None:
        """Ask each executor to commit its transcript of the job (it signs; we only tell it we are done).
        A task committed already (a draining node commits on its own before it exits) is left alone."""
        info = self.market.job(job)
        for i, urls in enumerate(routes):
            if TaskStatus(info.tasks[i].status) != TaskStatus.ACCEPTED:
                continue
            try:
                r = bounded(self._http, "POST", f"{urls[0].rstrip('/')}/market/jobs/{job}/tasks/{i}/commit",
                            self.hop_timeout, max_bytes=CONTROL_BYTES)
                ok, why = r.status_code == 200, r.text[:300]
            except httpx.HTTPError as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if not ok and TaskStatus(self.market.job(job).tasks[i].status) == TaskStatus.ACCEPTED:
                raise JobError(f"task {i}: the executor at {urls[0]} did not commit: {why}")

    def wind_up(self, job: Pubkey, *, model_name: str = "", task_ids: Sequence[str] = (),
                timeout: float | None = None, ask: bool = True,
                before_close: Callable[[JobReport], None] | None = None) -> JobReport:
        """End a job that will not complete, leaving nothing locked.

        Tasks nobody accepted are released; every node holding an accepted task is asked to commit what
        it computed (a node that computed nothing releases the task itself, unpaid and unslashed); a task
        whose node is gone and never receipted its input is released by the client; the rest is settled
        by :meth:`wait` (a node that receipted its input and vanished is expired after its deadline: the
        liveness penalty), the job closed and the unspent escrow refunded. Safe to call again;
        ``ask=False`` skips asking the nodes (a caller that already did), ``timeout=0`` makes one pass
        (:class:`JobError` when the job is not over yet).
        """
        m = self.market
        try:
            info = m.job(job)
        except TransactionFailed:
            raise  # the chain is unreachable: nothing is known
        except MarketError:
            raise JobGone(f"job {job} is not on chain (closed, or never posted)") from None
        nodes = dict(m.nodes())
        for i, t in enumerate(info.tasks):
            status = TaskStatus(t.status)
            if status == TaskStatus.OPEN:
                self._release(job, i)
            elif status == TaskStatus.ACCEPTED:
                committing = False  # the node answered with its announcement: its commit is landing
                if ask:
                    url = node_endpoint(nodes[t.node]).rstrip("/") if t.node in nodes else ""
                    try:
                        r = bounded(self._http, "POST", f"{url}/market/jobs/{job}/tasks/{i}/commit", 30.0,
                                    max_bytes=CONTROL_BYTES)
                        committing = r.status_code == 200 and not _says_released(r)
                        if r.status_code != 200:
                            log.info("job %s task %d: %s answered %d: %s", job, i, url, r.status_code, r.text[:200])
                    except httpx.HTTPError as exc:
                        log.info("job %s task %d: %s unreachable: %r", job, i, url, exc)
                    t = m.job(job).tasks[i]
                # a node that had its input and did not deliver (gone, or "never fed" while its receipt is
                # here) is shown its receipt: it commits, or is expired after its deadline (liveness fault)
                if t.status == TaskStatus.ACCEPTED and not t.received and self._prove_receipt(job, i, t.node):
                    continue
                if ask and not committing and t.status == TaskStatus.ACCEPTED and not t.received:
                    # gone, or it gave the task up, and no receipt here: never fed, nobody's fault
                    self._release(job, i)
        return self.wait(job, self.wind_up_timeout if timeout is None else timeout, model_name=model_name,
                         task_ids=task_ids, before_close=before_close)

    def _prove_receipt(self, job: Pubkey, index: int, node: Pubkey) -> bool:
        """Prove the task's node's signed receipt of its input on chain, if a hop brought one; True if the
        chain now holds it."""
        record = self.receipts.get(str(job), {}).get((str(job), index))
        if record is None:
            return False
        try:
            owner = self.market.node_at(node).owner
            if str(owner) != record.get("signer"):
                return False  # the receipt of a node that no longer holds the task (a stand-in took over)
            signed = Signed.from_compact(bytes.fromhex(str(record["receipt"])), RECEIPT, self.market.program_id, job,
                                         index, owner)
            self.market.prove_receipt(signed, payer=self.payer)
        except (MarketError, ValueError) as exc:
            log.info("job %s task %d: receipt not proved: %s", job, index, exc)
            return False
        log.info("job %s task %d: proved the node's receipt of its input", job, index)
        return True

    def _release(self, job: Pubkey, index: int) -> None:
        try:
            self.market.release_task(self.payer, job, index)
        except WrongTaskStateError:
            pass  # accepted, committed or released meanwhile: the wait below takes it from there

    def wind_up_quietly(self, job: Pubkey, **kw: Any) -> JobReport | None:
        try:
            return self.wind_up(job, **kw)
        except (JobError, MarketError, httpx.HTTPError) as exc:
            log.warning("job %s: not wound up yet: %s", job, exc)
            return None

    def wait(self, job: Pubkey, timeout: float = 300.0, *, model_name: str = "", task_ids: Sequence[str] = (),
             close: bool = True, before_close: Callable[[JobReport], None] | None = None) -> JobReport:
        """Crank sampling and settlement until every task is final, then close the job (escrow rest returns).

        Validators and the arbiter act on their own; this only pushes the permissionless steps along.
        """
        deadline = time.monotonic() + timeout
        m = self.market
        while True:
            info = m.job(job)
            slot = m.t.slot()
            for i, t in enumerate(info.tasks):
                status = TaskStatus(t.status)
                try:
                    if status == TaskStatus.OPEN:
                        # nobody holds it (never accepted, or a late node's expiry reopened it) and the
                        # client is done with the job: its price comes back with the refund
                        m.release_task(self.payer, job, i)
                    elif status == TaskStatus.COMMITTED:
                        m.sample(job, i)
                    elif status in (TaskStatus.READY, TaskStatus.RESOLVED):
                        m.settle(job, i)
                    elif status != TaskStatus.OPEN and status not in FINAL_TASK and slot > t.deadline:
                        m.expire(job, i)
                except (TooEarlyError, WrongTaskStateError):
                    pass  # no slot hash for the draw yet; or another party moved the task on meanwhile
            info = m.job(job)
            states = [TaskStatus(t.status) for t in info.tasks]
            if all(s in FINAL_TASK for s in states):
                break
            if time.monotonic() >= deadline:
                raise JobError(f"job {job} not settled within {timeout:.0f} s: {[s.name for s in states]}")
            time.sleep(0.1)
        report = job_report(job, info, m.config(), model_name, list(task_ids))
        if close:
            # The account and its figures are gone once closed: a caller that must not lose them (a
            # gateway that may be killed right after) writes them down first.
            report.refund = int(info.header.deposit) - int(info.header.paid)
            if before_close is not None:
                before_close(report)
            before = m.t.balance(self.payer.pubkey())
            m.close_job(self.payer, job)
            self.receipts.pop(str(job), None)
            report.closed = True
            # The refund is what came back beyond the fee of the close transaction itself.
            report.refund = int(info.header.deposit) - int(info.header.paid)
            report.extra["close_balance_delta"] = m.t.balance(self.payer.pubkey()) - before
        return report

    # --- one call ------------------------------------------------------------------------------------------
    def run(self, model: str, inputs: Mapping[str, np.ndarray], *, wait: bool = True) -> RunResult:
        """One stateless pass of any task graph through the market."""
        from splitup.client.pipeline import PipelineClient, plan_sends
        from splitup.node.wire import Hop

        entry = self.plan(model)
        want = [o.name for o in entry.plan.outputs]
        initial, sends = plan_sends(entry.plan.tasks, want)
        missing = [n for n in initial if n not in inputs]
        if missing:
            raise RequestError(f"inputs missing: {', '.join(missing)}", missing[0])
        digest = hashlib.sha256()
        for name in sorted(inputs):
            digest.update(name.encode() + np.ascontiguousarray(inputs[name]).tobytes())
        t0 = time.perf_counter()
        job, routes = self.place(entry, digest.digest())
        try:
            with PipelineClient(entry.plan, [r[:1] for r in routes], hop_timeout=self.hop_timeout) as pc:
                self.receipts[str(job)] = pc.receipts
                pc.on_receipt = self.on_receipt
                hops = [Hop(list(r[:1]), t.task_id, s) for r, t, s in zip(routes, entry.plan.tasks, sends, strict=True)]
                outputs = pc.call(hops, {n: np.asarray(inputs[n]) for n in initial}, str(job))
        except Exception as exc:
            self.wind_up_quietly(job, model_name=entry.name, task_ids=entry.task_ids())
            typed = _typed(exc)
            if typed is exc:
                raise
            raise typed from exc
        seconds = time.perf_counter() - t0
        self.finish(job, routes)
        report = self.wait(job, model_name=entry.name, task_ids=entry.task_ids()) if wait else None
        return RunResult({k: outputs[k] for k in want}, str(job), seconds, report)

    def encode(self, model: str | CatalogEntry, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; a chat prompt is encoded without ``add_special_tokens``, as transformers
        encodes one: its template wrote the special tokens it wants (``{{ bos_token }}``)."""
        entry = self.plan(model) if isinstance(model, str) else model
        return list(self.catalog.tokenizer(entry).encode(text, add_special_tokens=add_special_tokens).ids)

    def chat_prompt(self, model: str | CatalogEntry, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text for chat ``messages``, from the model's own chat template: rendered sandboxed, in a
        worker process bounded in time (``template_timeout``), memory and output."""
        from splitup.chat.renderer import RenderLimits, render_chat

        entry = self.plan(model) if isinstance(model, str) else model
        if not entry.manifest.chat_template:
            raise RequestError(f"model {entry.name} has no chat template", "messages")
        return render_chat(entry.manifest.chat_template, messages, add_generation_prompt=True,
                           special_tokens=entry.manifest.special_tokens,
                           limits=RenderLimits(seconds=self.template_timeout))

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
               on_job: Any = None, admit: bool = True) -> Iterator[TokenEvent | Completion]:
        """Token events as they arrive, then the :class:`Completion` (after settlement when ``wait``).

        The request is checked against the model's limits (:class:`RequestError`) and admitted against
        the market's free capacity (:class:`MarketBusy`; ``admit=False`` when the caller admits itself)
        before anything is posted. A job that fails or is abandoned is wound up: with ``wait`` here, before
        the error reaches the caller; without, the executors commit what they computed and the caller
        winds the job up (:meth:`wind_up`)."""
        from splitup.client.pipeline import PipelineClient
        from splitup.client.sampling import decoding_for, pick_token

        entry = self.plan(model)
        if entry.manifest.kind != "decoder":
            raise RequestError(f"model {entry.name} does not generate text (kind {entry.manifest.kind})", "model")
        tok = self.catalog.tokenizer(entry)
        ids = list(prompt) if not isinstance(prompt, str) else list(tok.encode(prompt).ids)
        check_generation(entry.plan, ids, max_tokens, temperature, top_k, seed)
        params = {"prompt_ids": ids, "max_tokens": max_tokens, "temperature": temperature, "seed": seed,
                  "top_k": top_k}
        t0 = time.perf_counter()
        job, routes = self.place(entry, input_hash(params), on_job=on_job, admit=admit)
        accepted = time.perf_counter()
        eos = set(entry.manifest.eos_ids)
        decoding = decoding_for(temperature, top_k, seed)
        out: list[int] = []
        finish = "length"
        detok = Detokenizer(tok)
        complete = False
        served_by: list[str] = []
        try:
            with PipelineClient(entry.plan, routes, hop_timeout=self.hop_timeout) as pc, pc.session() as gen:
                self.receipts[str(job)] = pc.receipts
                pc.on_receipt = self.on_receipt
                gen.job = str(job)  # nodes record their hops under the chain job they accepted
                gen.decoding = decoding
                served_by = gen.places_urls  # updated in place when a stand-in takes a task over

                def moved(k: int, url: str) -> None:
                    # At once, before the failed node (restarted) gives the task up as lost.
                    routes[:] = self._take_overs(job, routes, [r[0] if i != k else url
                                                               for i, r in enumerate(routes)])

                gen.on_move = moved
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
        except Exception as exc:
            typed = _typed(exc)
            if typed is exc:
                raise
            raise typed from exc
        finally:
            # A task a stand-in finished (its node failed mid-job) becomes the stand-in's on chain: paid.
            routes = self._take_overs(job, routes, served_by)
            if not complete:
                # Abandoned (the caller stopped reading) or failed: the nodes did work they accepted on
                # chain; they commit it (or release what got no input), and the job is wound up.
                if wait:
                    self.wind_up_quietly(job, model_name=entry.name, task_ids=entry.task_ids())
                else:
                    self._finish_quietly(job, routes)
        generated = time.perf_counter()
        tail = detok.flush()
        if tail:
            yield TokenEvent(-1, tail)
        report = None
        if wait:
            # Commit, settle and close; an executor that cannot commit now is asked again while winding up.
            try:
                self.finish(job, routes)
            except (JobError, httpx.HTTPError) as exc:
                log.info("job %s: %s; winding up", job, exc)
            committed = time.perf_counter()
            report = self.wind_up(job, model_name=entry.name, task_ids=entry.task_ids())
        else:
            self._finish_quietly(job, routes)  # the caller settles or winds up (it has the job's address)
            committed = time.perf_counter()
        timings = {"accept": accepted - t0, "generate": generated - accepted, "commit": committed - generated,
                   "settle": time.perf_counter() - committed if wait else 0.0}
        yield Completion(text=detok.shown, token_ids=out, prompt_tokens=len(ids), finish_reason=finish,
                         job=str(job), seconds=generated - accepted, report=report, route=[r[0] for r in routes],
                         timings=timings)

    def _take_overs(self, job: Pubkey, routes: list[list[str]], served_by: Sequence[str]) -> list[list[str]]:
        """For each task that ended on another node than the one that accepted it, ask that stand-in to
        take the task over on chain (the client signs, the stand-in co-signs); the routes with the new
        executors first. A takeover that fails leaves the task to the wind-up (release or expiry)."""
        from splitup.market.cosign import takeover_request

        out = [list(r) for r in routes]
        for k, url in enumerate(served_by):
            if k >= len(out) or url == out[k][0]:
                continue
            try:
                agent = bounded(self._http, "GET", f"{url.rstrip('/')}/market/agent", 10.0, max_bytes=CONTROL_BYTES)
                owner = Pubkey.from_string(jsonparse.loads(agent.content)["owner"])
                raw = takeover_request(self.market, self.payer, owner, job, k)
                r = bounded(self._http, "POST", f"{url.rstrip('/')}/market/jobs/{job}/tasks/{k}/take_over", 30.0,
                            max_bytes=CONTROL_BYTES, json={"tx": base64.b64encode(raw).decode()})
                if r.status_code != 200:
                    raise JobError(r.text[:300])
            except (JobError, MarketError, httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
                log.warning("job %s task %d: the stand-in at %s did not take over: %s", job, k, url, exc)
                continue
            log.info("job %s task %d: taken over by the stand-in at %s", job, k, url)
            out[k] = [url, *[u for u in out[k] if u != url]]
        return out

    def _finish_quietly(self, job: Pubkey, routes: Sequence[Sequence[str]]) -> None:
        try:
            self.finish(job, routes)
        except (JobError, httpx.HTTPError) as exc:
            log.warning("job %s: not every executor could commit: %s", job, exc)


def _typed(exc: Exception) -> Exception:
    """A node's refusal of the request (4xx) as :class:`RequestError`, a full market as :class:`MarketBusy`;
    anything else unchanged."""
    from splitup.client.pipeline import NodeFailure

    if isinstance(exc, NodeFailure) and exc.status is not None:
        if exc.status == 429:
            return MarketBusy(f"the nodes are full: {exc}", retry_after=1.0)
        if 400 <= exc.status < 500 and exc.kind in ("context_limit", "bad_request"):
            return RequestError(f"a node refused the request: {exc}", None, exc.kind)
    return exc
