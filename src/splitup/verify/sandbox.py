"""An in-process PoSP sandbox: a market in LiteSVM, a zoo model split into tasks, staked nodes holding
them, a local blob store, and the three roles wired up. The protocol tests, the overhead benchmark and
the demo build on it; nothing here is needed by a real node."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.graph import zoo
from splitup.market import DEFAULT_PROGRAM_ID, LiteSvmTransport, Market, MarketParams
from splitup.market.layout import ModelTask
from splitup.market.transport import TxResult, unique_signers
from splitup.partition import PartitionError, analyze, partition, plan_partition
from splitup.partition.partitioner import float32_tail
from splitup.partition.plan import make_plan
from splitup.partition.task import Plan
from splitup.runtime import Engine, get_engine
from splitup.verify.blobs import Blobs, open_blobs, plan_bundles
from splitup.verify.cheats import Behaviour, Cheat
from splitup.verify.coordinator import JobRunner
from splitup.verify.roles import Arbiter, Executor, Validator

SOL = 1_000_000_000
FEE_PER_SIGNATURE = 5_000
PRICE = 10_000_000
MODEL = "tiny-llama"


def write_plan(out: Path, tasks: int = 3, model_name: str = MODEL, dtype: str = "float32",
               token_fp32: str = "auto") -> Plan:
    """A zoo model (seeded weights, ``dtype`` as ``zoo.build`` takes it) split into ``tasks`` tasks: the
    largest budget that gives that many (``token_fp32`` as ``make_plan`` takes it)."""
    model = zoo.build(model_name, seed=0, dtype=dtype)
    a = analyze(model)
    whole = partition(a, 2**40, workspace_bytes=0).segments[0].vram_bytes
    half = float32_tail(a)
    for frac in np.linspace(0.95, 0.1, 86):
        budget = int(whole * frac)
        try:
            # as make_plan does (the token task's form can change the count of a half-precision plan)
            count = (len(make_plan(model, model_name, budget, workspace_bytes=0, token_fp32=token_fp32).plan.tasks)
                     if half else len(plan_partition(a, budget, workspace_bytes=0)[1].segments))
            if count == tasks:
                return make_plan(model, model_name, budget, workspace_bytes=0, out_dir=out, token_fp32=token_fp32).plan
        except PartitionError:
            continue
    raise PartitionError(f"no budget splits {model_name} into {tasks} tasks")


class CountingTransport(LiteSvmTransport):
    """LiteSVM that counts signatures, so lamport conservation can be checked exactly (5000 each)."""

    signatures = 0

    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        res = super().send(instructions, signers)
        self.signatures += len(unique_signers(signers))
        return res


@dataclass
class ProtocolWorld:
    t: CountingTransport
    m: Market
    plan: Plan
    plan_dir: Path
    authority: Keypair
    client: Keypair
    payer: Keypair
    nodes: list[Keypair]
    model: Pubkey
    blobs: Blobs
    engine: Engine
    arbiter: Arbiter
    executors: list[Executor] = field(default_factory=list)
    validators: list[Validator] = field(default_factory=list)

    def wallets(self) -> list[Pubkey]:
        return [k.pubkey() for k in (self.authority, self.client, self.payer, *self.nodes)]

    def total_lamports(self) -> int:
        """Every wallet plus every program account: changes only by transaction fees."""
        keys = self.wallets() + [k for k, _ in self.t.program_accounts(self.m.program_id)]
        return sum(self.t.balance(k) for k in keys)

    def runner(self, executors: Sequence[Executor] | None = None,
               validators: Sequence[Validator] | None = None) -> JobRunner:
        return JobRunner(self.m, self.client, self.model, self.arbiter,
                         self.executors if executors is None else executors,
                         self.validators if validators is None else validators)

    def executor(self, node: int, *, cheat: Cheat | None = None, engine: Engine | None = None) -> Executor:
        return Executor(self.m, self.nodes[node], engine or self.engine, plan_bundles(self.plan_dir), self.blobs,
                        cheat=cheat)

    def validator(self, node: int, *, behaviour: Behaviour = Behaviour.HONEST,
                  engine: Engine | None = None) -> Validator:
        return Validator(self.m, self.nodes[node], engine or self.engine, plan_bundles(self.plan_dir), self.blobs,
                         behaviour=behaviour)

    def stake(self, node: int) -> int:
        return int(self.m.node(self.nodes[node].pubkey()).stake)


def make_world(plan_dir: Path, store: Path | str, params: MarketParams, *, n_nodes: int = 5,
               engine: Engine | None = None) -> ProtocolWorld:
    """``store``: a blob store directory, or the URL of a writable store server."""
    t = CountingTransport()
    plan = Plan.load(plan_dir)
    authority, client, payer = Keypair(), Keypair(), Keypair()
    nodes = [Keypair() for _ in range(n_nodes)]
    for w in (authority, client, payer, *nodes):
        t.airdrop(w.pubkey(), 100 * SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority, params)
    ids = [bytes.fromhex(task.task_id) for task in plan.tasks]
    for i, n in enumerate(nodes):
        m.register_node(n, 2 * SOL, vram=1 << 30, engines=1, endpoint=f"http://node{i}:8000")
        m.specialize(n, ids)
    model_hash = hashlib.sha256((Path(plan_dir) / "plan.json").read_bytes()).digest()
    tasks = [ModelTask(task_id=tid, vram=task.vram_bytes, price=PRICE) for tid, task in zip(ids, plan.tasks, strict=True)]
    res = m.register_model(client, model_hash, tasks)
    assert res.address is not None
    blobs = open_blobs(store)
    engine = engine or get_engine("onnxruntime", threads=1)
    arbiter = Arbiter(m, authority, plan_bundles(plan_dir), blobs)
    w = ProtocolWorld(t, m, plan, plan_dir, authority, client, payer, nodes, res.address, blobs, engine, arbiter)
    w.executors = [w.executor(i) for i in range(n_nodes)]
    w.validators = [w.validator(i) for i in range(n_nodes)]
    return w


def prompt(seed: int = 0, length: int = 5) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, 512, (1, length)).astype(np.int64)}
