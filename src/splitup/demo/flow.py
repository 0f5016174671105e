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
from splitup.demo.network import LocalMarket, local_market
from splitup.units import format_bytes


@dataclass
class DemoOptions:
    smaller: bool = False
    workdir: Path = Path(".splitup/demo")
    prompt: str = "Give me three short tips for staying focused while studying."
    max_tokens: int = 40
    tasks: int = 3
    nodes: int = 4
    # The chain's default base rate is 8% (docs/posp.md); the demo raises it so that a verification shows.
    verify_rate_bps: int = 5_000
    slot_ms: int = 100
    workspace: int = 64 << 20
    serve_console: bool = False  # keep everything running with the gateway/console until Ctrl-C
    cheater: str | None = None  # a node that forwards perturbed outputs, to show PoSP catching and slashing it
    gateway_port: int = 8000
    dtype: str = "fp32"  # fp32, fp16, int8, or int4 (SmolLM2's own 4-bit blocks as shipped)


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
    heartbeats: int = 0  # on-chain heartbeats the node sent during the job (each paid its fee)


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
    arbitration: str = "none"
    node_slashed: int = 0
    rate_bps: int = 0
    collateral: int = 0
    proved: bool = False


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
    cheater: str | None = None
    ruling_notes: list[str] = field(default_factory=list)
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
    def status(self, what: str) -> Iterator[None]:
        """A spinner for a step without a count (reading and dequantising the weights, planning)."""
        if self.console is None:
            yield
            return
        with self.console.status(what):
            yield

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


def layer_label(layers: list[str]) -> str:
    """``["embed", "layers.0", ..., "layers.9"]`` -> ``"embed + layers 0-9"``."""
    numbered = [int(x.split(".")[1]) for x in layers if x.startswith("layers.") and x.split(".")[1].isdigit()]
    named = [x for x in layers if not x.startswith("layers.")]
    parts = [x for x in named if layers.index(x) == 0]
    if numbered:
        lo, hi = min(numbered), max(numbered)
        parts.append(f"layers {lo}-{hi}" if hi > lo else f"layer {lo}")
    parts += [x for x in named if layers.index(x) != 0]
    return " + ".join(parts)


@dataclass
class Prepared:
    model: DemoModel
    plan_dir: Path
    budgets: list[int]
    prompt_ids: list[int]
    tokenizer: Any


def prepare(root: Path, smaller: bool, tasks: int, nodes: int, workspace: int, prompt: str,
            dtype: str = "fp32") -> Prepared:
    """Load the model, split it for ``nodes`` node sizes into ``tasks`` tasks, write the bundles."""
    from tokenizers import Tokenizer

    from splitup.chat.renderer import render_chat
    from splitup.partition.plan import make_plan

    model = load_demo_model(smaller, dtype=dtype)
    # A tiny model is smaller than any workspace allowance: plan it on its own bytes.
    workspace = 0 if smaller else workspace
    budgets = node_budgets(model.graph, nodes, tasks, workspace)
    make_plan(model.graph, model.name, budgets, workspace_bytes=workspace, out_dir=root / "plan")
    tok = Tokenizer.from_str(model.tokenizer_json)
    if model.chat_template:  # encoded as transformers encodes a chat: the template wrote the special tokens
        text = render_chat(model.chat_template, [{"role": "user", "content": prompt}], True, model.special_tokens)
        ids = tok.encode(text, add_special_tokens=False).ids
    else:
        ids = tok.encode(prompt).ids
    return Prepared(model, root / "plan", budgets, list(ids), tok)


def run_demo(opts: DemoOptions, progress: Ui | None = None,
             inspect: Callable[[Summary, dict[str, Any]], None] | None = None) -> Summary:
    """Run the demo; every process it starts is stopped before this returns or raises."""
    from splitup.market.connect import connect
    from splitup.partition.task import Plan
    from splitup.sdk.client import Client

    ui = progress or Ui(False)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    root = Path(opts.workdir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)

    ui.say(f"[bold]1. Model[/bold]: loading {'the tiny zoo model' if opts.smaller else 'SmolLM2-135M from its package'}")
    with ui.status("reading the weights (dequantised once, then cached), building the graph, planning the split"):
        prep = prepare(root, opts.smaller, opts.tasks, opts.nodes, opts.workspace, opts.prompt, opts.dtype)
    model, budgets, prompt_ids = prep.model, prep.budgets, prep.prompt_ids
    plan = Plan.load(prep.plan_dir)
    ui.say(f"   split into {len(plan.tasks)} tasks for nodes of "
           f"{', '.join(format_bytes(b) for b in budgets)}")
    with ui.status("generating with the whole model in one process (the reference)"):
        reference_ids, reference_seconds = reference_run(model, prompt_ids, opts.max_tokens)
    reference_text = str(prep.tokenizer.decode(reference_ids, skip_special_tokens=True))
    ui.say(f"   single-process reference: {len(reference_ids)} tokens in {reference_seconds:.1f} s")
    model.graph = None  # type: ignore[assignment]  # free the whole model before the nodes load their parts
    timings["model"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    with local_market(root, model, prep.plan_dir, budgets, verify_rate_bps=opts.verify_rate_bps,
                      slot_ms=opts.slot_ms, ui=ui,
                      cheaters={opts.cheater: "perturb"} if opts.cheater else None) as net:
        timings["network"] = time.perf_counter() - t0
        market = connect(net.rpc_url, net.wallets["authority"])
        owners = {name: net.wallets[name].pubkey() for name in net.node_names}
        client_kp = net.wallets["client"]
        before = _accounts(market, owners, client_kp, net)

        ui.say(f"[bold]4. Job[/bold]: the client escrows the fee and generates {opts.max_tokens} tokens through the "
               f"nodes (PoSP verification rate {opts.verify_rate_bps / 100:.0f}% in this demo; the chain default is 8%)")
        client = Client(net.rpc_url, client_kp, store_url=net.store_url)
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
        assert completion is not None and completion.report is not None
        timings["job"] = time.perf_counter() - t0
        timings.update({f"job.{k}": v for k, v in completion.timings.items()})
        after = _accounts(market, owners, client_kp, net)
        config_after = market.config()
        by_address = {str(market.node_address(pk)): name for name, pk in owners.items()}
        report = completion.report
        summary = Summary(
            model=model.name, prompt=opts.prompt, text=completion.text, reference_text=reference_text,
            token_ids=completion.token_ids, reference_ids=reference_ids, seconds=completion.seconds,
            reference_seconds=reference_seconds, verify_rate_bps=opts.verify_rate_bps, job=completion.job,
            tasks=[TaskRow(t.index, layer_label(plan.tasks[t.index].layers),
                           plan.tasks[t.index].vram_bytes, by_address.get(t.node or "", t.node or "-"),
                           by_address.get(t.validator or "", t.validator) if t.validator else None,
                           t.status, t.verdict, t.price, t.node_paid, t.validator_paid, t.arbitration,
                           t.node_slashed, t.rate_bps, t.collateral, t.proved) for t in report.tasks],
            nodes=[NodeRow(name, str(owners[name]), str(market.node_address(owners[name])), net.nodes[k].url,
                           budgets[k], net.holds[k], net.primary[k], before["stake"][name], after["stake"][name],
                           before["balance"][name], after["balance"][name], after["node"][name].tasks_done,
                           after["node"][name].verified, after["node"][name].failed,
                           after["heartbeats"][name] - before["heartbeats"][name])
                   for k, name in enumerate(owners)],
            client_before=before["client"], client_after=after["client"], escrow_deposit=report.deposit,
            escrow_paid=report.paid, refund=report.refund, fees=sum(t.fee for t in report.tasks),
            treasury_before=before["treasury"], treasury_after=config_after.treasury,
            node_paid=sum(t.node_paid for t in report.tasks), validator_paid=sum(t.validator_paid for t in report.tasks),
            slashed=sum(t.node_slashed + t.validator_slashed for t in report.tasks),
            rulings=len(net.arbiter.rulings) if net.arbiter else 0, workdir=str(root), timings=timings,
            cheater=opts.cheater,
            ruling_notes=[f"task {i}: node {'honest' if honest else 'cheated'} ({why})"
                          for _, i, honest, why in (net.arbiter.rulings if net.arbiter else [])],
        )
        timings["total"] = time.perf_counter() - t_start
        if inspect is not None:  # while the network still runs: tests read the chain themselves
            inspect(summary, {"rpc_url": net.rpc_url, "store_url": net.store_url, "wallets": net.wallets})
        if opts.serve_console:
            _serve_console(ui, net, opts.gateway_port)
        return summary


def _accounts(market, owners: dict[str, Any], client: Keypair, net: Any) -> dict[str, Any]:  # noqa: ANN001
    """Balances and node records, with the count of on-chain heartbeats each node had sent by then (read
    on both sides of the balances, again if a beat landed in between, so the two agree)."""
    while True:
        beats = _heartbeats(net)
        nodes = {name: market.node(pk) for name, pk in owners.items()}
        out = {
            "client": market.t.balance(client.pubkey()),
            "balance": {name: market.t.balance(pk) for name, pk in owners.items()},
            "stake": {name: n.stake for name, n in nodes.items()},
            "node": nodes,
            "treasury": market.config().treasury,
            "heartbeats": beats,
        }
        if _heartbeats(net) == beats:
            return out


def _heartbeats(net: Any) -> dict[str, int]:
    return {c.name: int(httpx.get(c.url + "/market/agent", timeout=10).json()["stats"].get("heartbeats", 0))
            for c in net.nodes}


def _serve_console(ui: Ui, net: LocalMarket, port: int) -> None:
    gw = net.procs.start("gateway", ["-m", "splitup", "gateway", "start", "--rpc-url", net.rpc_url, "--store",
                                     net.store_url, "--keypair", str(net.wallet_path("client")), "--port", str(port)],
                         f"http://127.0.0.1:{port}")
    net.procs.wait_http(gw, "/v1/models")
    ui.say(f"[bold]console[/bold] {gw.url}/   OpenAI API {gw.url}/v1   (Ctrl-C stops everything)")
    try:
        while True:
            for c in net.procs.children:
                c.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
