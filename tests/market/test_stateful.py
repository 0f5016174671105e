"""Random instruction sequences (hypothesis) against the real program: lamports are conserved after every
transaction, every program account's lamports match its books, and escrow never pays out more than it got."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from market_world import FEE_PER_SIGNATURE, SOL, World, h, make_world
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market import calls
from splitup.market.constants import TaskStatus
from splitup.market.errors import MarketError
from splitup.market.evidence import ED25519_PROGRAM, HANDOFF, RECEIPT, Signed
from splitup.market.layout import TaskSlot
from splitup.market.market import MarketParams
from splitup.market.transport import LiteSvmTransport, TxResult

N_NODES = 4
N_TASKS = 3
# Every commitment here is a one-call tree (splitup.market.calls) over the digest of "out" or "bad", so a
# hand-off can be proved against it.
BODY = h("body")
OPENINGS = {tag: calls.opening([h(tag)], BODY, 0) for tag in ("out", "bad")}
COMMITTED = {o.commitment(): o for o in OPENINGS.values()}


class CountingTransport(LiteSvmTransport):
    """Counts signatures actually submitted to the runtime (failed transactions pay their fee too)."""

    signatures = 0

    def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        checked = sum(i.data[0] for i in instructions if i.program_id == ED25519_PROGRAM)  # charged alike
        self.signatures += len({k.pubkey() for k in signers}) + checked
        return super().send(instructions, signers)


class MarketMachine(RuleBasedStateMachine):
    w: World

    @initialize(rate=st.sampled_from([0, 5_000, 10_000]))
    def setup(self, rate: int) -> None:
        self.w = make_world(MarketParams.flat(rate, unbonding_slots=5, validator_timeout_slots=6,
                                              validator_ramp_slots=3, arbiter_timeout_slots=6, reveal_slots=4),
                            n_nodes=N_NODES)
        # swap in a counting transport over the same runtime
        t = CountingTransport(self.w.t.program_id, svm=self.w.t.svm)
        self.w.t = t
        self.w.m.t = t
        self.jobs: list[Pubkey] = []
        self.closed: set[Pubkey] = set()
        self.start_total = self.w.total()
        self.known = set(self.w.tracked())

    def attempt(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except MarketError:
            pass  # refused: the invariants below must still hold

    def job(self, i: int) -> Pubkey | None:
        live = [j for j in self.jobs if j not in self.closed]
        return live[i % len(live)] if live else None

    @precondition(lambda self: len(self.jobs) < 3)
    @rule(timeout=st.integers(1, 8), deadline=st.integers(20, 200))
    def post(self, timeout: int, deadline: int) -> None:
        res = self.w.m.post_job(self.w.client, self.w.model, h("in"), task_timeout_slots=timeout,
                                deadline_slots=deadline)
        assert res.address is not None
        self.jobs.append(res.address)

    def pick(self, k: int, *statuses: TaskStatus) -> tuple[Pubkey, int, TaskSlot] | None:
        """The k-th (mod count) task of a live job in one of ``statuses``."""
        found = [(j, i, t) for j in self.jobs if j not in self.closed
                 for i, t in enumerate(self.w.m.job(j).tasks) if t.status in statuses]
        return found[k % len(found)] if found else None

    def owner_of(self, node: Pubkey) -> Keypair:
        return next(k for k in self.w.nodes if self.w.m.node_address(k.pubkey()) == node)

    @rule(k=st.integers(0, 8), n=st.integers(0, N_NODES - 1))
    def accept(self, k: int, n: int) -> None:
        if p := self.pick(k, TaskStatus.OPEN):
            self.attempt(lambda: self.w.m.accept_task(self.w.nodes[n], p[0], p[1]))

    @rule(k=st.integers(0, 8), honest=st.booleans())
    def commit(self, k: int, honest: bool) -> None:
        if p := self.pick(k, TaskStatus.ACCEPTED):
            node = self.owner_of(p[2].node)
            commitment = OPENINGS["out" if honest else "bad"].commitment()
            self.attempt(lambda: self.w.m.commit_result(node, p[0], p[1], commitment))

    @rule(j=st.integers(0, 2), i=st.integers(0, N_TASKS - 1), n=st.integers(0, N_NODES - 1))
    def commit_anything(self, j: int, i: int, n: int) -> None:
        """Any node commits to any task: mostly refused, must change nothing but the fee."""
        job = self.job(j)
        if job:
            self.attempt(lambda: self.w.m.commit_result(self.w.nodes[n], job, i, h("x")))

    @rule(k=st.integers(0, 8))
    def receive(self, k: int) -> None:
        if p := self.pick(k, TaskStatus.ACCEPTED):
            self.attempt(lambda: self.w.m.receive_input(self.owner_of(p[2].node), p[0], p[1], h("in")))

    @rule(k=st.integers(0, 8), n=st.integers(0, N_NODES - 1))
    def prove_receipt(self, k: int, n: int) -> None:
        """A receipt signed by some node's owner (the task's own, or not) for an accepted task."""
        if p := self.pick(k, TaskStatus.ACCEPTED):
            s = Signed.make(RECEIPT, self.w.nodes[n], self.w.m.program_id, p[0], p[1], h("in"))
            self.attempt(lambda: self.w.m.prove_receipt(s))

    @rule(k=st.integers(0, 8), n=st.integers(0, N_NODES - 1), lie=st.booleans())
    def prove_handoff(self, k: int, n: int, lie: bool) -> None:
        """A hand-off of call 0 signed by some node's owner, equal to what it committed or not, for a
        committed task, with the true opening of its commitment."""
        statuses = (TaskStatus.COMMITTED, TaskStatus.SAMPLED, TaskStatus.VALIDATING, TaskStatus.DISPUTED,
                    TaskStatus.READY, TaskStatus.RESOLVED)
        if p := self.pick(k, *statuses):
            opening = COMMITTED.get(bytes(p[2].commitment), OPENINGS["out"])
            digest = h("sent") if lie else opening.committed
            s = Signed.make(HANDOFF, self.w.nodes[n], self.w.m.program_id, p[0], p[1], digest)
            self.attempt(lambda: self.w.m.prove_handoff(s, opening))

    @rule(k=st.integers(0, 8), by_node=st.booleans())
    def release(self, k: int, by_node: bool) -> None:
        if p := self.pick(k, TaskStatus.OPEN, TaskStatus.ACCEPTED):
            signer = self.owner_of(p[2].node) if by_node and p[2].status == TaskStatus.ACCEPTED else self.w.client
            self.attempt(lambda: self.w.m.release_task(signer, p[0], p[1]))

    @rule(k=st.integers(0, 8), n=st.integers(0, N_NODES - 1))
    def take_over(self, k: int, n: int) -> None:
        if p := self.pick(k, TaskStatus.ACCEPTED):
            self.attempt(lambda: self.w.m.take_over(self.w.client, self.w.nodes[n], p[0], p[1]))

    @rule(j=st.integers(0, 2))
    def reveal(self, j: int) -> None:
        job = self.job(j)
        if job and job in self.w.m.secrets:
            self.attempt(lambda: self.w.m.reveal_secret(self.w.client, job))

    @rule(slots=st.integers(1, 8))
    def advance(self, slots: int) -> None:
        self.w.t.advance(slots)

    @rule(k=st.integers(0, 8))
    def sample(self, k: int) -> None:
        if p := self.pick(k, TaskStatus.COMMITTED):
            self.attempt(lambda: self.w.m.sample(p[0], p[1]))

    @rule(k=st.integers(0, 8), n=st.integers(0, N_NODES - 1))
    def assign(self, k: int, n: int) -> None:
        if p := self.pick(k, TaskStatus.SAMPLED):
            self.attempt(lambda: self.w.m.assign_validator(self.w.nodes[n], p[0], p[1]))

    @rule(k=st.integers(0, 8), agree=st.booleans())
    def verdict(self, k: int, agree: bool) -> None:
        if p := self.pick(k, TaskStatus.VALIDATING):
            v = self.owner_of(p[2].validator)
            self.attempt(lambda: self.w.m.submit_verdict(v, p[0], p[1], agree, h("out")))

    @rule(k=st.integers(0, 8), honest=st.booleans())
    def arbitrate(self, k: int, honest: bool) -> None:
        if p := self.pick(k, TaskStatus.DISPUTED):
            self.attempt(lambda: self.w.m.arbitrate(self.w.authority, p[0], p[1], honest))

    @rule(k=st.integers(0, 8))
    def settle(self, k: int) -> None:
        if p := self.pick(k, TaskStatus.READY, TaskStatus.RESOLVED):
            self.attempt(lambda: self.w.m.settle(p[0], p[1]))

    @rule(k=st.integers(0, 8))
    def expire(self, k: int) -> None:
        if p := self.pick(k, TaskStatus.ACCEPTED, TaskStatus.VALIDATING, TaskStatus.SAMPLED, TaskStatus.DISPUTED):
            self.attempt(lambda: self.w.m.expire(p[0], p[1]))

    def step_task(self, k: int, n: int, flag: bool) -> None:
        """Move some task one step along its lifecycle with the right party (choices drawn)."""
        p = self.pick(k, *(s for s in TaskStatus
                           if s not in (TaskStatus.SETTLED, TaskStatus.FAILED, TaskStatus.RELEASED)))
        if p is None:
            return
        job, i, t = p
        m, st_ = self.w.m, TaskStatus(t.status)
        actions: dict[TaskStatus, Callable[[], object]] = {
            TaskStatus.OPEN: lambda: m.accept_task(self.w.nodes[n], job, i),
            TaskStatus.ACCEPTED: lambda: m.commit_result(self.owner_of(t.node), job, i, h("out" if flag else "bad")),
            TaskStatus.COMMITTED: lambda: (self.w.t.advance(1), m.sample(job, i)),
            TaskStatus.SAMPLED: lambda: m.assign_validator(self.w.nodes[n], job, i),
            TaskStatus.VALIDATING: lambda: m.submit_verdict(self.owner_of(t.validator), job, i, flag, h("out")),
            TaskStatus.DISPUTED: lambda: m.arbitrate(self.w.authority, job, i, flag),
            TaskStatus.READY: lambda: m.settle(job, i),
            TaskStatus.RESOLVED: lambda: m.settle(job, i),
        }
        self.attempt(actions[st_])

    @rule(k=st.integers(0, 8), n=st.integers(0, N_NODES - 1), flag=st.booleans())
    def progress(self, k: int, n: int, flag: bool) -> None:
        self.step_task(k, n, flag)

    @rule(k=st.integers(0, 8), n=st.integers(0, N_NODES - 1), flag=st.booleans())
    def progress_more(self, k: int, n: int, flag: bool) -> None:
        self.step_task(k, n, flag)

    @rule(j=st.integers(0, 2))
    def close(self, j: int) -> None:
        job = self.job(j)
        if job:
            try:
                self.w.m.close_job(self.w.client, job)
                self.closed.add(job)
            except MarketError:
                pass

    @rule(n=st.integers(0, N_NODES - 1), amount=st.integers(1, 2 * SOL), op=st.sampled_from(["add", "unstake"]))
    def stake(self, n: int, amount: int, op: str) -> None:
        m, k = self.w.m, self.w.nodes[n]
        self.attempt(lambda: m.add_stake(k, amount) if op == "add" else m.begin_unstake(k, amount))

    @rule(n=st.integers(0, N_NODES - 1))
    def withdraw(self, n: int) -> None:
        self.attempt(lambda: self.w.m.withdraw(self.w.nodes[n]))

    @invariant()
    def lamports_are_conserved(self) -> None:
        self.known |= set(self.w.tracked())
        fees = FEE_PER_SIGNATURE * self.w.t.signatures  # type: ignore[attr-defined]
        assert self.w.total(list(self.known)) == self.start_total - fees

    @invariant()
    def accounts_match_their_books(self) -> None:
        t, m = self.w.t, self.w.m
        rent = t.svm.minimum_balance_for_rent_exemption
        cfg = m.config()
        assert t.balance(m.config_address) == rent(len(cfg.encode())) + cfg.treasury
        for owner in self.w.nodes:
            n = m.node(owner.pubkey())
            assert n.locked <= n.stake
            assert t.balance(m.node_address(owner.pubkey())) == rent(len(n.encode())) + n.stake + n.unbonding
        for job in self.jobs:
            if job in self.closed:
                assert t.get_account(job) is None
                continue
            hdr = m.job(job).header
            assert hdr.paid <= hdr.deposit
            assert t.balance(m.escrow_address(job)) == rent(0) + hdr.deposit - hdr.paid


MarketMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=50, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestMarketMachine = MarketMachine.TestCase
