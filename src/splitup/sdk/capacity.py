"""How many more jobs of a model the market can take now, per task: admission control reads this
before any escrow moves.

A task can be taken by a node that specialises in it (chain), heartbeat within the config's window
(chain: ``heartbeat_fresh``), has the collateral free to accept it (chain: stake - locked) and a free
session slot (the node's ``GET /status``: its session count and cache-memory budget). The chain's ``accept`` stays the judge; this is the forecast that keeps a client
from escrowing a job nobody can take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from solders.pubkey import Pubkey

from splitup import jsonparse
from splitup.market.accounts import node_endpoint, node_specialized
from splitup.market.market import heartbeat_fresh
from splitup.node.bounded import CONTROL_BYTES, bounded


@dataclass(frozen=True)
class TaskCapacity:
    index: int
    holders: int  # nodes specialising in the task (and heartbeating on chain, when the slot is known)
    live: int  # of them: answering /status with the task loaded
    slots: int  # more jobs the task could take now


def task_collateral(config: Any, price: int) -> int:
    """What a node locks to accept a task at ``price`` (the config's fixed collateral)."""
    del price
    return int(config.task_collateral)


def market_capacity(nodes: Sequence[tuple[Pubkey, Any]], config: Any, task_ids: Sequence[str],
                    prices: Sequence[int], statuses: Mapping[str, Mapping[str, Any] | None], *,
                    exclude_owner: Pubkey | None = None, slot: int | None = None) -> list[TaskCapacity]:
    """Per task: holders, live holders and free job slots (min of collateral and sessions, summed).

    ``statuses`` maps a node endpoint to its last ``/status`` (None or absent: unreachable, no room).
    A node owned by ``exclude_owner`` (the client itself) may not work on its own job. With ``slot`` (the
    chain's), a node whose last on-chain heartbeat is older than the config's window is not counted at all.
    """
    out = []
    for index, (tid, price) in enumerate(zip(task_ids, prices, strict=True)):
        want = bytes.fromhex(tid)
        collateral = max(1, task_collateral(config, price))
        holders = live = slots = 0
        for _, n in nodes:
            if want not in node_specialized(n) or (exclude_owner is not None and n.owner == exclude_owner):
                continue
            if slot is not None and not heartbeat_fresh(n, config, slot):
                continue
            holders += 1
            status = statuses.get(node_endpoint(n))
            if not status or tid not in status.get("tasks", ()):
                continue
            live += 1
            free_sessions = status.get("free_sessions", {}).get(tid)
            if free_sessions is None:  # an older node: its session count alone
                free_sessions = int(status.get("max_sessions", 0)) - int(status.get("sessions", 0))
            by_stake = max(0, int(n.stake) - int(n.locked)) // collateral
            slots += max(0, min(by_stake, int(free_sessions)))
        out.append(TaskCapacity(index, holders, live, slots))
    return out


def fetch_statuses(endpoints: Sequence[str], http: httpx.Client, timeout: float = 1.0) -> dict[str, dict[str, Any] | None]:
    """Each node's ``/status`` (``parse_status``), or None where it does not answer within ``timeout`` or
    answers with something that is not a status. Asked all at once, each within ``timeout`` in all: a node
    that trickles its answer must not make every other node's heartbeat look stale."""
    urls = [u for u in endpoints if u.startswith(("http://", "https://"))]

    def ask(url: str) -> dict[str, Any] | None:
        try:
            r = bounded(http, "GET", url.rstrip("/") + "/status", timeout, max_bytes=CONTROL_BYTES)
            return parse_status(jsonparse.loads(r.content)) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    if not urls:
        return {}
    with ThreadPoolExecutor(min(len(urls), MAX_ASKED_AT_ONCE), thread_name_prefix="splitup-status") as pool:
        return dict(zip(urls, pool.map(ask, urls), strict=True))


# /status fields admission and the console read, with their types; the rest of a node's word is dropped
_COUNTS = ("sessions", "max_sessions", "hops_done")
MAX_NAME_CHARS = 200
MAX_ASKED_AT_ONCE = 16


def parse_status(raw: Any) -> dict[str, Any] | None:
    """A node's ``/status`` as admission and the console read it: the known fields, each of its type, or None
    when it is not a status. A node's word, checked: one hostile node must not break the forecast for all."""
    if not isinstance(raw, dict):
        return None
    tasks, free = raw.get("tasks", []), raw.get("free_sessions", {})
    if not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
        return None
    if not (isinstance(free, dict) and all(isinstance(k, str) and _count(v) for k, v in free.items())):
        return None
    if not all(_count(raw.get(k, 0)) for k in _COUNTS):
        return None
    name, uptime = raw.get("node"), raw.get("uptime_s")
    return {"tasks": tasks, "free_sessions": free, **{k: raw[k] for k in _COUNTS if k in raw},
            "draining": raw.get("draining") is True,
            "node": name[:MAX_NAME_CHARS] if isinstance(name, str) else None,
            "uptime_s": uptime if isinstance(uptime, int | float) and not isinstance(uptime, bool) else None}


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def shortfall(caps: Sequence[TaskCapacity]) -> str:
    """Why a job cannot be taken now, in words; empty when every task has a slot."""
    short = [c for c in caps if c.slots < 1]
    if not short:
        return ""
    return "; ".join(f"task {c.index}: {c.holders} holder(s), {c.live} answering, none with a free session "
                     "and free collateral" for c in short)
