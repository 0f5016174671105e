"""Admission control for the gateway: a bounded number of requests run at once, the rest wait in a
bounded, fair queue (one line per client, served in turn), each for at most its deadline; a request
that cannot be admitted is refused at once with 429 and a Retry-After.

A request is admitted only when a slot is free *and* the market has room for the model (``room``: the
nodes holding each task have free collateral and sessions), so no escrow is posted for a job nobody can
take. Everything here runs on the event loop and never blocks it; ``room`` reads a cached forecast.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from splitup.sdk.errors import MarketBusy


@dataclass
class _Waiter:
    client: str
    model: str
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    def __init__(self, *, max_running: int = 4, max_queue: int = 16, per_client: int = 8,
                 queue_timeout: float = 20.0, room: Callable[[str], str] | None = None,
                 taken: Callable[[str], None] | None = None) -> None:
        """``room(model)`` says why the market cannot take a job of ``model`` now ('' when it can);
        ``taken(model)`` is told of each admission, so the forecast counts it until the job is placed."""
        self.max_running, self.max_queue, self.per_client = max_running, max_queue, per_client
        self.queue_timeout = queue_timeout
        self.room = room or (lambda _model: "")
        self.taken = taken or (lambda _model: None)
        self.running = 0
        self.arriving = 0  # counted in by arrive(), not yet entered
        self._lines: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._durations: deque[float] = deque(maxlen=32)
        self.stats = {"admitted": 0, "queued": 0, "refused": 0, "timed_out": 0}

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._lines.values())

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, at the recent pace of requests."""
        pace = sum(self._durations) / len(self._durations) if self._durations else 2.0
        return max(1, min(60, math.ceil(pace * (self.waiting + 1) / max(1, self.max_running))))

    def arrive(self) -> MarketBusy | None:
        """Count a request in before its body is even read; a refusal when the slots and the queue are
        taken by requests already in (being checked, queued or running). Pair with :meth:`enter` or
        :meth:`depart`."""
        room = self.max_running + (self.max_queue if self.queue_timeout > 0 else 0)
        if self.running + self.waiting + self.arriving >= room:
            self.stats["refused"] += 1
            return MarketBusy(f"the gateway is at capacity ({self.running} running, {self.waiting} queued)",
                              retry_after=self.retry_after())
        self.arriving += 1
        return None

    def depart(self) -> None:
        """A counted-in request that will not enter (refused by its checks)."""
        self.arriving = max(0, self.arriving - 1)

    async def enter(self, client: str, model: str) -> float:
        """Wait for a slot (raises :class:`MarketBusy`); returns the seconds spent queued."""
        self._loop = asyncio.get_running_loop()
        self.depart()
        why = self.room(model)
        if self.running < self.max_running and not self.waiting and not why:
            self._take(model)
            return 0.0
        line = self._lines.get(client)
        if self.queue_timeout <= 0 or self.waiting >= self.max_queue or (line is not None and len(line) >= self.per_client):
            self.stats["refused"] += 1
            raise MarketBusy(f"the gateway is at capacity ({self.running} running, {self.waiting} queued)"
                             + (f"; {why}" if why else ""), retry_after=self.retry_after())
        waiter = _Waiter(client, model)
        self._lines.setdefault(client, deque()).append(waiter)
        self.stats["queued"] += 1
        t0 = time.monotonic()
        deadline = t0 + self.queue_timeout
        try:
            while not waiter.future.done():
                self._grant()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Market room changes without anyone leaving (a job settles on another gateway): look again.
                await asyncio.wait([waiter.future], timeout=min(left, 0.25))
        finally:
            if not waiter.future.done():
                self._drop(waiter)
        if not waiter.future.done():
            self.stats["timed_out"] += 1
            raise MarketBusy(f"no room in the market within {self.queue_timeout:.0f} s"
                             + (f": {self.room(model)}" if self.room(model) else ""), retry_after=self.retry_after())
        return time.monotonic() - t0

    def leave(self, seconds: float | None = None) -> None:
        """A request finished; safe to call from any thread."""
        if seconds is not None:
            self._durations.append(seconds)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                if asyncio.get_running_loop() is loop:
                    self._leave()
                    return
            except RuntimeError:
                pass
            loop.call_soon_threadsafe(self._leave)
        else:
            self._leave()

    def _leave(self) -> None:
        self.running = max(0, self.running - 1)
        self._grant()

    def _take(self, model: str) -> None:
        self.running += 1
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

    def _drop(self, waiter: _Waiter) -> None:
        line = self._lines.get(waiter.client)
        if line is not None and waiter in line:
            line.remove(waiter)
            if not line:
                del self._lines[waiter.client]
