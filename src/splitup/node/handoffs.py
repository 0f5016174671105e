"""The signed hand-offs a node received, kept on disk (SQLite) until their job closes.

Every hop of a market job arrives with its sender's signed hand-off (``splitup.market.evidence``): "my
node sent, on call ``call`` of task ``index`` of ``job``, tensors hashing to ``digest``". The receiver
checks it before computing (``MarketAgent.check_handoff``) and keeps it here: once the sender commits,
the receiver compares what it was sent with what the sender committed for each call
(:func:`lies`) and proves any difference on chain (``Market.prove_handoff``). A long generation is
thousands of hops, so they live on disk, not in memory, and are dropped with their job.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.market import calls
from splitup.market.constants import TaskStatus
from splitup.market.errors import MarketError
from splitup.market.evidence import HANDOFF, Signed
from splitup.market.market import Market
from splitup.node.wire import Envelope, WireError
from splitup.verify.commitment import handoff_digest
from splitup.verify.roles import Announcement

log = logging.getLogger("splitup.agent")

_SCHEMA = """CREATE TABLE IF NOT EXISTS handoffs (
    job TEXT NOT NULL, task INTEGER NOT NULL, call INTEGER NOT NULL, program TEXT NOT NULL,
    digest BLOB NOT NULL, signer TEXT NOT NULL, signature BLOB NOT NULL,
    PRIMARY KEY (job, task, call, digest))"""


class HandoffStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # one insert per hop received: WAL without a sync per commit (a crash may lose the last few, which
        # only costs proofs of those calls, never an honest node anything)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def keep(self, s: Signed) -> None:
        """Keep one checked hand-off (a repeated one is kept once; two different ones of a call both)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO handoffs VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (str(s.job), s.index, s.call, str(s.program_id), s.digest, str(s.signer), s.signature))

    def kept(self, job: str, task: int | None = None) -> list[Signed]:
        query = "SELECT job, task, call, program, digest, signer, signature FROM handoffs WHERE job = ?"
        args: tuple[object, ...] = (job,)
        if task is not None:
            query, args = query + " AND task = ?", (job, task)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY task, call", args).fetchall()
        return [Signed(HANDOFF, Pubkey.from_string(p), Pubkey.from_string(j), t, bytes(d), Pubkey.from_string(s),
                       bytes(sig), c) for j, t, c, p, d, s, sig in rows]

    def senders(self) -> list[tuple[str, int]]:
        """(job, task) of every sender this node holds hand-offs of."""
        with self._lock:
            return [(j, t) for j, t in self._db.execute("SELECT DISTINCT job, task FROM handoffs ORDER BY job, task")]

    def forget(self, job: str, task: int | None = None) -> None:
        with self._lock:
            if task is None:
                self._db.execute("DELETE FROM handoffs WHERE job = ?", (job,))
            else:
                self._db.execute("DELETE FROM handoffs WHERE job = ? AND task = ?", (job, task))


def lies(kept: Sequence[Signed], digests: Sequence[bytes], body: bytes) -> list[tuple[Signed, calls.Opening]]:
    """The hand-offs in ``kept`` that contradict the commitment over ``digests`` (what the sender committed
    for each call) and ``body``, each with the opening that proves it: a call it committed something
    else for, or a call beyond those it committed."""
    out = []
    for s in kept:
        if s.call >= len(digests) or digests[s.call] != s.digest:
            out.append((s, calls.opening(digests, body, s.call)))
    return out


class Handoffs:
    """A market node's hand-off duties: sign what its node sends on (``sign``), check and keep what it
    receives (``check``), and prove on chain what contradicts a sender's commitment (``prove``).

    ``task_index(job, task id)``: the task's index in the job (None: not a market task this node knows).
    """

    def __init__(self, market: Market, owner: Keypair, store: HandoffStore,
                 task_index: Callable[[str, str], int | None]) -> None:
        self.market, self.owner, self.store, self.task_index = market, owner, store, task_index
        self.proved: list[tuple[str, int, int]] = []  # (job, task, call) of each lie proved
        self._checked: set[tuple[str, int]] = set()

    def sign(self, job: str, task_id: str, call: int, digest: bytes) -> dict[str, Any] | None:
        """The wire form of this node's signed hand-off of ``call`` (``wire.HANDOFF_META``)."""
        index = self.task_index(job, task_id)
        if index is None:
            return None
        s = Signed.make(HANDOFF, self.owner, self.market.program_id, Pubkey.from_string(job), index, digest, call)
        return {"by": str(self.owner.pubkey()), "index": index, "call": call, "sig": s.compact().hex()}

    def check(self, env: Envelope, tensors: Mapping[str, np.ndarray], raw: dict[str, Any] | None) -> None:
        """Before a hop is computed: the previous node's signed hand-off must be of exactly ``tensors``, for
        the route's previous task of this job; it is then kept. A hop of a task this node works on for the
        market without one is refused (WireError, 400): what it would compute on could not be blamed."""
        if env.hop == 0:
            return  # from the client: its input is receipted instead
        mine = self.task_index(env.job, env.current.task)
        if raw is None:
            if mine is not None:
                raise WireError(f"hop {env.hop} of market job {env.job} comes without its sender's signed hand-off")
            return
        try:
            job, signer = Pubkey.from_string(env.job), Pubkey.from_string(str(raw["by"]))
            index, call, sig = int(raw["index"]), int(raw["call"]), bytes.fromhex(str(raw["sig"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed signed hand-off: {exc!r}") from None
        sender = self.task_index(env.job, env.route[env.hop - 1].task)
        if sender is not None and index != sender:
            raise WireError(f"the hand-off names task {index}; the route's previous task is task {sender}")
        try:
            s = Signed.from_compact(sig, HANDOFF, self.market.program_id, job, index, signer, call)
        except MarketError as exc:
            raise WireError(str(exc)) from None
        if s.digest != handoff_digest(tensors):
            raise WireError(f"the signed hand-off of call {call} is not of the tensors received")
        if signer != self.owner.pubkey():  # a node does not prove against itself
            self.store.keep(s)

    def prove(self, jobs: Mapping[str, Any], slot: int,
              announcement: Callable[[Pubkey, int], Announcement | None]) -> None:
        """Compare what each sender handed this node with what it committed, once it has committed (its
        announcement's call tree, checked against the commitment on chain), and prove every lie within
        the hand-off window. Kept hand-offs go with their job or once their window is over.
        ``announcement`` runs in the agent's tick: it should give up within seconds."""
        for job, index in self.store.senders():
            info = jobs.get(job)
            if info is None:  # closed
                self.store.forget(job)
                self._checked = {c for c in self._checked if c[0] != job}
                continue
            t = info.tasks[index]
            if t.status < TaskStatus.COMMITTED:
                continue
            if t.status > TaskStatus.RESOLVED or slot > t.committed_slot + info.header.handoff_slots:
                self.store.forget(job, index)
                self._checked.discard((job, index))
                continue
            if (job, index) in self._checked:
                continue
            try:
                ann = announcement(Pubkey.from_string(job), index)
            except MarketError as exc:  # the sender is away for now: ask again next tick, within the window
                log.debug("announcement of task %d of %s: %s", index, job, exc)
                continue
            owner = self.market.node_at(t.node).owner
            if ann is None or not ann.signed_by(owner) or not ann.opens(bytes(t.commitment)):
                continue  # not (yet) announced: a validator or the arbiter blames a node that never does
            self._checked.add((job, index))
            for s, opening in lies([k for k in self.store.kept(job, index) if k.signer == owner],
                                   ann.calls, ann.body):
                try:
                    self.market.prove_handoff(s, opening)
                except MarketError as exc:
                    log.warning("proving the hand-off of call %d of task %d of %s: %s", s.call, index, job, exc)
                    continue
                self.proved.append((job, index, s.call))
                log.warning("task %d of %s: its node handed call %d on other than it committed; proved",
                            index, job, s.call)
                break  # the task has failed: one proof is enough
