"""Batching concurrent calls of one task into one engine call.

A task graph whose every input and output has the same symbolic leading axis (``batch``, bounded by its
declared maximum) runs several sequences at once. Calls that arrive together with equal shapes (the
same chunk length and the same cache length: lockstep decode steps, equal prefill chunks) are stacked
on that axis, run once, and each caller gets its rows back (views, no copy). Weights are read once per
call instead of once per sequence, which is what a decode step's time mostly is.

Decoder graphs carry a length per sequence (``past.{i}.length``, see ``splitup.runtime.kv``) and take
positions and the causal mask from it, so sequences of different lengths share a call too: their caches
are padded with empty slots to the longest one's capacity (slots past a sequence's length are masked).
Graphs whose cache is concatenated (bundles made before that form) stack only equal cache lengths.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitup.partition.task import TaskDefinition
from splitup.runtime.engine import Runner, fill_state
from splitup.runtime.interface import check_feeds


def batch_limit(task: TaskDefinition) -> int:
    """How many sequences one call may hold: the maximum of a symbolic leading axis shared by every input
    and output, or 1 when the graph has no such axis."""
    specs = [*task.inputs, *task.outputs]
    first = specs[0].shape[0] if specs and specs[0].shape else None
    if not isinstance(first, str) or not all(s.shape and s.shape[0] == first for s in specs):
        return 1
    return int(task.inputs[0].max_shape[0])


@dataclass(eq=False)  # identity: calls are removed from the pending list by identity, never by their arrays
class _Call:
    key: tuple
    feeds: Mapping[str, np.ndarray]
    rows: int
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    done: bool = False


class Batcher:
    """Coalesces concurrent ``run`` calls of ``runner``. One call at a time leads: it waits briefly for the
    ``expected`` peers (arrivals more than ``gap_s`` apart end the wait, ``max_wait_s`` bounds it), runs
    the group, and hands leadership to a call still pending."""

    def __init__(self, runner: Runner, *, gap_s: float = 0.002, max_wait_s: float = 0.008) -> None:
        self.runner = runner
        self.max_rows = batch_limit(runner.task)
        # Cache inputs padded to a common capacity when stacked (graphs with per-sequence lengths only).
        self._padded: dict[str, int] = dict(runner.kv.caches) if runner.kv is not None else {}
        self.gap_s, self.max_wait_s = gap_s, max_wait_s
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._leading = False
        self._last_arrival = 0.0
        self.calls = 0  # engine calls made, and the sequences they held: batching's effect, for reports
        self.rows = 0

    @property
    def applies(self) -> bool:
        """Whether calls can be stacked: a batch axis, and state held as numpy arrays in the growing form
        (engines keeping caches on the device, or in the fixed form, step one session per call)."""
        return self.max_rows > 1 and self.runner.kv_form == "growing" and getattr(self.runner, "captured", None) is None

    def step(self, feeds: Mapping[str, np.ndarray], state: Mapping[str, Any] | None,
             expected: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
        """``runner.step`` (outputs, next state), sharing the engine call with concurrent steps."""
        if not self.applies:
            return self.runner.step(feeds, state)
        task = self.runner.task
        full = fill_state(task, feeds, state, self.runner.kv_form)
        if self.runner.kv is None:
            check_feeds(task, full)  # a concatenating cache must still fit its declared maximum
        outs = self.run(full, expected)
        return outs, {past: outs[present] for past, present in task.state.items()}

    def run(self, feeds: Mapping[str, np.ndarray], expected: int = 1) -> dict[str, np.ndarray]:
        """The runner's outputs for ``feeds``, computed alone or stacked with concurrent calls of equal shapes;
        ``expected`` is how many such calls the caller knows to be under way (itself included)."""
        rows = int(next(iter(feeds.values())).shape[0]) if feeds else 1
        if self.max_rows < 2 * rows or expected <= 1:
            self._count(1, rows)
            return self.runner.run(feeds)
        call = _Call(self._key(feeds), feeds, rows)
        with self._cond:
            self._pending.append(call)
            self._last_arrival = time.monotonic()
            self._cond.notify_all()
            while not call.done and self._leading:
                self._cond.wait()
            if not call.done:
                self._leading = True
        if not call.done:
            try:
                self._execute(self._gather(call, expected))
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _key(self, feeds: Mapping[str, np.ndarray]) -> tuple:
        """What must be equal to stack calls: every shape, except a padded cache's capacity."""
        pad = self._padded
        return tuple((k, tuple(-1 if pad.get(k) == i else d for i, d in enumerate(v.shape)), v.dtype.str)
                     for k, v in feeds.items())

    def _stack(self, name: str, values: list[np.ndarray]) -> np.ndarray:
        axis = self._padded.get(name)
        if axis is not None:
            most = max(v.shape[axis] for v in values)
            values = [v if v.shape[axis] == most else
                      np.pad(v, [(0, most - v.shape[axis]) if i == axis else (0, 0) for i in range(v.ndim)])
                      for v in values]
        return np.concatenate(values)

    def _gather(self, lead: _Call, expected: int) -> list[_Call]:
        fits = self.max_rows // lead.rows
        deadline = time.monotonic() + self.max_wait_s
        with self._cond:
            while True:
                same = [c for c in self._pending if c.key == lead.key]
                now = time.monotonic()
                wait = min(deadline, self._last_arrival + self.gap_s) - now
                if len(same) >= min(expected, fits) or wait <= 0:
                    break
                self._cond.wait(wait)
            group = [lead, *[c for c in same if c is not lead][: fits - 1]]
            for c in group:
                self._pending.remove(c)
            return group

    def _execute(self, group: list[_Call]) -> None:
        try:
            if len(group) == 1:
                outs = [self.runner.run(group[0].feeds)]
            else:
                stacked = {k: self._stack(k, [c.feeds[k] for c in group]) for k in group[0].feeds}
                both = self.runner.run(stacked)
                r = group[0].rows
                outs = [{k: v[i * r : (i + 1) * r] for k, v in both.items()} for i in range(len(group))]
            self._count(1, sum(c.rows for c in group))
            for c, out in zip(group, outs, strict=True):
                c.result = out
        except BaseException as exc:  # every caller of the group gets the engine's error
            for c in group:
                c.error = exc
        with self._cond:
            for c in group:
                c.done = True
            self._cond.notify_all()

    def _count(self, calls: int, rows: int) -> None:
        self.calls += calls
        self.rows += rows
