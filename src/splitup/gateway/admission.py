"""Admission control for the gateway: a bounded number of requests run at once, the rest wait in a
bounded, fair queue (one line per client, served in turn), each for at most its deadline; a request
that cannot start within its deadline is refused at once with 429 and a Retry-After.

Whether a request can start in time is decided when it arrives, and again while it waits: from its place
in the fair order and the measured pace (how long a request holds a slot, and how fast the queue drained
while it was not empty), the gateway estimates when it would start. A request whose estimate lies beyond
its deadline is refused then and there, told to come back when the queue ahead of it is expected to be
gone, instead of waiting out a deadline it cannot meet.

A request is admitted only when a slot is free *and* the market has room for the model (``room``: the
nodes holding each task have free collateral and sessions), so no escrow is posted for a job nobody can
take. Everything here runs on the event loop and never blocks it; ``room`` reads a cached forecast.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from splitup.sdk.errors import MarketBusy

# Before anything was measured: what a short request of the local market takes.
DEFAULT_SERVICE_S = 2.0
# A request joins the queue only when its estimated start lies within this share of its deadline: the
# estimate is a forecast, and a request refused late (at its deadline) is the outcome to avoid.
ADMIT_SHARE = 0.7


@dataclass
class _Waiter:
    client: str
    model: str
    deadline: float
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    def __init__(self, *, max_running: int = 4, max_queue: int = 16, per_client: int = 8,
                 queue_timeout: float = 20.0, room: Callable[[str], str] | None = None,
                 taken: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``room(model)`` says why the market cannot take a job of ``model`` now ('' when it can);
        ``taken(model)`` is told of each admission, so the forecast counts it until the job is placed."""
        self.max_running, self.max_queue, self.per_client = max_running, max_queue, per_client
        self.queue_timeout = queue_timeout
        self.room = room or (lambda _model: "")
        self.taken = taken or (lambda _model: None)
        self.clock = clock
        self._arriving: Counter[str] = Counter()  # per client: counted in by arrive(), not yet entered
        self._started: list[float] = []  # when each running request took its slot
        self._lines: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._durations: deque[float] = deque(maxlen=32)  # seconds a finished request held its slot
        self._drains: deque[float] = deque(maxlen=16)  # seconds between grants while the queue was not empty
        self._last_grant: float | None = None  # a grant from the queue, while others still waited
        self.stats = {"admitted": 0, "queued": 0, "refused": 0, "refused_early": 0, "timed_out": 0}

    @property
    def running(self) -> int:
        return len(self._started)

    @property
    def arriving(self) -> int:
        return sum(self._arriving.values())

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._lines.values())

    # --- the forecast ---------------------------------------------------------------------------------------
    def service_s(self) -> float:
        """How long a request holds a slot: the upper quartile of the recent ones (a forecast that errs long
        refuses a little early; one that errs short refuses late, which is worse)."""
        if not self._durations:
            return DEFAULT_SERVICE_S
        xs = sorted(self._durations)
        return xs[min(len(xs) - 1, (3 * len(xs)) // 4)]

    def start_in(self, ahead: int) -> float:
        """Seconds until a request with ``ahead`` requests before it in the fair order would start.

        Two views, the slower wins: the slots (each running request frees its slot after the service time,
        at the soonest a quarter of it from now; then each slot serves the queue in turn), and the queue's
        drain rate measured while it was not empty (which sees what the slots do not: a market whose room,
        not the gateway's slots, holds the queue back)."""
        now = self.clock()
        s = self.service_s()
        frees = [max(0.25 * s, s - (now - t)) for t in self._started]
        frees += [0.0] * max(0, self.max_running - len(frees))
        heapq.heapify(frees)
        for _ in range(ahead):
            heapq.heappush(frees, heapq.heappop(frees) + s)
        start = frees[0]
        if len(self._drains) >= 3 and self._last_grant is not None:
            d = sum(self._drains) / len(self._drains)
            start = max(start, max(0.0, self._last_grant + d - now) + ahead * d)
        return start

    def retry_after(self, ahead: int | None = None) -> int:
        """Whole seconds until a request refused now should come back: when the queue ahead of it (by
        default the whole queue) is expected to be gone."""
        return max(1, min(60, math.ceil(self.start_in(self.waiting if ahead is None else ahead))))

    def _ahead(self, client: str, mine: int | None = None) -> int:
        """Requests served before one of ``client`` with ``mine`` of its own requests before it (default:
        a request joining the end of its line), in the round-robin order of :meth:`_grant`.

        Requests still being checked (counted in by :meth:`arrive`) count as joining the end of their
        clients' lines; a line not there yet is counted before this one (it may join first)."""
        line = self._lines.get(client)
        k = (len(line) if line is not None else 0) if mine is None else mine
        n = k
        before = True  # lines ahead of its own in the order (all of them, for a new line)
        seen = set()
        for c, q in self._lines.items():
            seen.add(c)
            if c == client:
                before = False
                continue
            length = len(q) + self._arriving[c]
            n += min(length, k) + (1 if before and length > k else 0)
        for c, waiting in self._arriving.items():
            if c != client and c not in seen and waiting:
                n += min(waiting, k) + (1 if waiting > k else 0)
        return n

    # --- the gate -------------------------------------------------------------------------------------------
    def _busy(self, why: str = "", ahead: int | None = None) -> MarketBusy:
        self.stats["refused"] += 1
        return MarketBusy(f"the gateway is at capacity ({self.running} running, {self.waiting} queued)"
                          + (f"; {why}" if why else ""), retry_after=self.retry_after(ahead))

    def arrive(self, client: str = "-") -> MarketBusy | None:
        """Count a request in before its body is even read; a refusal when the slots and the queue are
        taken by requests already in (being checked, queued or running), or when it could not start
        within its deadline behind them. Pair with :meth:`enter` or :meth:`depart`."""
        room = self.max_running + (self.max_queue if self.queue_timeout > 0 else 0)
        if self.running + self.waiting + self.arriving >= room:
            return self._busy()
        if self.queue_timeout > 0:
            ahead = self._ahead(client, self._queued(client) + self._arriving[client])
            if self.start_in(ahead) > ADMIT_SHARE * self.queue_timeout:
                self.stats["refused_early"] += 1
                return self._busy(f"a slot is not expected within the {self.queue_timeout:.0f} s a request may "
                                  "wait", ahead)
        self._arriving[client] += 1
        return None

    def depart(self, client: str = "-") -> None:
        """A counted-in request that will not enter (refused by its checks)."""
        left = self._arriving[client] - 1
        if left > 0:
            self._arriving[client] = left
        else:
            self._arriving.pop(client, None)

    def _queued(self, client: str) -> int:
        line = self._lines.get(client)
        return 0 if line is None else len(line)

    async def enter(self, client: str, model: str) -> float:
        """Wait for a slot (raises :class:`MarketBusy` as soon as the slot cannot come within the deadline);
        returns the seconds spent queued."""
        self._loop = asyncio.get_running_loop()
        self.depart(client)
        why = self.room(model)
        if self.running < self.max_running and not self.waiting and not why:
            self._take(model)
            return 0.0
        line = self._lines.get(client)
        if self.queue_timeout <= 0 or self.waiting >= self.max_queue or (line is not None and len(line) >= self.per_client):
            raise self._busy(why)
        ahead = self._ahead(client)
        if self.start_in(ahead) > ADMIT_SHARE * self.queue_timeout:
            self.stats["refused_early"] += 1
            raise self._busy(f"a slot is not expected within the {self.queue_timeout:.0f} s a request may wait"
                             + (f"; {why}" if why else ""), ahead)
        t0 = self.clock()
        waiter = _Waiter(client, model, t0 + self.queue_timeout)
        self._lines.setdefault(client, deque()).append(waiter)
        self.stats["queued"] += 1
        late = ""
        try:
            while not waiter.future.done():
                self._grant()
                if waiter.future.done():
                    break
                left = waiter.deadline - self.clock()
                if left <= 0:
                    late = f"no room within {self.queue_timeout:.0f} s"
                    break
                line = self._lines.get(client)
                ahead = self._ahead(client, line.index(waiter)) if line is not None and waiter in line else 0
                if self.start_in(ahead) > left:
                    late = f"a slot is no longer expected within the {left:.0f} s left of {self.queue_timeout:.0f} s"
                    break
                # Market room changes without anyone leaving (a job settles on another gateway): look again.
                await asyncio.wait([waiter.future], timeout=min(left, 0.25))
        finally:
            if not waiter.future.done():
                self._drop(waiter)
        if not waiter.future.done():
            self.stats["timed_out"] += 1
            why = self.room(model)
            raise self._busy(late + (f": {why}" if why else ""))
        return self.clock() - t0

    def leave(self, seconds: float | None = None) -> None:
        """A request finished; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                if asyncio.get_running_loop() is loop:
                    self._leave(seconds)
                    return
            except RuntimeError:
                pass
            loop.call_soon_threadsafe(self._leave, seconds)
        else:
            self._leave(seconds)

    def _leave(self, seconds: float | None) -> None:
        if seconds is not None:
            self._durations.append(seconds)
        if self._started:
            self._started.pop(0)  # the oldest: the one most likely to have ended
        self._grant()

    def _take(self, model: str) -> None:
        self._started.append(self.clock())
        self.stats["admitted"] += 1
        self.taken(model)

    def _grant(self) -> None:
        """Hand free slots to the clients' lines in turn (round robin), while the market has room."""
        while self.running < self.max_running and self._lines:
            client, line = next(iter(self._lines.items()))
            self._lines.move_to_end(client)
            waiter = line[0]
            if self.room(waiter.model):
                return
            line.popleft()
            if not line:
                del self._lines[client]
            if not waiter.future.done():
                waiter.future.set_result(None)
                self._take(waiter.model)
                self._drained()

    def _drained(self) -> None:
        """Measure the queue's pace: the time between grants from it, within one stretch of it not empty."""
        now = self.clock()
        if self._last_grant is not None:
            self._drains.append(now - self._last_grant)
        self._last_grant = now if self._lines else None

    def _drop(self, waiter: _Waiter) -> None:
        line = self._lines.get(waiter.client)
        if line is not None and waiter in line:
            line.remove(waiter)
            if not line:
                del self._lines[waiter.client]
