"""The ``Market`` facade: the marketplace's operations as Python methods over any ``Transport``.

Each write method builds one instruction, has the acting party sign (and pay the fee), sends it and
returns a ``TxResult``. Permissionless cranks (``sample``, ``settle``, ``expire``) are paid by the
facade's ``payer``. Read methods decode accounts with the shared layouts.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market import instructions as ix
from splitup.market.accounts import (
    JobInfo,
    ModelInfo,
    decode_config,
    decode_job,
    decode_model,
    decode_node,
)
from splitup.market.calls import Opening
from splitup.market.constants import (
    BPS,
    DEFAULT_HEARTBEAT_WINDOW_SLOTS,
    DEFAULT_VERIFY_RATE_BPS,
    NONCE_SLOT_SHIFT,
    NONCE_SLOTS,
    AccountTag,
    TaskStatus,
)
from splitup.market.errors import InvalidSignatureError, MarketError, ProgramError, WrongTaskStateError
from splitup.market.evidence import HANDOFF, RECEIPT, Signed
from splitup.market.layout import Config, InitConfigArgs, ModelTask, Node, TaskSlot
from splitup.market.pda import config_pda, escrow_pda, job_pda, model_pda, node_pda
from splitup.market.transport import Transport, TxResult

# Entries per transaction: a transaction is at most 1232 bytes and each entry is 48.
MODEL_ENTRIES_PER_TX = 16
# The slots a post_job transaction has to land in by default (``Market.fresh_nonce``): 20 s at 400 ms slots;
# a finished job's close waits as long after its posting.
NONCE_LANDING_SLOTS = 50
LAMPORTS_PER_SOL = 1_000_000_000


@dataclass(frozen=True)
class MarketParams:
    """The market's economics (lamports, basis points, slots). Defaults suit a local network."""

    verify_rate_bps: int = DEFAULT_VERIFY_RATE_BPS
    min_stake: int = LAMPORTS_PER_SOL
    task_collateral: int = LAMPORTS_PER_SOL // 10  # the least collateral a task locks
    slash_bps: int = 10_000  # provable cheating: the whole collateral
    validator_reward: int = 2_000_000
    protocol_fee_bps: int = 100
    unbonding_slots: int = 100
    validator_timeout_slots: int = 150  # to take a sampled task up, and then to vote
    # adaptive rate, as splitup.verify.sampling.SamplingPolicy: new nodes and nodes caught cheating are
    # checked more often, the extra halving every half-life of reputation credits
    new_node_bps: int = 3_000
    new_node_half_life: int = 25
    failed_bps: int = 5_000
    failed_half_life: int = 50
    # soundness: collateral >= price * collateral_bps, and every task's rate p satisfies
    # p (1 - collusion) (price + collateral * slash) > price (docs/posp.md)
    collateral_bps: int = 30_000
    collusion_bps: int = 1_000
    liveness_slash_bps: int = 1_000  # late with an input it receipted: a tenth of the collateral
    rep_min_price: int = 1_000_000  # one reputation credit = 0.001 SOL of verified third-party work
    max_deadline_slots: int = 20_000
    max_task_timeout_slots: int = 10_000
    arbiter_timeout_slots: int = 300
    reveal_slots: int = 50
    validator_ramp_slots: int = 8
    # a check costs the validator about what the task cost its node: it is paid about the price
    validator_reward_bps: int = 10_000
    # nodes silent for longer are skipped by routing and refused as validators (never slashed); 0: off
    heartbeat_window_slots: int = DEFAULT_HEARTBEAT_WINDOW_SLOTS
    # a sender whose signed hand-off contradicts its commitment lied provably: the whole collateral
    handoff_slash_bps: int = 10_000
    # the receiver's window to prove a lying hand-off (settlement waits for it), and the client's to show
    # the receipt of a node that says it was never fed (release_task): about 3 s at 400 ms slots
    handoff_slots: int = 8

    @classmethod
    def flat(cls, rate_bps: int, **kw: int) -> MarketParams:
        """The same verification rate for every node (no adaptive extras)."""
        return cls(verify_rate_bps=rate_bps, new_node_bps=rate_bps, failed_bps=rate_bps, **kw)

    def args(self) -> InitConfigArgs:
        return InitConfigArgs(**self.__dict__)


def commitment_of(output: bytes) -> bytes:
    """The commitment a node publishes: sha256 of the task's canonical output bytes."""
    return hashlib.sha256(output).digest()


def task_reward(floor: int, reward_bps: int, price: int) -> int:
    """What a check of a task of ``price`` pays its validator (program: task_reward)."""
    return max(floor, price * reward_bps // BPS)


@dataclass(frozen=True)
class TaskTerms:
    """What the program requires of one task at a config (mirrors program/verify.c sound_rate and
    program/util.c min_collateral): the least collateral, the stake at risk, the sound rate floor."""

    price: int
    collateral: int
    at_risk: int
    sound_rate_bps: int
    validator_reward: int


def task_terms(params: MarketParams | Config, price: int, collateral: int = 0) -> TaskTerms:
    """The rule the program applies: collateral >= max(task_collateral, price x collateral_bps), and the
    task's rate p >= the least integer basis points with p (1 - r)(R + S) > R, S = collateral x slash."""
    least = max(params.task_collateral, price * params.collateral_bps // BPS)
    collateral = max(least, collateral)
    at_risk = collateral * params.slash_bps // BPS
    caught = (price + at_risk) * (BPS - params.collusion_bps) // BPS
    if caught == 0 or price > (2**64 - 1) // (BPS * BPS):  # bps_of would overflow: always verified
        rate = BPS
    else:
        rate = min(BPS, price * BPS // caught + 1)
    reward = task_reward(params.validator_reward, params.validator_reward_bps, price)
    return TaskTerms(price, collateral, at_risk, rate, reward)


def heartbeat_fresh(node: Node, config: Config | MarketParams, slot: int) -> bool:
    """Whether ``node`` beat within the config's heartbeat window at ``slot`` (always, with no window):
    the program's test in ``assign_validator``, and what routing skips stale nodes by."""
    window = config.heartbeat_window_slots
    return window == 0 or slot - node.last_heartbeat <= window


def seal_of(digest: bytes) -> bytes:
    """The seal an executor commits with its result: sha256 of its 32-byte work digest. A validator's
    verdict proves re-execution when the digest it submits hashes to this."""
    return hashlib.sha256(digest).digest()


def nonce_at(slot: int) -> int:
    """A job nonce naming ``slot`` (what ``post_job`` requires: a slot at most NONCE_SLOTS old), with random
    low bits so that one client can post many jobs in a slot."""
    return (slot << NONCE_SLOT_SHIFT) | secrets.randbits(NONCE_SLOT_SHIFT)


def nonce_retires_at(nonce: int) -> int:
    """The first slot at which a job posted with ``nonce`` may be closed: no job can be posted with it any
    more, so its address is never reused."""
    return (nonce >> NONCE_SLOT_SHIFT) + NONCE_SLOTS + 1


def validator_ticket(task: TaskSlot, node: Pubkey) -> int:
    """A holder's ticket in the on-chain validator lottery (ix_assign_validator's ``drawn``)."""
    h = hashlib.sha256(bytes(task.commitment) + task.draw.to_bytes(8, "little") + bytes(node))
    return int.from_bytes(h.digest()[:8], "little") % BPS


class Market:
    def __init__(self, transport: Transport, program_id: Pubkey, payer: Keypair) -> None:
        self.t = transport
        self.program_id = program_id
        self.payer = payer
        # draw secrets of the jobs this process posted, until revealed (lost on a crash: the chain then
        # verifies those tasks, the safe default)
        self.secrets: dict[Pubkey, tuple[Keypair, bytes]] = {}

    # ------------------------------------------------------------------ addresses
    @property
    def config_address(self) -> Pubkey:
        return config_pda(self.program_id)

    def node_address(self, owner: Pubkey) -> Pubkey:
        return node_pda(self.program_id, owner)

    def model_address(self, owner: Pubkey, model_hash: bytes) -> Pubkey:
        return model_pda(self.program_id, owner, model_hash)

    def job_address(self, client: Pubkey, nonce: int) -> Pubkey:
        return job_pda(self.program_id, client, nonce)

    def escrow_address(self, job: Pubkey) -> Pubkey:
        return escrow_pda(self.program_id, job)

    def fresh_nonce(self, landing_slots: int = NONCE_LANDING_SLOTS) -> int:
        """A nonce for a job posted now: it names the slot ``NONCE_SLOTS - landing_slots`` ago, so its
        transaction must land within ``landing_slots`` (else StaleNonceError, no lamport moved), and the job,
        once finished, can be closed ``landing_slots`` slots after it was posted (``nonce_retires_at``)."""
        if not 0 < landing_slots <= NONCE_SLOTS:
            raise ValueError(f"landing_slots is 1 to {NONCE_SLOTS}, not {landing_slots}")
        return nonce_at(max(0, self.t.slot() - (NONCE_SLOTS - landing_slots)))

    # ------------------------------------------------------------------ reads
    def _data(self, key: Pubkey, what: str) -> bytes:
        acc = self.t.get_account(key)
        if acc is None:
            raise MarketError(f"no {what} at {key}")
        if acc.owner != self.program_id:
            raise MarketError(f"{what} at {key} is not owned by the market program")
        return acc.data

    def config(self) -> Config:
        return decode_config(self._data(self.config_address, "market config"))

    def node(self, owner: Pubkey) -> Node:
        return decode_node(self._data(self.node_address(owner), "node"))

    def node_at(self, address: Pubkey) -> Node:
        return decode_node(self._data(address, "node"))

    def model(self, address: Pubkey) -> ModelInfo:
        return decode_model(self._data(address, "model"))

    def job(self, address: Pubkey) -> JobInfo:
        return decode_job(self._data(address, "job"))

    def nodes(self) -> list[tuple[Pubkey, Node]]:
        """Every registered node (one getProgramAccounts call)."""
        return [(k, decode_node(d)) for k, d in self._of_tag(AccountTag.NODE)]

    def live_nodes(self) -> list[tuple[Pubkey, Node]]:
        """The registered nodes whose last heartbeat is within the config's window (``heartbeat_fresh``)."""
        cfg, slot = self.config(), self.t.slot()
        return [(k, n) for k, n in self.nodes() if heartbeat_fresh(n, cfg, slot)]

    def _of_tag(self, tag: AccountTag) -> list[tuple[Pubkey, bytes]]:
        return [(k, a.data) for k, a in self.t.program_accounts(self.program_id) if a.data and a.data[0] == tag]

    def jobs(self) -> list[tuple[Pubkey, JobInfo]]:
        return [(k, decode_job(d)) for k, d in self._of_tag(AccountTag.JOB)]

    def models(self) -> list[tuple[Pubkey, ModelInfo]]:
        return [(k, decode_model(d)) for k, d in self._of_tag(AccountTag.MODEL)]

    def tasks_in(self, *statuses: TaskStatus) -> list[tuple[Pubkey, int]]:
        """(job, task index) of every task in one of ``statuses`` (e.g. OPEN: work a node could accept)."""
        return [(job, i) for job, info in self.jobs() for i, t in enumerate(info.tasks) if t.status in statuses]

    def required_fee(self, model: Pubkey) -> int:
        """The smallest escrow ``post_job`` accepts: every task's price + protocol fee + a validator reward."""
        cfg, m = self.config(), self.model(model)
        return sum(t.price + t.price * cfg.protocol_fee_bps // BPS
                   + task_reward(cfg.validator_reward, cfg.validator_reward_bps, t.price) for t in m.tasks)

    # ------------------------------------------------------------------ market admin
    def init_config(self, authority: Keypair, params: MarketParams | None = None) -> TxResult:
        args = (params or MarketParams()).args()
        return self.t.send([ix.init_config(self.program_id, authority.pubkey(), args)], [authority])

    def set_config(self, authority: Keypair, params: MarketParams) -> TxResult:
        return self.t.send([ix.set_config(self.program_id, authority.pubkey(), params.args())], [authority])

    def collect_fees(self, authority: Keypair, destination: Pubkey, amount: int) -> TxResult:
        return self.t.send([ix.collect_fees(self.program_id, authority.pubkey(), destination, amount)], [authority])

    # ------------------------------------------------------------------ models
    def register_model(self, owner: Keypair, model_hash: bytes, tasks: Sequence[ModelTask]) -> TxResult:
        """Register a model and all its tasks (split over several transactions when long)."""
        pid, o = self.program_id, owner.pubkey()
        first = list(tasks[:MODEL_ENTRIES_PER_TX])
        res = self.t.send([ix.register_model(pid, o, model_hash, len(tasks), first)], [owner])
        address = self.model_address(o, model_hash)
        for start in range(len(first), len(tasks), MODEL_ENTRIES_PER_TX):
            chunk = list(tasks[start : start + MODEL_ENTRIES_PER_TX])
            self.t.send([ix.add_model_tasks(pid, o, address, start, chunk)], [owner])
        res.address = address
        return res

    # ------------------------------------------------------------------ nodes
    def register_node(self, owner: Keypair, stake: int, vram: int, engines: int = 1, endpoint: str = "") -> TxResult:
        res = self.t.send([ix.register_node(self.program_id, owner.pubkey(), stake, vram, engines, endpoint)],
                          [owner])
        res.address = self.node_address(owner.pubkey())
        return res

    def heartbeat(self, owner: Keypair, free_sessions: int = 0, engines: int = 1, version: int = 0) -> TxResult:
        """Stamp the node's account with the current slot and its status (free session slots, engines
        mask, software version): what keeps it routed to and drawable as a validator."""
        return self.t.send([ix.heartbeat(self.program_id, owner.pubkey(), free_sessions, engines, version)],
                           [owner])

    def add_stake(self, owner: Keypair, amount: int) -> TxResult:
        return self.t.send([ix.add_stake(self.program_id, owner.pubkey(), amount)], [owner])

    def begin_unstake(self, owner: Keypair, amount: int) -> TxResult:
        return self.t.send([ix.begin_unstake(self.program_id, owner.pubkey(), amount)], [owner])

    def withdraw(self, owner: Keypair) -> TxResult:
        return self.t.send([ix.withdraw(self.program_id, owner.pubkey())], [owner])

    def specialize(self, owner: Keypair, task_ids: Sequence[bytes]) -> TxResult:
        return self.t.send([ix.specialize(self.program_id, owner.pubkey(), task_ids)], [owner])

    # ------------------------------------------------------------------ jobs
    def post_job(self, client: Keypair, model: Pubkey, input_hash: bytes, *, max_fee: int | None = None,
                 deadline_slots: int = 1_000, task_timeout_slots: int = 200, nonce: int | None = None,
                 secret: bytes | None = None) -> TxResult:
        """Escrow ``max_fee`` (default: exactly the required fee) for every task of ``model``, committing
        to a fresh draw secret (kept in ``self.secrets`` for ``reveal_secret``). ``nonce`` (default
        ``fresh_nonce()``) must name a slot at most NONCE_SLOTS old (StaleNonceError otherwise)."""
        nonce = self.fresh_nonce() if nonce is None else nonce
        secret = secrets.token_bytes(32) if secret is None else secret
        fee = self.required_fee(model) if max_fee is None else max_fee
        res = self.t.send([ix.post_job(self.program_id, client.pubkey(), model, nonce, fee, input_hash,
                                       deadline_slots, task_timeout_slots, hashlib.sha256(secret).digest())],
                          [client])
        res.address = self.job_address(client.pubkey(), nonce)
        self.secrets[res.address] = (client, secret)
        return res

    def accept_task(self, node_owner: Keypair, job: Pubkey, index: int, collateral: int = 0) -> TxResult:
        """Lock collateral for the task (at least the minimum for its price; more lowers its rate)."""
        model = self.job(job).header.model
        return self.t.send([ix.accept_task(self.program_id, node_owner.pubkey(), job, model, index, collateral)],
                           [node_owner])

    def min_collateral(self, price: int) -> int:
        cfg = self.config()
        return max(cfg.task_collateral, price * cfg.collateral_bps // BPS)

    def receive_input(self, node_owner: Keypair, job: Pubkey, index: int, input_hash: bytes) -> TxResult:
        """Receipt the task's input on chain: protects the node's pay from a client release, and makes a
        failure to deliver from now on a liveness fault."""
        return self.t.send([ix.receive_input(self.program_id, node_owner.pubkey(), job, index, input_hash)],
                           [node_owner])

    def commit_result(self, node_owner: Keypair, job: Pubkey, index: int, commitment: bytes,
                      seal: bytes = bytes(32)) -> TxResult:
        return self.t.send([ix.commit_result(self.program_id, node_owner.pubkey(), job, index, commitment, seal)],
                           [node_owner])

    def reveal_secret(self, client: Keypair, job: Pubkey, secret: bytes | None = None) -> TxResult:
        """Open the job's draw secret; call it once the results to be drawn are committed (a result
        committed later is always verified)."""
        secret = self.secrets[job][1] if secret is None else secret
        res = self.t.send([ix.reveal_secret(self.program_id, client.pubkey(), job, secret)], [client])
        self.secrets.pop(job, None)
        return res

    def sample(self, job: Pubkey, index: int) -> bool:
        """Draw whether the committed task is verified; True when it was sampled. A job this facade
        posted has its secret revealed first if it still holds it."""
        info = self.job(job)
        if job in self.secrets and info.header.revealed_slot == 0:
            # a result committed in the reveal's own slot would not draw with the secret (it is verified)
            last = max((t.committed_slot for t in info.tasks if t.status >= TaskStatus.COMMITTED), default=0)
            while self.t.slot() <= last:
                self.t.advance(1)
            self.reveal_secret(self.secrets[job][0], job)
        self.t.send([ix.sample(self.program_id, job, index)], [self.payer])
        return bool(self.job(job).tasks[index].sampled)

    def release_task(self, signer: Keypair, job: Pubkey, index: int) -> TxResult:
        """Give a task up unpaid: the client for an unaccepted or never-fed task (at once); the node for
        its own: with the liveness penalty if its receipt is on chain, otherwise its deadline is cut to
        ``handoff_slots`` from now, in which the client may still prove the node's receipt, and
        ``expire`` then releases it (unslashed unless the receipt was shown)."""
        t = self.job(job).tasks[index]
        node = t.node if t.node != Pubkey.default() else self.config_address
        return self.t.send([ix.release_task(self.program_id, signer.pubkey(), job, index, node)], [signer])

    def take_over(self, client: Keypair, standin_owner: Keypair, job: Pubkey, index: int,
                  collateral: int = 0) -> TxResult:
        """Hand an accepted, uncommitted task to a stand-in node (recorded on chain as its executor)."""
        info = self.job(job)
        return self.t.send([ix.take_over(self.program_id, client.pubkey(), standin_owner.pubkey(), job,
                                         info.header.model, index, info.tasks[index].node, collateral)],
                           [client, standin_owner])

    def prove_receipt(self, receipt: Signed, payer: Keypair | None = None) -> TxResult:
        """Prove on chain that the task's node receipted its input (its owner signed ``receipt``): the
        client can then no longer release the task, and a missed deadline is the node's liveness fault."""
        self._check_statement(receipt, RECEIPT)
        t = self.job(receipt.job).tasks[receipt.index]
        return self._send_evidence(receipt, ix.prove_receipt(self.program_id, receipt.job, receipt.index, t.node,
                                                             receipt.digest), payer)

    def prove_handoff(self, handoff: Signed, opening: Opening, payer: Keypair | None = None) -> TxResult:
        """Prove on chain that the task's node signed a hand-off of one call other than what it committed
        for that call (or of a call beyond those it committed): ``opening`` opens its commitment at the
        call (``splitup.market.calls``). It is slashed as a cheat and its task fails. Refused
        (NoMismatchError) when they agree, BadOpeningError when the opening does not open the commitment."""
        self._check_statement(handoff, HANDOFF)
        if opening.call != handoff.call:
            raise MarketError(f"the opening is of call {opening.call}, the hand-off of call {handoff.call}")
        t = self.job(handoff.job).tasks[handoff.index]
        validator = t.validator if t.validator != Pubkey.default() else None
        return self._send_evidence(handoff, ix.prove_handoff(self.program_id, handoff.job, handoff.index, t.node,
                                                             handoff.digest, opening, validator), payer)

    def _send_evidence(self, s: Signed, proof: Instruction, payer: Keypair | None) -> TxResult:
        try:
            return self.t.send([s.verify_ix(), proof], [payer or self.payer])
        except ProgramError as exc:
            if exc.instruction == 0:  # the precompile's own error codes overlap the program's
                raise InvalidSignatureError(f"the Ed25519 precompile refused the {s.kind}: {exc}") from None
            raise

    def _check_statement(self, s: Signed, kind: str) -> None:
        if s.kind != kind or s.program_id != self.program_id:
            raise MarketError(f"not a {kind} for this market program")

    def validator_turn(self, job: Pubkey, index: int, validator_owner: Pubkey) -> int:
        """The first slot at which this holder may take the sampled task up (the on-chain lottery)."""
        info = self.job(job)
        t = info.tasks[index]
        ramp = info.header.validator_ramp_slots
        if ramp == 0:
            return t.sampled_slot
        ticket = validator_ticket(t, self.node_address(validator_owner))
        return t.sampled_slot + min(ramp, ticket * ramp // BPS)

    def assign_validator(self, validator_owner: Keypair, job: Pubkey, index: int, *, wait: bool = True) -> TxResult:
        """Take a sampled task up for checking; the validator's node must specialise in the task, and its
        turn in the on-chain lottery must have come (``wait``: let the clock reach it first)."""
        model = self.job(job).header.model
        if wait:
            turn = self.validator_turn(job, index, validator_owner.pubkey())
            if turn > self.t.slot():
                self.t.advance(turn - self.t.slot())
        return self.t.send([ix.assign_validator(self.program_id, validator_owner.pubkey(), job, model, index)],
                           [validator_owner])

    def submit_verdict(self, validator_owner: Keypair, job: Pubkey, index: int, agree: bool,
                       result_hash: bytes) -> TxResult:
        """``result_hash``: the validator's own work digest; it proves re-execution when it opens the
        executor's seal (only then does an agreement earn the reward)."""
        return self.t.send([ix.submit_verdict(self.program_id, validator_owner.pubkey(), job, index, agree,
                                              result_hash)], [validator_owner])

    def arbitrate(self, authority: Keypair, job: Pubkey, index: int, node_honest: bool) -> TxResult:
        return self.t.send([ix.arbitrate(self.program_id, authority.pubkey(), job, index, node_honest)],
                           [authority])

    def settle(self, job: Pubkey, index: int) -> TxResult:
        """Pay out (or slash) a decided task; the accounts involved are looked up from the job. A payment
        an owner's wallet cannot take (an emptied wallet and an amount below rent exemption) is credited
        to its node instead, as ``unbonding``: ``withdraw`` pays it out."""
        t = self.job(job).tasks[index]
        node = t.node
        node_owner = self.node_at(node).owner
        self._await_handoff_window(job, t)
        validator = validator_owner = None
        if t.validator != Pubkey.default():
            validator = t.validator
            validator_owner = self.node_at(validator).owner
        return self.t.send([ix.settle(self.program_id, job, index, node, node_owner, validator, validator_owner)],
                           [self.payer])

    def _await_handoff_window(self, job: Pubkey, t: TaskSlot) -> None:
        """Settlement waits until the receiver's window to prove a hand-off lie has closed."""
        closes = t.committed_slot + self.job(job).header.handoff_slots
        while self.t.slot() <= closes:
            self.t.advance(closes + 1 - self.t.slot())

    def expire(self, job: Pubkey, index: int) -> TxResult:
        """Resolve a task whose deadline passed: slash a late node or validator and reopen the task (or
        its validation); release a sampled task nobody validated, or a dispute the arbiter left open."""
        t = self.job(job).tasks[index]
        if t.status not in (TaskStatus.ACCEPTED, TaskStatus.SAMPLED, TaskStatus.VALIDATING, TaskStatus.DISPUTED):
            # moved on meanwhile (another party expired or released it): no late party to pass
            raise WrongTaskStateError(f"task {index} of {job} is {TaskStatus(t.status).name}: nothing to expire")
        late = t.validator if t.status in (TaskStatus.VALIDATING, TaskStatus.DISPUTED) else t.node
        return self.t.send([ix.expire(self.program_id, job, index, late)], [self.payer])

    def close_job(self, client: Keypair, job: Pubkey) -> TxResult:
        """Refund the unused escrow and both rents. A finished job whose nonce could still post a job
        (``nonce_retires_at``) is waited for: at most NONCE_SLOTS slots after it was made."""
        acc = self.t.get_account(job)
        if acc is not None and acc.owner == self.program_id and acc.data and acc.data[0] == AccountTag.JOB:
            j, slot = decode_job(acc.data), self.t.slot()
            done = (TaskStatus.SETTLED, TaskStatus.FAILED, TaskStatus.RELEASED)
            finished = all(t.status in done or (t.status == TaskStatus.OPEN and slot > j.header.deadline)
                           for t in j.tasks)
            retires = nonce_retires_at(j.header.nonce)
            if finished and slot < retires:
                self.t.advance(retires - slot)
        return self.t.send([ix.close_job(self.program_id, client.pubkey(), job)], [client])
