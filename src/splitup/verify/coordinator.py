"""One job through the whole protocol, in one process: the helper tests, the benchmark and the demo use.

``JobRunner.run`` posts a job, lets executors accept and run every call (a decoder's generation loop:
the last task's ``logits`` pick the next ``input_ids``), has them commit, lets a slot pass, flips each
task's sampling coin on chain, lets a validator (never the task's node, never the client; picked by
the on-chain draw among the nodes holding the task) check each sampled task, has the arbiter decide
disputes, settles every task and closes the job. It returns a per-task report of who did what, who was
paid and who was slashed (measured from balances, not recomputed), and what the verification cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.table import Table
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market import Market
from splitup.market.accounts import node_specialized
from splitup.market.constants import TaskStatus
from splitup.market.market import heartbeat_fresh
from splitup.verify.cheats import Behaviour
from splitup.verify.handoff import handoff_mismatches
from splitup.verify.replay import LOGITS, estimated_flops
from splitup.verify.roles import Announcement, Arbiter, Executor, RoleError, Ruling, Validator, task_id_of


@dataclass
class TaskReport:
    index: int
    task_id: str
    node: str
    sampled: bool = False
    rate_bps: int = 0
    draw: int = 0  # the on-chain coin: sampled iff draw < rate_bps
    validator: str | None = None
    verdict: str | None = None  # "agree" / "disagree"
    reason: str = ""
    arbitration: str | None = None  # "node honest" / "node cheated"
    arbitration_basis: str = ""
    status: str = ""
    node_paid: int = 0
    node_slashed: int = 0
    validator_paid: int = 0
    validator_slashed: int = 0
    calls: int = 0
    executed_flops: int = 0
    reexecuted_flops: int = 0
    executed_s: float = 0.0
    reexecuted_s: float = 0.0
    arbitration_s: float = 0.0
    # inputs that contradict the fingerprints their sender announced (reported; see handoff.py)
    handoff_mismatches: list[str] = field(default_factory=list)


@dataclass
class JobReport:
    job: str
    client: str
    tokens: list[int] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    tasks: list[TaskReport] = field(default_factory=list)
    escrow_returned: int = 0

    @property
    def executed_flops(self) -> int:
        return sum(t.executed_flops for t in self.tasks)

    @property
    def reexecuted_flops(self) -> int:
        return sum(t.reexecuted_flops for t in self.tasks)

    @property
    def slashed(self) -> int:
        return sum(t.node_slashed + t.validator_slashed for t in self.tasks)

    def table(self) -> Table:
        table = Table(title=f"job {self.job[:8]}: {len(self.tasks)} tasks, {len(self.tokens)} tokens generated")
        for col in ("task", "node", "rate", "sampled", "validator", "verdict", "arbitration", "status",
                    "node paid", "node slashed", "validator paid", "validator slashed"):
            table.add_column(col, justify="right" if "paid" in col or "slashed" in col or col == "rate" else "left")
        for t in self.tasks:
            table.add_row(str(t.index), t.node[:8], f"{t.rate_bps / 100:g}%", "yes" if t.sampled else "no",
                          (t.validator or "-")[:8], t.verdict or "-",
                          f"{t.arbitration} ({t.arbitration_basis})" if t.arbitration else "-", t.status,
                          f"{t.node_paid:,}", f"{t.node_slashed:,}", f"{t.validator_paid:,}",
                          f"{t.validator_slashed:,}")
        return table


class JobRunner:
    """Drives jobs of one registered model through executors, validators and the arbiter."""

    def __init__(self, market: Market, client: Keypair, model: Pubkey, arbiter: Arbiter,
                 executors: Sequence[Executor], validators: Sequence[Validator]) -> None:
        self.market = market
        self.client = client
        self.model = model
        self.arbiter = arbiter
        self.executors = list(executors)
        self.validators = list(validators)

    def run(self, feeds: Mapping[str, np.ndarray], new_tokens: int = 0, *, nodes: Sequence[int] | None = None,
            task_timeout_slots: int = 200) -> JobReport:
        """One job: ``feeds`` for the first call, then ``new_tokens`` greedy decoding calls.

        ``nodes[i]`` picks the executor of task i (default: round robin over executors that are not the
        client).
        """
        m = self.market
        input_hash = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for _, v in sorted(feeds.items())))
        job = m.post_job(self.client, self.model, input_hash.digest(), task_timeout_slots=task_timeout_slots).address
        assert job is not None
        count = len(m.job(job).tasks)
        workers = self._assign(count, nodes)
        report = JobReport(str(job), str(self.client.pubkey()))
        for i, ex in enumerate(workers):
            ex.accept(job, i)
            report.tasks.append(TaskReport(i, task_id_of(m, job, i), str(ex.pubkey)))

        self._generate(job, workers, feeds, new_tokens, report)
        anns = [ex.commit(job, i) for i, ex in enumerate(workers)]
        for i, ex in enumerate(workers):
            t = ex.transcript(job, i)
            rep = report.tasks[i]
            rep.calls, rep.executed_s = len(t.steps), ex.seconds(job, i)
            rep.executed_flops = estimated_flops(ex.task(job, i), t)
            rep.handoff_mismatches = [bad for up in anns[:i] for bad in handoff_mismatches(up, t)]

        # every result is committed: a slot later (a result committed in the reveal's own slot would be
        # verified regardless) the client opens its draw secret, and the draw mixes it with the hash of
        # the first slot after each commitment
        m.t.advance(1)
        m.reveal_secret(self.client, job)
        for i in range(count):
            rep = report.tasks[i]
            rep.sampled = m.sample(job, i)
            slot = m.job(job).tasks[i]
            rep.rate_bps, rep.draw = int(slot.rate_bps), int(slot.draw)
            if rep.sampled:
                self._verify(job, i, anns[i], rep)
        for i in range(count):
            self._settle(job, i, report.tasks[i])
        escrow = m.escrow_address(job)
        report.escrow_returned = m.t.balance(escrow) + m.t.balance(job)
        m.close_job(self.client, job)
        return report

    def _assign(self, count: int, nodes: Sequence[int] | None) -> list[Executor]:
        if nodes is not None:
            if len(nodes) != count:
                raise RoleError(f"{len(nodes)} executors given for {count} tasks")
            return [self.executors[n] for n in nodes]
        pool = [e for e in self.executors if e.pubkey != self.client.pubkey()]
        if not pool:
            raise RoleError("no executor other than the client")
        return [pool[i % len(pool)] for i in range(count)]

    def _generate(self, job: Pubkey, workers: list[Executor], feeds: Mapping[str, np.ndarray], new_tokens: int,
                  report: JobReport) -> None:
        step_feeds: dict[str, np.ndarray] = dict(feeds)
        for step in range(new_tokens + 1):
            env = dict(step_feeds)
            for i, ex in enumerate(workers):
                task = ex.task(job, i)
                given = {s.name: env[s.name] for s in task.inputs if s.name in env and s.name not in task.state}
                env.update(ex.call(job, i, given))
            report.outputs = {k: v for k, v in env.items() if k not in step_feeds}
            if step == new_tokens:
                break
            if LOGITS not in env or "input_ids" not in step_feeds:
                raise RoleError("generation needs a model with input_ids in and logits out")
            token = np.argmax(env[LOGITS][:, -1, :], axis=-1).astype(np.int64)
            report.tokens.append(int(token[0]))
            step_feeds = {"input_ids": token[:, None]}

    def validator_candidates(self, job: Pubkey, index: int) -> list[Validator]:
        """Validators allowed for the task: staked nodes holding it that heartbeat within the config's
        window (the chain refuses the others), never its node, never the client."""
        info = self.market.job(job)
        node_owner = self.market.node_at(info.tasks[index].node).owner
        task_id = bytes.fromhex(task_id_of(self.market, job, index))
        cfg, slot = self.market.config(), self.market.t.slot()
        out = []
        for v in self.validators:
            if v.pubkey in (node_owner, info.header.client):
                continue
            node = self.market.node(v.pubkey)
            if task_id in node_specialized(node) and heartbeat_fresh(node, cfg, slot):
                out.append(v)
        return out

    def _verify(self, job: Pubkey, index: int, ann: Announcement, rep: TaskReport) -> None:
        m = self.market
        candidates = self.validator_candidates(job, index)
        if not candidates:
            rep.reason = "no validator holds this task; released unverified when the window passed"
            m.t.advance(m.job(job).header.validator_timeout_slots + 1)
            m.expire(job, index)
            return
        # The chain's lottery picks the validator: each holder's turn comes from the draw (unknown before
        # the commitment); the first whose turn comes takes the task up.
        turns = {id(v): m.validator_turn(job, index, v.pubkey) for v in candidates}
        chosen = min(candidates, key=lambda v: turns[id(v)])
        if turns[id(chosen)] > m.t.slot():
            m.t.advance(turns[id(chosen)] - m.t.slot())
        check = chosen.validate(job, index, ann)
        rep.validator, rep.verdict, rep.reason = str(chosen.pubkey), "agree" if check.agree else "disagree", check.reason
        if chosen.behaviour is Behaviour.HONEST:
            rep.reexecuted_flops, rep.reexecuted_s = check.flops, check.seconds
        if m.job(job).tasks[index].status == TaskStatus.DISPUTED:
            ruling: Ruling = self.arbiter.arbitrate(job, index, ann, [v for v in candidates if v is not chosen])
            rep.arbitration = "node honest" if ruling.node_honest else "node cheated"
            rep.arbitration_basis = ruling.basis
            rep.arbitration_s = ruling.seconds
            if not ruling.node_honest:
                rep.reason = ruling.reason

    def _settle(self, job: Pubkey, index: int, rep: TaskReport) -> None:
        m = self.market
        slot = m.job(job).tasks[index]
        watched = {"node": slot.node, "node_owner": m.node_at(slot.node).owner}
        if slot.validator != Pubkey.default():
            watched |= {"validator": slot.validator, "validator_owner": m.node_at(slot.validator).owner}
        before = {k: m.t.balance(v) for k, v in watched.items()}
        m.settle(job, index)
        delta = {k: m.t.balance(v) - before[k] for k, v in watched.items()}
        rep.node_paid = max(0, delta["node_owner"])
        rep.node_slashed = max(0, -delta["node"])
        rep.validator_paid = max(0, delta.get("validator_owner", 0))
        rep.validator_slashed = max(0, -delta.get("validator", 0))
        rep.status = TaskStatus(m.job(job).tasks[index].status).name
