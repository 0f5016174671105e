"""What a node earned, how often it was checked and what it lost: ``splitup node report``.

The current state (stake, collateral locked, unbonding, reputation counters, specialisations and the
sampling rate the chain applies to it) comes from the node's account. What the chain no longer holds
once jobs close (each payout, validator reward and slash, and the stake's history) is read back from
the cluster's transaction history of the node's account: every settle, expire and stake instruction
that touched it, with the lamports it moved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from solders.pubkey import Pubkey

from splitup.market.constants import Ix
from splitup.market.layout import Node
from splitup.market.market import Market
from splitup.market.transport import ChainTx
from splitup.verify.sampling import NodeRecord, SamplingPolicy


@dataclass(frozen=True)
class Event:
    slot: int
    time: int | None
    kind: str  # registered, stake-added, unbonding, withdrew, specialised, paid, validator-reward, slashed, ...
    lamports: int  # what the node's owner or stake gained (+) or lost (-) by it
    job: str = ""
    detail: str = ""
    signature: str = ""


@dataclass
class NodeReport:
    owner: str
    address: str
    slot: int
    stake: int
    locked: int
    unbonding: int
    unbond_at: int
    vram: int
    tasks_done: int
    verified: int
    failed: int
    since_failure: int
    ever_failed: bool
    reputation: int
    liveness_faults: int
    specialized: list[str]
    sampling_rate_bps: int
    events: list[Event] = field(default_factory=list)
    history_available: bool = True

    @property
    def free(self) -> int:
        return self.stake - self.locked

    def totals(self) -> dict[str, int]:
        sums: dict[str, int] = {}
        for e in self.events:
            sums[e.kind] = sums.get(e.kind, 0) + e.lamports
        return sums

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["free"] = self.free
        out["totals"] = self.totals()
        return out


def sampling_rate_bps(market: Market, node: Node) -> int:
    """The node's reputation rate as the program computes it (``adaptive_rate`` in program/verify.c): the
    base plus extras that decay with reputation credits, verified work other parties paid for. A task's
    rate, fixed when its result is committed, is at least its price's sound floor as well."""
    cfg = market.config()
    policy = SamplingPolicy(base_bps=cfg.verify_rate_bps, new_node_bps=max(cfg.new_node_bps, cfg.verify_rate_bps),
                            new_node_half_life=max(cfg.new_node_half_life, 1),
                            failed_bps=max(cfg.failed_bps, cfg.verify_rate_bps),
                            failed_half_life=max(cfg.failed_half_life, 1))
    return policy.rate_bps(NodeRecord(node.reputation, node.since_failure if node.ever_failed else None))


def _amount(data: bytes) -> int:
    return int.from_bytes(data[1:9], "little") if len(data) >= 9 else 0


def _events(tx: ChainTx, program: Pubkey, node: Pubkey, owner: Pubkey) -> list[Event]:
    """The node-relevant effects of one landed transaction."""
    if tx.err is not None:
        return []
    paid_fee = tx.fee if tx.fee_payer == owner else 0
    gained = tx.deltas.get(owner, 0) + paid_fee  # the owner's wallet, fees it paid itself added back
    stake_delta = tx.deltas.get(node, 0)
    out: list[Event] = []
    for prog, data, accounts in tx.calls:
        if prog != program or not data:
            continue
        try:
            ix = Ix(data[0])
        except ValueError:
            continue
        ev = lambda kind, lamports, job="", detail="": Event(  # noqa: E731
            tx.slot, tx.block_time, kind, lamports, job, detail, tx.signature)
        if ix == Ix.REGISTER_NODE:
            out.append(ev("registered", stake_delta, detail="stake and the account's rent"))
        elif ix == Ix.ADD_STAKE:
            out.append(ev("stake-added", stake_delta))
        elif ix == Ix.BEGIN_UNSTAKE:
            out.append(ev("unbonding", 0, detail=f"{_amount(data)} lamports start unbonding"))
        elif ix == Ix.WITHDRAW:
            out.append(ev("withdrew", stake_delta, detail=f"{-stake_delta} lamports back to the wallet"))
        elif ix == Ix.SPECIALIZE:
            out.append(ev("specialised", 0, detail=f"{(len(data) - 9) // 32} tasks"))
        elif ix == Ix.SETTLE and len(accounts) > 5:
            job, executor = str(accounts[0]), accounts[3] == node
            if stake_delta < 0:
                out.append(ev("slashed", stake_delta, job,
                              "verdict against the node" if executor else "verdict against its validation"))
            if gained > 0:
                out.append(ev("paid" if executor else "validator-reward", gained, job))
            elif executor and stake_delta >= 0:
                out.append(ev("settled-unpaid", 0, job, "no payment for this task"))
        elif ix == Ix.EXPIRE and len(accounts) > 2 and accounts[2] == node:
            if stake_delta < 0:
                out.append(ev("slashed", stake_delta, str(accounts[0]),
                              "liveness: had its input and missed the deadline"))
            else:
                out.append(ev("expired", 0, str(accounts[0]), "never got input: reopened, unslashed"))
        elif ix == Ix.RELEASE_TASK and len(accounts) > 2 and accounts[2] == node:
            if stake_delta < 0:
                out.append(ev("slashed", stake_delta, str(accounts[1]), "liveness: released after its input came"))
            else:
                out.append(ev("released", 0, str(accounts[1]), "no input: unpaid, unslashed"))
        elif ix == Ix.TAKE_OVER and len(accounts) > 4:
            job = str(accounts[4])
            if accounts[2] == node:
                out.append(ev("took-over", 0, job, "finished a failed node's task as its stand-in"))
            elif accounts[3] == node:
                out.append(ev("slashed" if stake_delta < 0 else "handed-over", stake_delta, job,
                              "a stand-in finished this node's task"))
    return out


def node_report(market: Market, owner: Pubkey, history_limit: int = 1000) -> NodeReport:
    node = market.node(owner)
    address = market.node_address(owner)
    history = market.t.history(address, history_limit)
    events = [e for tx in reversed(history or []) for e in _events(tx, market.program_id, address, owner)]
    specialized = [bytes(node.specialized[i * 32:(i + 1) * 32]).hex() for i in range(node.special_count)]
    return NodeReport(
        owner=str(owner), address=str(address), slot=market.t.slot(), stake=node.stake, locked=node.locked,
        unbonding=node.unbonding, unbond_at=node.unbond_at, vram=node.vram, tasks_done=node.tasks_done,
        verified=node.verified, failed=node.failed, since_failure=node.since_failure,
        ever_failed=bool(node.ever_failed), reputation=node.reputation, liveness_faults=node.liveness_faults,
        specialized=specialized,
        sampling_rate_bps=sampling_rate_bps(market, node), events=events,
        history_available=history is not None)
