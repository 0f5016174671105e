"""A job as the chain records it, turned into who did what and who was paid what (lamports).

Closed jobs disappear from the chain (``close_job`` returns their rent), so a report is a snapshot
taken just before closing: per task its state, executor, validator, verdict and payouts, computed
with the program's settlement rules (docs/market.md, "Settlement and slashing").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from solders.pubkey import Pubkey

from splitup.market.accounts import JobInfo
from splitup.market.constants import BPS, Arbitration, TaskStatus, Verdict
from splitup.market.layout import Config
from splitup.market.market import task_reward

_ZERO = Pubkey.default()
# A task in one of these states is over: paid, slashed, or given up (its price back to the client).
FINAL_TASK = (TaskStatus.SETTLED, TaskStatus.FAILED, TaskStatus.RELEASED)


@dataclass(frozen=True)
class TaskReport:
    index: int
    task_id: str
    status: str
    node: str | None  # node account address
    validator: str | None
    sampled: bool
    verdict: str  # none / agree / disagree
    arbitration: str  # none / node_honest / node_cheated
    draw: int
    rate_bps: int  # fixed by the program when the result was committed
    price: int
    node_paid: int
    validator_paid: int
    fee: int
    node_slashed: int
    validator_slashed: int
    collateral: int = 0  # what the executor locked for the task
    proved: bool = False  # the validator's work digest opened the executor's seal
    standin: bool = False  # the executor took the task over from a node that failed

    @property
    def verified(self) -> bool:
        return self.verdict != "none"


@dataclass
class JobReport:
    address: str
    model: str
    client: str
    deposit: int
    paid: int
    tasks: list[TaskReport]
    closed: bool = False
    refund: int = 0
    revealed: bool = False  # the client's draw secret was opened: tasks were drawn at their rate
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> int:
        return sum(t.verified for t in self.tasks)

    @property
    def failed(self) -> int:
        return sum(t.status == "FAILED" for t in self.tasks)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["verified"] = self.verified
        return body


def _name(enum: type, value: int) -> str:
    try:
        return enum(value).name.lower()
    except ValueError:
        return str(value)


def task_payouts(slot, job: JobInfo, cfg: Config) -> dict[str, int]:  # noqa: ANN001 - layout.TaskSlot
    """What settling this task pays (or has paid) each party, by the program's rules."""
    status = TaskStatus(slot.status)
    fee = slot.price * job.header.protocol_fee_bps // BPS
    node_slash = slot.collateral * cfg.slash_bps // BPS
    val_slash = slot.validator_collateral * cfg.slash_bps // BPS
    reward = task_reward(job.header.validator_reward, job.header.validator_reward_bps, slot.price)
    out = {"node_paid": 0, "validator_paid": 0, "fee": 0, "node_slashed": 0, "validator_slashed": 0}
    if status not in (TaskStatus.SETTLED, TaskStatus.FAILED, TaskStatus.READY, TaskStatus.RESOLVED):
        return out
    if slot.arbitration == Arbitration.NODE_CHEATED:
        out.update(validator_paid=reward + node_slash, node_slashed=node_slash)
        return out
    if slot.arbitration == Arbitration.NODE_HONEST:
        out.update(node_paid=slot.price + val_slash, fee=fee, validator_slashed=val_slash)
        return out
    out.update(node_paid=slot.price, fee=fee)
    if slot.verdict == Verdict.AGREE and slot.proved:  # an unproved agreement earns no reward
        out["validator_paid"] = reward
    return out


def job_report(address: Pubkey, job: JobInfo, cfg: Config, model_name: str,
               task_ids: list[str]) -> JobReport:
    tasks = []
    for i, t in enumerate(job.tasks):
        tasks.append(TaskReport(
            index=i, task_id=task_ids[i] if i < len(task_ids) else "", status=TaskStatus(t.status).name,
            node=None if t.node == _ZERO else str(t.node),
            validator=None if t.validator == _ZERO else str(t.validator),
            sampled=bool(t.sampled), verdict=_name(Verdict, t.verdict), arbitration=_name(Arbitration, t.arbitration),
            draw=int(t.draw), rate_bps=int(t.rate_bps), price=int(t.price), **task_payouts(t, job, cfg),
            collateral=int(t.collateral), proved=bool(t.proved), standin=bool(t.standin),
        ))
    return JobReport(address=str(address), model=model_name, client=str(job.header.client),
                     deposit=int(job.header.deposit), paid=int(job.header.paid), tasks=tasks,
                     revealed=job.header.revealed_slot != 0)
