"""A whole local market as child processes: ledger, blob store, node processes, and an arbiter thread.

``local_market`` publishes a written plan, starts everything, waits until every node has preloaded
its tasks, staked and specialised, and stops it all (by pid) when the ``with`` block ends, also on an
error or Ctrl-C. The demo and the gateway/console tests both run on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.demo.models import DemoModel
from splitup.demo.procs import Child, ProcessError, Processes, free_port
from splitup.market.market import LAMPORTS_PER_SOL, MarketParams
from splitup.market.wallet import save_keypair
from splitup.partition.task import Plan

SOL = LAMPORTS_PER_SOL
NODE_NAMES = ("node-a", "node-b", "node-c", "node-d", "node-e", "node-f")


@dataclass
class LocalMarket:
    root: Path
    procs: Processes
    ledger: Child
    store: Child
    wallets: dict[str, Keypair]
    plan: Plan
    budgets: list[int]
    holds: list[list[int]]
    primary: list[list[int]]
    nodes: list[Child]
    model_address: Pubkey
    arbiter: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rpc_url(self) -> str:
        return self.ledger.url

    @property
    def store_url(self) -> str:
        return self.store.url

    def wallet_path(self, name: str) -> Path:
        return self.root / "wallets" / f"{name}.json"

    @property
    def node_names(self) -> list[str]:
        return [c.name for c in self.nodes]


def placement(plan: Plan, budgets: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Each task on the node size the partitioner chose (its primary holder); every node also keeps the
    next task as a stand-in, so each task has a second holder who can take over or validate it."""
    nodes = len(budgets)
    free = list(range(nodes))
    primary: list[list[int]] = [[] for _ in range(nodes)]
    for t in plan.tasks:
        k = next(k for k in sorted(free, key=lambda k: budgets[k]) if budgets[k] >= t.vram_bytes)
        free.remove(k)
        primary[k].append(t.index)
    holds = [list(p) for p in primary]
    n = len(plan.tasks)
    for k in range(nodes):
        extra = (primary[k][-1] + 1) % n if primary[k] else k % n
        if extra not in holds[k]:
            holds[k].append(extra)
    return holds, primary


@contextmanager
def local_market(root: Path, model: DemoModel, plan_dir: Path, budgets: list[int], *, verify_rate_bps: int,
                 slot_ms: int = 100, ui: Any = None, arbiter: bool = True,
                 cheaters: Mapping[str, str] | None = None,
                 node_args: Mapping[str, Sequence[str]] | None = None,
                 validator_timeout_slots: int = 6_000) -> Iterator[LocalMarket]:
    """``cheaters``: node name -> a cheat of ``splitup.demo.node --cheat`` (perturb, zeros) for that node;
    ``node_args``: node name -> more ``splitup.demo.node`` options for it (``--engine tinygrad``, ``--threads 2``)."""
    from splitup.market.connect import connect
    from splitup.node.agent import DisputeJudge
    from splitup.sdk.catalog import publish_model
    from splitup.storage import BlobStore

    say = ui.say if ui is not None else (lambda _text: None)
    plan = Plan.load(plan_dir)
    holds, primary = placement(plan, budgets)
    for sub in ("wallets", "logs", "store", "ledger", "cache"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    judge = None
    with Processes(root / "logs") as procs:
        try:
            say("[bold]2. Network[/bold]: local ledger and blob store")
            rpc_port, store_port = free_port(), free_port()
            ledger = procs.start("ledger", ["-m", "splitup", "ledger", "start", "--dir", str(root / "ledger"),
                                            "--port", str(rpc_port), "--slot-ms", str(slot_ms)],
                                 f"http://127.0.0.1:{rpc_port}")
            store = BlobStore(root / "store")
            storep = procs.start("store", ["-m", "splitup", "store", "serve", "--dir", str(root / "store"),
                                           "--port", str(store_port), "--writable"], f"http://127.0.0.1:{store_port}")
            procs.wait_http(ledger)
            procs.wait_http(storep)

            names = NODE_NAMES[: len(budgets)]
            wallets = {n: Keypair() for n in ("authority", "client", *names)}
            for name, kp in wallets.items():
                save_keypair(kp, root / "wallets" / f"{name}.json")
            authority = wallets["authority"]
            market = connect(ledger.url, authority)
            for name, kp in wallets.items():
                market.t.airdrop(kp.pubkey(), (20 if name in ("authority", "client") else 10) * SOL)
            # Generous validator window: a validator on a shared CPU replays a whole generation.
            market.init_config(authority, MarketParams.flat(verify_rate_bps,
                                                            validator_timeout_slots=validator_timeout_slots))
            published = publish_model(market, authority, plan_dir, store, kind="decoder",
                                      tokenizer_json=model.tokenizer_json, chat_template=model.chat_template,
                                      bos_id=model.bos_id, eos_ids=model.eos_ids, special_tokens=model.special_tokens,
                                      description=model.description)
            say(f"   ledger {ledger.url}, store {storep.url}; model registered at {published.address}")

            say(f"[bold]3. Nodes[/bold]: {len(names)} processes, each with its own wallet, stake and memory size")
            nodes = []
            for k, name in enumerate(names):
                port = free_port()
                args = ["-m", "splitup.demo.node", "--keypair", str(root / "wallets" / f"{name}.json"),
                        "--rpc-url", ledger.url, "--store", storep.url, "--port", str(port), "--node-id", name,
                        "--tasks", ",".join(plan.tasks[i].task_id for i in holds[k]),
                        "--primary", ",".join(plan.tasks[i].task_id for i in primary[k]),
                        "--stake", str((2 + k) * SOL), "--vram", str(budgets[k]), "--cache", str(root / "cache" / name)]
                if cheaters and name in cheaters:
                    args += ["--cheat", cheaters[name]]
                args += list((node_args or {}).get(name, ()))
                nodes.append(procs.start(name, args, f"http://127.0.0.1:{port}"))
            _wait_nodes(procs, nodes, sum(len(h) for h in holds), ui, [str(wallets[n].pubkey()) for n in names])
            if arbiter:
                judge = DisputeJudge(connect(ledger.url, authority), authority, storep.url, root / "cache" / "arbiter")
                judge.start()
            yield LocalMarket(root, procs, ledger, storep, wallets, plan, budgets, holds, primary, nodes,
                              published.address, judge)
        finally:
            if judge is not None:
                judge.stop()


def _wait_nodes(procs: Processes, nodes: list[Child], total: int, ui: Any, owners: list[str],
                timeout: float = 300.0) -> None:
    from contextlib import nullcontext

    t0 = time.perf_counter()
    bar = ui.bar("downloading and preloading task bundles", total) if ui is not None else nullcontext(lambda n: None)
    with bar as advance:
        for c in nodes:
            procs.wait_http(c)
        while True:
            states = [httpx.get(c.url + "/market/startup", timeout=5).json() for c in nodes]
            advance(sum(s["preloaded"] for s in states))
            failed = [(c.name, s["error"]) for c, s in zip(nodes, states, strict=True) if s["phase"] == "failed"]
            if failed:
                raise ProcessError(f"node startup failed: {failed}")
            for c in nodes:
                c.check_alive()  # before trusting "ready": a dead node's port may answer for another
            if all(s["phase"] == "ready" for s in states):
                for c, owner in zip(nodes, owners, strict=True):
                    answered = httpx.get(c.url + "/market/agent", timeout=5).json().get("owner")
                    if answered != owner:
                        raise ProcessError(f"{c.name}'s port is answered by the node of {answered}, not {owner}; "
                                           f"its log:\n{c.tail()}")
                return
            if time.perf_counter() - t0 > timeout:
                raise ProcessError(f"nodes not ready after {timeout:.0f} s")
            time.sleep(0.2)
