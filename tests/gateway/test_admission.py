"""The gateway's admission queue on its own (no market): the fair order, the estimate of when a queued
request starts, and refusals decided at arrival (or as soon as the deadline cannot be met) instead of at
the deadline. A controlled clock makes the estimates exact; the queue itself runs on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from splitup.gateway.admission import Admission
from splitup.sdk.errors import MarketBusy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _measured(adm: Admission, seconds: float, n: int = 8) -> None:
    for _ in range(n):
        adm._durations.append(seconds)


def test_queued_requests_are_served_in_turn_per_client() -> None:
    async def run() -> list[str]:
        adm = Admission(max_running=1, max_queue=8, queue_timeout=60, clock=Clock())
        await adm.enter("first", "m")  # takes the only slot
        order: list[str] = []

        async def one(client: str) -> None:
            await adm.enter(client, "m")
            order.append(client)

        tasks = [asyncio.create_task(one(c)) for c in ("a", "a", "a", "b", "c")]
        await asyncio.sleep(0.05)
        assert (adm._ahead("a"), adm._ahead("b"), adm._ahead("d")) == (5, 4, 3)
        for _ in tasks:
            adm.leave(1.0)
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == ["a", "b", "c", "a", "a"]


def test_a_request_that_cannot_start_in_time_is_refused_at_arrival() -> None:
    async def run() -> None:
        clock = Clock()
        adm = Admission(max_running=1, max_queue=16, queue_timeout=10, clock=clock)
        _measured(adm, 3.0)
        await adm.enter("x", "m")  # running: its slot frees in about 3 s
        assert adm.start_in(0) == pytest.approx(3.0)
        assert adm.start_in(2) == pytest.approx(9.0)
        waiting = [asyncio.create_task(adm.enter("x", "m")) for _ in range(2)]  # start in 3 s and 6 s: queued
        await asyncio.sleep(0.05)
        assert adm.waiting == 2
        # Refused at arrival: the call raises in its first step, before it could wait at all (not a wall-clock
        # bound, which a stalled CI machine can overrun).
        arriving = adm.enter("x", "m")
        with pytest.raises(MarketBusy) as busy:  # would start in 9 s: beyond 0.8 of the 10 s deadline
            arriving.send(None)
        assert busy.value.retry_after == 9  # come back when the queue ahead of it is gone
        # The same decision when it arrives, before its body is read; another client's request would be
        # served in turn (after x's next one), so it is counted in.
        early = adm.arrive("x")
        assert early is not None and early.retry_after == 9
        assert adm.arrive("y") is None
        adm.depart("y")
        assert adm.stats["refused_early"] == 2 and adm.arriving == 0
        # Another client is served in turn, right after the running request: it is not refused.
        other = asyncio.create_task(adm.enter("y", "m"))
        await asyncio.sleep(0.05)
        assert adm._ahead("y", 0) == 1 and not other.done()
        for _ in range(3):
            clock.now += 3.0
            adm.leave(3.0)
            await asyncio.sleep(0.02)
        await asyncio.gather(*waiting, other)
        assert adm.stats["timed_out"] == 0

    asyncio.run(run())


def test_a_waiting_request_is_refused_once_its_deadline_cannot_be_met() -> None:
    async def run() -> None:
        clock = Clock()
        adm = Admission(max_running=1, max_queue=16, queue_timeout=10, clock=clock)
        _measured(adm, 2.0)
        await adm.enter("x", "m")
        queued = asyncio.create_task(adm.enter("x", "m"))  # expected to start in 2 s
        await asyncio.sleep(0.05)
        assert adm.waiting == 1
        # The running request overruns and the measured pace slows: 8 s in, a slot is expected only after
        # 8 more seconds, past the 2 s left of the deadline: refused now, not at the deadline.
        clock.now += 8.0
        _measured(adm, 16.0, 32)
        with pytest.raises(MarketBusy):
            await asyncio.wait_for(queued, 1.0)
        assert adm.stats["timed_out"] == 1 and adm.waiting == 0

    asyncio.run(run())


def test_capacity_refusal_happens_before_the_body_and_counts_everyone_in() -> None:
    adm = Admission(max_running=2, max_queue=1, queue_timeout=5)
    assert [adm.arrive("a") is None for _ in range(4)] == [True, True, True, False]
    adm.depart("a")
    assert adm.arrive("b") is None


def test_requests_still_being_checked_count_in_the_fair_order() -> None:
    """Arrived requests join their clients' lines: a's burst of three being checked is ahead of a's
    fourth, but only the first of them is ahead of b's first (b is served in turn)."""
    adm = Admission(max_running=1, max_queue=8, queue_timeout=60, clock=Clock())
    for _ in range(3):
        assert adm.arrive("a") is None
    assert adm._ahead("a", 3) == 3 and adm._ahead("b") == 1
