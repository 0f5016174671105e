"""Shared world for the market tests: a LiteSVM with the committed program deployed, a market, funded wallets, a model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market.layout import ModelTask
from splitup.market.market import Market, MarketParams, seal_of
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport

SOL = 1_000_000_000
FEE_PER_SIGNATURE = 5_000
PRICES = (10_000_000, 20_000_000, 30_000_000)


def h(tag: str | bytes) -> bytes:
    return hashlib.sha256(tag if isinstance(tag, bytes) else tag.encode()).digest()


@dataclass
class World:
    t: LiteSvmTransport
    m: Market
    params: MarketParams
    authority: Keypair
    client: Keypair
    nodes: list[Keypair]
    model: Pubkey
    wallets: list[Keypair] = field(default_factory=list)

    def tracked(self) -> list[Pubkey]:
        """Every wallet and every program account: the set whose lamports must be conserved."""
        keys = [w.pubkey() for w in self.wallets]
        keys += [k for k, _ in self.t.program_accounts(self.m.program_id)]
        return keys

    def total(self, keys: list[Pubkey] | None = None) -> int:
        return sum(self.t.balance(k) for k in (keys if keys is not None else self.tracked()))

    def post(self, **kw: object) -> Pubkey:
        res = self.m.post_job(self.client, self.model, h("input"), **kw)  # type: ignore[arg-type]
        assert res.address is not None
        return res.address

    def run_to_commit(self, job: Pubkey, index: int, node: Keypair, output: bytes = b"output") -> None:
        self.m.accept_task(node, job, index)
        self.m.commit_result(node, job, index, h(output), seal_of(h(b"work" + output)))
        self.t.advance(1)

    def ready(self, job: Pubkey, index: int) -> bool:
        """Draw the task; if sampled, let the validators' window pass so it is paid unverified.
        Returns whether it was sampled. (No market verifies nothing any more: the sound rate is > 0.)"""
        sampled = self.m.sample(job, index)
        if sampled:
            self.t.advance(self.params.validator_timeout_slots + 1)
            self.m.expire(job, index)
        return sampled


def make_world(params: MarketParams | None = None, n_nodes: int = 3, stake: int = 2 * SOL) -> World:
    t = LiteSvmTransport()
    params = params or MarketParams()
    authority, client, payer = Keypair(), Keypair(), Keypair()
    nodes = [Keypair() for _ in range(n_nodes)]
    wallets = [authority, client, payer, *nodes]
    for w in wallets:
        t.airdrop(w.pubkey(), 100 * SOL)
    m = Market(t, DEFAULT_PROGRAM_ID, payer)
    m.init_config(authority, params)
    tasks = [ModelTask(task_id=h(f"task{i}"), vram=8 << 30, price=p) for i, p in enumerate(PRICES)]
    for i, n in enumerate(nodes):
        m.register_node(n, stake, vram=24 << 30, engines=1, endpoint=f"http://node{i}:8000")
        m.specialize(n, [task.task_id for task in tasks])  # every node holds every task (assign_validator checks)
    res = m.register_model(client, h("model"), tasks)
    assert res.address is not None
    return World(t, m, params, authority, client, nodes, res.address, wallets)


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
def always_verify() -> World:
    return make_world(MarketParams.flat(10_000))


@pytest.fixture
def never_verify() -> World:
    """Base rate 0: only the sound rate (about 10 % for these prices) draws tasks."""
    return make_world(MarketParams.flat(0))
