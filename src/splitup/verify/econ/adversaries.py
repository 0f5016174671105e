"""Adversaries against the real program: each strategy of issue 12 played on LiteSVM with the committed
program and the chain's default config (``MarketParams()``), beside the honest play of the same seat.

One model with one task of price R (0.02 SOL, about a demo task) and compute cost C = 0.8 R (a check
costs a validator the same C); ten staked validator nodes hold the task. Every party's profit is what
its wallet and its node's stake gained, less the compute it spent. *Expected* profit takes each task's
outcome in expectation over the chain's draw at the rate the program fixed for it (so it does not hang on
luck in a short run); *realised* profit is what the lamports did. Each run also reports the stake honest
parties lost (must be 0) and checks that lamports are conserved (all accounts, fees aside).

    python bench/adversaries.py            # the table (docs/posp.md, README)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market import calls
from splitup.market.constants import BPS
from splitup.market.errors import MarketError
from splitup.market.evidence import ED25519_PROGRAM, HANDOFF, RECEIPT, Signed
from splitup.market.layout import ModelTask
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams, seal_of, task_reward
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport, TxResult

PRICE = 20_000_000
COMPUTE = PRICE * 8 // 10
VALIDATORS = 10
FEE = 5_000  # per signature
STAKE = 50 * LAMPORTS_PER_SOL


def _h(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


class _Counting(LiteSvmTransport):
    """Counts the signatures of every transaction sent (a failed one pays its fee too), the ones the
    Ed25519 precompile checks included: each is charged like a transaction signature."""

    signatures = 0

    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        checked = sum(i.data[0] for i in instructions if i.program_id == ED25519_PROGRAM)
        self.signatures += len({k.pubkey() for k in signers}) + checked
        return super().send(instructions, signers)


@dataclass
class Result:
    strategy: str
    role: str
    jobs: int
    honest_expected: float  # per job, the same seat played honestly
    expected: float  # per job
    realised: float  # per job
    honest_stake_lost: int  # lamports of stake honest parties lost over the run
    conserved: bool
    note: str = ""

    @property
    def beats_honesty(self) -> bool:
        return self.expected >= self.honest_expected


@dataclass
class _Book:
    """A party's wallet and node stake at the start, and the compute it spent since."""

    wallet: int
    stake: int
    compute: int = 0


@dataclass
class Arena:
    params: MarketParams = field(default_factory=MarketParams)
    price: int = PRICE

    def __post_init__(self) -> None:
        self.t = _Counting()
        self.authority, self.client, self.payer, self.owner = Keypair(), Keypair(), Keypair(), Keypair()
        self.actor, self.standin, self.sybil_client = Keypair(), Keypair(), Keypair()
        self.validators = [Keypair() for _ in range(VALIDATORS)]
        self.wallets = [self.authority, self.client, self.payer, self.owner, self.actor, self.standin,
                        self.sybil_client, *self.validators]
        for w in self.wallets:
            self.t.airdrop(w.pubkey(), 1_000 * LAMPORTS_PER_SOL)
        self.m = Market(self.t, DEFAULT_PROGRAM_ID, self.payer)
        self.m.init_config(self.authority, self.params)
        task = ModelTask(task_id=_h("task"), vram=1 << 30, price=self.price)
        self.model = self.m.register_model(self.owner, _h("model"), [task]).address
        for n in (self.actor, self.standin, *self.validators):
            self.m.register_node(n, STAKE, vram=1 << 34)
            self.m.specialize(n, [task.task_id])
        self.cfg = self.m.config()
        self.reward = task_reward(self.cfg.validator_reward, self.cfg.validator_reward_bps, self.price)
        self.drawn_as: dict[Pubkey, int] = {}
        self.last_beat = self.t.slot()
        self.start_total = self.total()
        self.start_sigs = self.t.signatures
        self.books = {k.pubkey(): self.book(k) for k in self.wallets}

    # --- accounting ---------------------------------------------------------------------------------------
    def book(self, k: Keypair) -> _Book:
        try:
            node = self.m.node(k.pubkey())
            stake = node.stake + node.unbonding
        except MarketError:  # not a node
            stake = 0
        return _Book(self.t.balance(k.pubkey()), stake)

    def profit(self, *parties: Keypair) -> int:
        total = 0
        for k in parties:
            start, now = self.books[k.pubkey()], self.book(k)
            total += now.wallet - start.wallet + now.stake - start.stake - start.compute
        return total

    def spend(self, k: Keypair, compute: int) -> None:
        self.books[k.pubkey()].compute += compute

    def total(self) -> int:
        keys = [w.pubkey() for w in self.wallets] + [k for k, _ in self.t.program_accounts(self.m.program_id)]
        return sum(self.t.balance(k) for k in keys)

    def conserved(self) -> bool:
        return self.total() == self.start_total - FEE * (self.t.signatures - self.start_sigs)

    def stake_lost(self, honest: Sequence[Keypair]) -> int:
        return sum(max(0, self.books[k.pubkey()].stake - self.book(k).stake) for k in honest)

    # --- one job ------------------------------------------------------------------------------------------
    def job(self, executor: Keypair, *, cheat: bool = False, client: Keypair | None = None,
            lazy: Keypair | None = None, colluder: Keypair | None = None) -> tuple[int, bool]:
        """Post, execute (honestly or not), draw, validate with the drawn holder, arbitrate, settle, close.
        Returns (the rate the program fixed, whether the task was drawn)."""
        m, client = self.m, client or self.client
        job = m.post_job(client, self.model, _h("in")).address
        assert job is not None
        m.accept_task(executor, job, 0)
        m.receive_input(executor, job, 0, _h("in"))
        truth, fake = _h(f"work {job}"), _h(f"fake {job}")
        if not cheat:
            self.spend(executor, COMPUTE)
        m.commit_result(executor, job, 0, _h(f"out {job} {cheat}"), seal_of(fake if cheat else truth))
        self.t.advance(1)
        drawn = m.sample(job, 0)
        rate = int(m.job(job).tasks[0].rate_bps)
        if drawn:
            self.beat()
            holders = [v for v in self.validators if v.pubkey() != executor.pubkey()]
            turn = {v.pubkey(): m.validator_turn(job, 0, v.pubkey()) for v in holders}
            chosen = min(holders, key=lambda v: turn[v.pubkey()])
            self.drawn_as[chosen.pubkey()] = self.drawn_as.get(chosen.pubkey(), 0) + 1
            m.assign_validator(chosen, job, 0)
            if chosen is lazy:
                m.submit_verdict(chosen, job, 0, True, _h("never ran it"))
            elif chosen is colluder and cheat:
                m.submit_verdict(chosen, job, 0, True, fake)  # the cheater told it its digest
            else:
                self.spend(chosen, COMPUTE)
                m.submit_verdict(chosen, job, 0, not cheat, truth)
                if cheat:
                    m.arbitrate(self.authority, job, 0, node_honest=False)
        m.settle(job, 0)
        m.close_job(client, job)
        return rate, drawn

    def beat(self) -> None:
        """The validators heartbeat as a market node's daemon does, every half of the chain's window (a
        job's close waits for its nonce to go stale, so the arena's clock runs on between jobs)."""
        window = self.cfg.heartbeat_window_slots
        slot = self.t.slot()
        if window and slot - self.last_beat > window // 2:
            for v in self.validators:
                self.m.heartbeat(v)
            self.last_beat = slot

    # --- expectations, from the rate the program fixed ----------------------------------------------------
    def cheat_value(self, rate_bps: int, collusion: float = 0.0) -> float:
        """A cheated task's expected value to the cheater (no compute spent): paid unless drawn and
        checked by an honest validator, then its collateral is slashed."""
        collateral = max(self.cfg.task_collateral, self.price * self.cfg.collateral_bps // BPS)
        at_risk = collateral * self.cfg.slash_bps // BPS
        q = rate_bps / BPS * (1 - collusion)
        return (1 - q) * self.price - q * at_risk

    @property
    def honest_value(self) -> float:
        return self.price - COMPUTE


EXEC_FEES = 3 * FEE  # accept, receipt, commit


def honest_node(jobs: int) -> Result:
    a = Arena()
    for _ in range(jobs):
        a.job(a.actor)
    e = a.honest_value - EXEC_FEES
    return Result("honest node", "node", jobs, e, e, a.profit(a.actor) / jobs,
                  a.stake_lost([a.actor, *a.validators]), a.conserved())


def always_cheat(jobs: int) -> Result:
    a = Arena()
    value = sum(a.cheat_value(a.job(a.actor, cheat=True)[0]) for _ in range(jobs)) / jobs
    return Result("always cheat", "node", jobs, a.honest_value - EXEC_FEES, value - EXEC_FEES,
                  a.profit(a.actor) / jobs, a.stake_lost(a.validators), a.conserved())


def cheat_when_unlikely_drawn(jobs: int) -> Result:
    """Grinding and rate timing: it predicts the next slot hash the old way (sha256(prev || slot)), and
    cheats only when that predicts its result escapes the draw at the rate it expects."""
    a = Arena()
    value = 0.0
    cheats = 0
    for _ in range(jobs):
        slot = a.t.slot()
        prev = dict(a.t.svm.get_slot_hashes())[slot]
        predicted = hashlib.sha256(bytes(prev) + (slot + 1).to_bytes(8, "little")).digest()
        guess = int.from_bytes(hashlib.sha256(predicted + _h("out")).digest()[:8], "little") % BPS
        cheat = guess >= 3_000  # "not drawn" at the new-node rate it expects
        rate, _ = a.job(a.actor, cheat=cheat)
        cheats += cheat
        value += a.cheat_value(rate) if cheat else a.honest_value
    return Result("cheat when it expects no draw", "node", jobs, a.honest_value - EXEC_FEES,
                  value / jobs - EXEC_FEES, a.profit(a.actor) / jobs, a.stake_lost(a.validators), a.conserved(),
                  f"cheated {cheats} of {jobs}")


def sybil_rate_washing(jobs: int, washing_jobs: int = 40) -> Result:
    """It pays itself (a second wallet) for honest work until its reputation lowers its rate, then
    cheats on every real job. Its washing costs (fees, the third-party validators' rewards, compute)
    count against it."""
    a = Arena()
    for _ in range(washing_jobs):
        a.job(a.actor, client=a.sybil_client)
    washing = a.profit(a.actor, a.sybil_client)
    credits = int(a.m.node(a.actor.pubkey()).reputation)
    value, rates = 0.0, []
    for _ in range(jobs):
        rate, _ = a.job(a.actor, cheat=True)
        rates.append(rate)
        value += a.cheat_value(rate)
    return Result("sybil rate-washing, then cheat", "node + own client", jobs, a.honest_value - EXEC_FEES,
                  (washing + value) / jobs - EXEC_FEES, a.profit(a.actor, a.sybil_client) / jobs,
                  a.stake_lost(a.validators), a.conserved(),
                  f"{washing_jobs} washing jobs bought {credits} credits: first cheat drawn at {rates[0] / 100:g} %")


def lazy_validator(jobs: int) -> Result:
    """One of the ten holders agrees without re-executing whenever it is drawn: its agreement does not
    open the executor's seal, so it earns no reward (and saves only the compute it did not spend)."""
    a = Arena()
    lazy = a.validators[0]
    chance = sum(a.job(a.actor, lazy=lazy)[0] / BPS / VALIDATORS for _ in range(jobs)) / jobs  # its seat drawn
    drawn = a.drawn_as.get(lazy.pubkey(), 0)
    honest = chance * (a.reward - COMPUTE - 2 * FEE)  # the same seat, re-executing
    return Result("lazy validator", "validator", jobs, honest, -chance * 2 * FEE, a.profit(lazy) / jobs,
                  a.stake_lost([a.actor, *a.validators[1:]]), a.conserved(), f"drawn as validator {drawn}x")


def colluding_validator(jobs: int) -> Result:
    """The node cheats on every job; one of the ten holders, its accomplice, agrees with proof when drawn.
    Scored as a coalition against the same two seats played honestly."""
    a = Arena()
    colluder = a.validators[0]
    value, rates = 0.0, []
    for _ in range(jobs):
        rate, _ = a.job(a.actor, cheat=True, colluder=colluder)
        rates.append(rate)
        value += a.cheat_value(rate, collusion=1 / VALIDATORS) + rate / BPS / VALIDATORS * a.reward
    p = sum(rates) / len(rates) / BPS
    honest = a.honest_value - EXEC_FEES + p / VALIDATORS * (a.reward - COMPUTE)
    return Result("colluding validator (+ cheating node)", "node + validator", jobs, honest,
                  value / jobs - EXEC_FEES, a.profit(a.actor, colluder) / jobs,
                  a.stake_lost(a.validators[1:]), a.conserved())


def griefing_client(jobs: int) -> Result:
    """It posts jobs, lets an honest node accept, never sends the input; the task times out."""
    a = Arena()
    node = a.actor
    for _ in range(jobs):
        job = a.m.post_job(a.client, a.model, _h("in"), task_timeout_slots=5).address
        assert job is not None
        a.m.accept_task(node, job, 0)
        a.t.advance(6)
        a.m.expire(job, 0)  # anyone may: the node never receipted an input, so it is released unslashed
        a.m.release_task(a.client, job, 0)
        a.m.close_job(a.client, job)
    return Result("griefing client", "client", jobs, -2 * FEE, a.profit(a.client) / jobs, a.profit(a.client) / jobs,
                  a.stake_lost([node, *a.validators]), a.conserved(),
                  f"the node it tied up lost {a.stake_lost([node])} lamports of stake")


def node_dies_mid_job(jobs: int) -> Result:
    """It accepts, receipts its input, computes half and stops. Half the time the client hands the task
    to a stand-in (paid, as the executor); otherwise it times out (the liveness penalty)."""
    a = Arena()
    collateral = max(a.cfg.task_collateral, a.price * a.cfg.collateral_bps // BPS)
    for i in range(jobs):
        job = a.m.post_job(a.client, a.model, _h("in"), task_timeout_slots=20).address
        assert job is not None
        a.m.accept_task(a.actor, job, 0)
        a.m.receive_input(a.actor, job, 0, _h("in"))
        a.spend(a.actor, COMPUTE // 2)
        if i % 2 == 0:
            a.m.take_over(a.client, a.standin, job, 0)
            a.spend(a.standin, COMPUTE)
            truth = _h(f"work {job}")
            a.m.commit_result(a.standin, job, 0, _h("out"), seal_of(truth))
            a.t.advance(1)
            if a.m.sample(job, 0):
                a.beat()
                v = min(a.validators, key=lambda v: a.m.validator_turn(job, 0, v.pubkey()))
                a.m.assign_validator(v, job, 0)
                a.spend(v, COMPUTE)
                a.m.submit_verdict(v, job, 0, True, truth)
            a.m.settle(job, 0)
        else:
            a.t.advance(21)
            a.m.expire(job, 0)
            a.m.release_task(a.client, job, 0)
        a.m.close_job(a.client, job)
    expected = -COMPUTE / 2 - 0.5 * collateral * a.cfg.liveness_slash_bps / BPS - 2 * FEE
    return Result("node dies mid-job", "node", jobs, a.honest_value - EXEC_FEES, expected, a.profit(a.actor) / jobs,
                  a.stake_lost([a.standin, *a.validators]), a.conserved(),
                  f"stand-in earned {a.profit(a.standin) / max(1, (jobs + 1) // 2) / LAMPORTS_PER_SOL:.4f} SOL a task")


def stalls_with_its_input(jobs: int) -> Result:
    """It accepts, is sent its input (and signs the receipt the protocol asks for, or the client would
    send nothing), never declares it on chain, never computes, and walks away: half the time it releases
    the task itself, otherwise it lets the deadline pass. The client proves the node's receipt, so
    either way it is a liveness fault, not a free exit."""
    a = Arena()
    collateral = max(a.cfg.task_collateral, a.price * a.cfg.collateral_bps // BPS)
    for i in range(jobs):
        job = a.m.post_job(a.client, a.model, _h("in"), task_timeout_slots=10).address
        assert job is not None
        a.m.accept_task(a.actor, job, 0)
        a.m.prove_receipt(Signed.make(RECEIPT, a.actor, a.m.program_id, job, 0, _h("in")), payer=a.client)
        if i % 2 == 0:
            a.m.release_task(a.actor, job, 0)
        else:
            a.t.advance(11)
            a.m.expire(job, 0)
            a.m.release_task(a.client, job, 0)
        a.m.close_job(a.client, job)
    expected = -collateral * a.cfg.liveness_slash_bps / BPS - 1.5 * FEE
    return Result("node that got its input and stalls", "node", jobs, a.honest_value - EXEC_FEES, expected,
                  a.profit(a.actor) / jobs, a.stake_lost(a.validators), a.conserved(),
                  f"liveness faults {a.m.node(a.actor.pubkey()).liveness_faults}")


def handoff_liar(jobs: int) -> Result:
    """It computes and commits the true result of a three-call session, but on the second call hands the
    next node other bytes (sabotage), signed as the protocol asks. The receiver proves the signed hand-off
    against the commitment opened at that call: the liar is slashed as a cheat and unpaid; the receiver
    loses nothing but the proof's fee."""
    a = Arena()
    receiver = a.standin
    collateral = max(a.cfg.task_collateral, a.price * a.cfg.collateral_bps // BPS)
    for _ in range(jobs):
        job = a.m.post_job(a.client, a.model, _h("in")).address
        assert job is not None
        a.m.accept_task(a.actor, job, 0)
        a.spend(a.actor, COMPUTE)
        sent = [_h(f"call {k} of {job}") for k in range(3)]
        body = _h(f"transcript of {job}")
        a.m.commit_result(a.actor, job, 0, calls.opening(sent, body, 0).commitment(), seal_of(_h(f"work {job}")))
        lie = Signed.make(HANDOFF, a.actor, a.m.program_id, job, 0, _h(f"sent {job}"), call=1)
        a.m.prove_handoff(lie, calls.opening(sent, body, 1), payer=receiver)
        a.m.close_job(a.client, job)
    expected = -COMPUTE - collateral * a.cfg.handoff_slash_bps / BPS - 2 * FEE
    proof_fees = 2 * FEE * jobs
    return Result("hand-off liar", "node", jobs, a.honest_value - EXEC_FEES, expected, a.profit(a.actor) / jobs,
                  a.stake_lost([receiver, *a.validators]), a.conserved(),
                  f"the receiver paid {proof_fees // jobs:,} lamports a proof, lost "
                  f"{max(0, -a.profit(receiver) - proof_fees):,} more")


STRATEGIES: tuple[Callable[[int], Result], ...] = (
    honest_node, always_cheat, cheat_when_unlikely_drawn, sybil_rate_washing, lazy_validator,
    colluding_validator, griefing_client, node_dies_mid_job, stalls_with_its_input, handoff_liar,
)


def play(jobs: int) -> list[Result]:
    return [s(jobs) for s in STRATEGIES]
