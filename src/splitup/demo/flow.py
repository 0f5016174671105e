"""``splitup demo``: the whole marketplace on this machine, one job through it, and the accounts after.

Order: load and split the model -> run it whole once (the reference) -> start the local ledger and a
blob store -> create wallets, fund them, configure the market -> publish and register the model ->
start the node processes (each preloads its tasks, stakes and specialises) -> a client posts a job
and generates through the nodes while PoSP runs -> settle, close, read the chain -> summary.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from solders.keypair import Keypair

from splitup.demo.models import DemoModel, load_demo_model, node_budgets
from splitup.demo.procs import ProcessError, Processes, free_port
from splitup.market.accounts import node_endpoint
from splitup.market.market import LAMPORTS_PER_SOL, MarketParams
from splitup.market.wallet import save_keypair

SOL = LAMPORTS_PER_SOL
NODE_NAMES = ("node-a", "node-b", "node-c", "node-d")


@dataclass
class DemoOptions:
    smaller: bool = False
    workdir: Path = Path(".splitup/demo")
    prompt: str = "What is the capital of France? Answer in one sentence."
    max_tokens: int = 40
    tasks: int = 3
    nodes: int = 4
    # The chain's default base rate is 8% (docs/posp.md); the demo raises it so that a verification shows.
    verify_rate_bps: int = 5_000
    slot_ms: int = 100
    workspace: int = 64 << 20
    serve_console: bool = False  # keep everything running with the gateway/console until Ctrl-C
    gateway_port: int = 8000


@dataclass
class NodeRow:
    name: str
    owner: str
    address: str
    url: str
    budget: int
    holds: list[int]
    primary: list[int]
    stake_before: int
    stake_after: int
    balance_before: int
    balance_after: int
    tasks_done: int
    verified: int
    failed: int


@dataclass
class TaskRow:
    index: int
    layers: str
    vram: int
    executor: str
    validator: str | None
    status: str
    verdict: str
    price: int
    node_paid: int
    validator_paid: int


@dataclass
class Summary:
    model: str
    prompt: str
    text: str
    reference_text: str
    token_ids: list[int]
    reference_ids: list[int]
    seconds: float
    reference_seconds: float
    verify_rate_bps: int
    job: str
    tasks: list[TaskRow]
    nodes: list[NodeRow]
    client_before: int
    client_after: int
    escrow_deposit: int
    escrow_paid: int
    refund: int
    fees: int
    treasury_before: int
    treasury_after: int
    node_paid: int
    validator_paid: int
    slashed: int
    rulings: int
    workdir: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return self.token_ids == self.reference_ids and self.text == self.reference_text

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds else 0.0

    @property
    def reference_tokens_per_s(self) -> float:
        return len(self.reference_ids) / self.reference_seconds if self.reference_seconds else 0.0

    @property
    def verified(self) -> int:
        return sum(t.verdict != "none" for t in self.tasks)


class Ui:
    """Rich progress bars, or silence (tests)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console: Any = None
        if enabled:
            from rich.console import Console

            self.console = Console()

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    @contextmanager
    def bar(self, what: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.console is None:
            yield lambda n: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console, transient=False) as p:
            task = p.add_task(what, total=total)
            yield lambda n: p.update(task, completed=n)


def reference_run(model: DemoModel, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], float]:
    """Greedy tokens from the whole, unsplit model in one onnxruntime session (stopping before end-of-text)."""
    from splitup.models.generate import OrtDecoder, generate

    dec = OrtDecoder(model.graph, threads=1)
    t0 = time.perf_counter()
    out = generate(dec, prompt_ids, max_tokens, model.eos_ids, chunk=dec.max_seq)
    seconds = time.perf_counter() - t0
    return [t for t in out if t not in model.eos_ids], seconds


def run_demo(opts: DemoOptions, progress: Ui | None = None,
             on_ready: Callable[[dict[str, Any]], None] | None = None,
             inspect: Callable[[Summary, dict[str, Any]], None] | None = None) -> Summary:
    """Run the demo; every process it starts is stopped before this returns or raises."""
    from tokenizers import Tokenizer

    from splitup.models.real import render_chat
    from splitup.partition.plan import make_plan
    from splitup.sdk.agent import Arbiter
    from splitup.sdk.catalog import publish_model
    from splitup.sdk.chain import connect
    from splitup.sdk.client import Client
    from splitup.storage import BlobStore

    ui = progress or Ui(False)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    root = Path(opts.workdir)
    if root.exists():
        shutil.rmtree(root)
    for sub in ("wallets", "logs", "store", "ledger", "plan", "cache"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    ui.say(f"[bold]1. Model[/bold]: loading {'the tiny zoo model' if opts.smaller else 'SmolLM2-135M from its package'}")
    model = load_demo_model(opts.smaller)
    # A tiny model is smaller than any workspace allowance: plan it on its own bytes.
    workspace = 0 if opts.smaller else opts.workspace
    budgets = node_budgets(model.graph, opts.nodes, opts.tasks, workspace)
    plan = make_plan(model.graph, model.name, budgets, workspace_bytes=workspace, out_dir=root / "plan").plan
    tok = Tokenizer.from_str(model.tokenizer_json)
    prompt_text = render_chat(model.chat_template, [{"role": "user", "content": opts.prompt}]) \
        if model.chat_template else opts.prompt
    prompt_ids = list(tok.encode(prompt_text).ids)
    ui.say(f"   split into {len(plan.tasks)} tasks for nodes of "
           f"{', '.join(f'{b / 2**20:.0f} MiB' for b in budgets)}")
    reference_ids, reference_seconds = reference_run(model, prompt_ids, opts.max_tokens)
    reference_text = str(tok.decode(reference_ids, skip_special_tokens=True))
    ui.say(f"   single-process reference: {len(reference_ids)} tokens in {reference_seconds:.1f} s")
    graph_model, model.graph = model.graph, None  # type: ignore[assignment]  # free it before the nodes load
    del graph_model
    timings["model"] = time.perf_counter() - t_start

    holds, primary = _placement(plan, budgets, opts.nodes)
    with Processes(root / "logs") as procs:
        ui.say("[bold]2. Network[/bold]: local ledger and blob store")
        rpc_port, store_port = free_port(), free_port()
        ledger = procs.start("ledger", ["-m", "splitup", "ledger", "start", "--dir", str(root / "ledger"),
                                        "--port", str(rpc_port), "--slot-ms", str(opts.slot_ms)],
                             f"http://127.0.0.1:{rpc_port}")
        store = BlobStore(root / "store")
        storep = procs.start("store", ["-m", "splitup", "store", "serve", "--dir", str(root / "store"),
                                       "--port", str(store_port)], f"http://127.0.0.1:{store_port}")
        procs.wait_http(ledger)
        procs.wait_http(storep)

        wallets = {n: Keypair() for n in ("authority", "client", *NODE_NAMES[: opts.nodes])}
        for name, kp in wallets.items():
            save_keypair(kp, root / "wallets" / f"{name}.json")
        authority = wallets["authority"]
        market = connect(ledger.url, authority)
        for name, kp in wallets.items():
            market.t.airdrop(kp.pubkey(), (20 if name in ("authority", "client") else 10) * SOL)
        params = MarketParams.flat(opts.verify_rate_bps, validator_timeout_slots=6_000, unbonding_slots=100)
        market.init_config(authority, params)
        published = publish_model(market, authority, root / "plan", store, kind="decoder",
                                  tokenizer_json=model.tokenizer_json, chat_template=model.chat_template,
                                  bos_id=model.bos_id, eos_ids=model.eos_ids, description=model.description)
        ui.say(f"   ledger {ledger.url}, store {storep.url}; model registered at {published.address}")

        ui.say(f"[bold]3. Nodes[/bold]: {opts.nodes} processes, each with its own wallet and stake")
        node_urls: dict[str, str] = {}
        children = []
        for k in range(opts.nodes):
            name = NODE_NAMES[k]
            port = free_port()
            ids = [plan.tasks[i].task_id for i in holds[k]]
            args = ["-m", "splitup.demo.node", "--keypair", str(root / "wallets" / f"{name}.json"),
                    "--rpc-url", ledger.url, "--store", storep.url, "--port", str(port), "--node-id", name,
                    "--tasks", ",".join(ids), "--primary", ",".join(plan.tasks[i].task_id for i in primary[k]),
                    "--stake", str((2 + k) * SOL), "--vram", str(budgets[k]),
                    "--cache", str(root / "cache" / name)]
            children.append(procs.start(name, args, f"http://127.0.0.1:{port}"))
            node_urls[name] = children[-1].url
        total = sum(len(h) for h in holds)
        t0 = time.perf_counter()
        with ui.bar("downloading and preloading task bundles", total) as advance:
            for c in children:
                procs.wait_http(c)
            while True:
                states = [httpx.get(c.url + "/market/startup", timeout=5).json() for c in children]
                advance(sum(s["preloaded"] for s in states))
                failed = [(c.name, s["error"]) for c, s in zip(children, states, strict=True) if s["phase"] == "failed"]
                if failed:
                    raise ProcessError(f"node startup failed: {failed}")
                if all(s["phase"] == "ready" for s in states):
                    break
                for c in children:
                    c.check_alive()
                if time.perf_counter() - t0 > 300:
                    raise ProcessError("nodes not ready after 300 s")
                time.sleep(0.2)
        timings["nodes"] = time.perf_counter() - t0

        arbiter = Arbiter(connect(ledger.url, authority), authority, storep.url, root / "cache" / "arbiter")
        arbiter.start()
        owners = {name: wallets[name].pubkey() for name in NODE_NAMES[: opts.nodes]}
        client_kp = wallets["client"]
        before = _accounts(market, owners, client_kp)
        if on_ready is not None:
            on_ready({"rpc_url": ledger.url, "store_url": storep.url, "client_wallet": root / "wallets" / "client.json"})

        ui.say(f"[bold]4. Job[/bold]: the client escrows the fee and generates {opts.max_tokens} tokens through the nodes "
               f"(PoSP verification rate {opts.verify_rate_bps / 100:.0f}% in this demo; the chain default is 8%)")
        client = Client(ledger.url, client_kp, store_url=storep.url, market=connect(ledger.url, client_kp))
        completion = None
        t0 = time.perf_counter()
        try:
            with ui.bar("generating", opts.max_tokens) as advance:
                n = 0
                for event in client.stream(model.name, prompt_ids, opts.max_tokens, 0.0):
                    if hasattr(event, "report"):
                        completion = event
                    elif event.token_id >= 0:  # -1: the text tail flushed after the last token
                        n += 1
                        advance(n)
        finally:
            client.close()
            arbiter.stop()
        assert completion is not None and completion.report is not None
        timings["job"] = time.perf_counter() - t0
        after = _accounts(market, owners, client_kp)
        config_after = market.config()
        by_address = {str(market.node_address(pk)): name for name, pk in owners.items()}
        report = completion.report
        summary = Summary(
            model=model.name, prompt=opts.prompt, text=completion.text, reference_text=reference_text,
            token_ids=completion.token_ids, reference_ids=reference_ids, seconds=completion.seconds,
            reference_seconds=reference_seconds, verify_rate_bps=opts.verify_rate_bps, job=completion.job,
            tasks=[TaskRow(t.index, ", ".join(plan.tasks[t.index].layers[:1] + plan.tasks[t.index].layers[-1:]),
                           plan.tasks[t.index].vram_bytes, by_address.get(t.node or "", t.node or "-"),
                           by_address.get(t.validator or "", t.validator) if t.validator else None,
                           t.status, t.verdict, t.price, t.node_paid, t.validator_paid) for t in report.tasks],
            nodes=[NodeRow(name, str(owners[name]), str(market.node_address(owners[name])), node_urls[name],
                           budgets[k], holds[k], primary[k], before["stake"][name], after["stake"][name],
                           before["balance"][name], after["balance"][name], after["node"][name].tasks_done,
                           after["node"][name].verified, after["node"][name].failed)
                   for k, name in enumerate(owners)],
            client_before=before["client"], client_after=after["client"], escrow_deposit=report.deposit,
            escrow_paid=report.paid, refund=report.refund, fees=sum(t.fee for t in report.tasks),
            treasury_before=before["treasury"], treasury_after=config_after.treasury,
            node_paid=sum(t.node_paid for t in report.tasks), validator_paid=sum(t.validator_paid for t in report.tasks),
            slashed=sum(t.node_slashed + t.validator_slashed for t in report.tasks), rulings=len(arbiter.rulings),
            workdir=str(root), timings=timings,
        )
        for name, url in node_urls.items():
            assert node_endpoint(after["node"][name]) == url
        if inspect is not None:  # while the network still runs: tests read the chain themselves
            inspect(summary, {"rpc_url": ledger.url, "store_url": storep.url, "wallets": wallets})
        if opts.serve_console:
            _serve_console(ui, ledger.url, storep.url, root / "wallets" / "client.json", opts.gateway_port, procs)
        timings["total"] = time.perf_counter() - t_start
        return summary


def _placement(plan, budgets: list[int], nodes: int) -> tuple[list[list[int]], list[list[int]]]:  # noqa: ANN001
    """Each task on the node size the partitioner chose (its primary holder); every node also keeps the
    next task as a stand-in, so each task has a second holder who can take over or validate it."""
    free = list(range(nodes))
    primary: list[list[int]] = [[] for _ in range(nodes)]
    for t in plan.tasks:
        k = next(k for k in sorted(free, key=lambda k: budgets[k]) if budgets[k] >= t.vram_bytes)
        free.remove(k)
        primary[k].append(t.index)
    holds = [list(p) for p in primary]
    n = len(plan.tasks)
    for k in range(nodes):
        mine = primary[k]
        extra = (mine[-1] + 1) % n if mine else k % n
        if extra not in holds[k]:
            holds[k].append(extra)
    return holds, primary


def _accounts(market, owners: dict[str, Any], client: Keypair) -> dict[str, Any]:  # noqa: ANN001
    nodes = {name: market.node(pk) for name, pk in owners.items()}
    return {
        "client": market.t.balance(client.pubkey()),
        "balance": {name: market.t.balance(pk) for name, pk in owners.items()},
        "stake": {name: n.stake for name, n in nodes.items()},
        "node": nodes,
        "treasury": market.config().treasury,
    }


def _serve_console(ui: Ui, rpc_url: str, store_url: str, wallet: Path, port: int, procs: Processes) -> None:
    gw = procs.start("gateway", ["-m", "splitup", "gateway", "start", "--rpc-url", rpc_url, "--store", store_url,
                                 "--keypair", str(wallet), "--port", str(port)], f"http://127.0.0.1:{port}")
    procs.wait_http(gw, "/v1/models")
    ui.say(f"[bold]console[/bold] {gw.url}/   OpenAI API {gw.url}/v1   (Ctrl-C stops everything)")
    try:
        while True:
            for c in procs.children:
                c.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
