"""The two forms of a task's KV cache, over one task graph.

Decoder task graphs (``splitup.graph.zoo.common``) take per layer a cache with a capacity axis and the
length each sequence holds, and write the call's keys and values at ``length + [0, seq)``. What the
capacity is, is the runtime's choice:

- **growing**: exactly the length after the call. The caches grow by ``seq`` every call (what
  onnxruntime's CPU provider runs fastest: attention spans only the tokens there are);
- **fixed**: the task's maximum context, allocated once. Every call then has the same shapes, which
  is what engines that compile per shape need (tinygrad, CUDA graphs); the call's length may also
  be padded to a few fixed buckets (``STEP_BUCKETS``) so prefill chunks repeat their shapes too.

Both give the same outputs for the positions a call asks for (slots past a sequence's length are
masked), so executors and validators on different engines replay the same calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitup.partition.task import TensorSpec
from splitup.runtime.interface import InterfaceError

FORMS = ("growing", "fixed")
# Chunk lengths a fixed-form engine pads a call to (the next one up; longer chunks run as they are).
STEP_BUCKETS = (1, 8, 32, 128)


@dataclass(frozen=True)
class KvLayout:
    """Which state inputs of a task are caches (and their capacity axis), which are lengths, how many
    slots a cache may have, and which input axis counts the call's new positions."""

    caches: Mapping[str, int]
    lengths: tuple[str, ...]
    capacity: int
    step: tuple[str, int]

    @staticmethod
    def of(inputs: Sequence[TensorSpec], state: Mapping[str, str]) -> KvLayout | None:
        """The layout of a task, or ``None`` for one without a fixed-capacity cache (no state, or a graph
        that concatenates its cache, as bundles written before this form did)."""
        specs = {s.name: s for s in inputs}
        lengths = tuple(n for n in state if specs[n].dtype == "int64" and len(specs[n].shape) == 1)
        if not lengths:
            return None
        # A symbolic batch axis (graphs built with batch > 1) is the lengths' only axis; it is neither a
        # capacity nor a step axis.
        batch = {specs[n].shape[0] for n in lengths if isinstance(specs[n].shape[0], str)}
        caches: dict[str, int] = {}
        for name in state:
            if name in lengths:
                continue
            axes = [i for i, d in enumerate(specs[name].shape) if isinstance(d, str) and d not in batch]
            if len(axes) != 1:
                return None
            caches[name] = axes[0]
        dims = {specs[n].shape[a] for n, a in caches.items()}
        step = next(((s.name, i) for s in inputs if s.name not in state
                     for i, d in enumerate(s.shape) if isinstance(d, str) and d not in dims | batch), None)
        if not caches or step is None:
            return None
        capacity = min(int(specs[n].max_shape[a]) for n, a in caches.items())
        return KvLayout(caches, lengths, capacity, step)

    def step_size(self, feeds: Mapping[str, Any]) -> int:
        return int(feeds[self.step[0]].shape[self.step[1]])

    def length(self, values: Mapping[str, Any]) -> int:
        """The longest sequence's length in ``values`` (0 for caches never written)."""
        held = [np.asarray(values[n]) for n in self.lengths if n in values]
        return max((int(v.max()) for v in held if v.size), default=0)

    def needed(self, values: Mapping[str, Any], step: int) -> int:
        """Slots the call needs; refuses one that would run past the task's maximum context."""
        need = self.length(values) + step
        if need > self.capacity:
            raise InterfaceError(f"the context is full: {need} positions needed, the task holds at most "
                                 f"{self.capacity}")
        return need

    def ensure_capacity(self, full: dict[str, np.ndarray], form: str) -> dict[str, np.ndarray]:
        """``full`` (a complete feed, numpy caches) with each cache grown to fit the call: to exactly the
        length after it (growing) or to the maximum context (fixed)."""
        if form not in FORMS:
            raise ValueError(f"unknown KV-cache form {form!r}; known: {', '.join(FORMS)}")
        need = self.needed(full, self.step_size(full))
        for name, axis in self.caches.items():
            cache = full[name]
            have = cache.shape[axis]
            if have >= need:
                continue
            want = need if form == "growing" else self.capacity
            pad = [(0, 0)] * cache.ndim
            pad[axis] = (0, want - have)
            full[name] = np.pad(cache, pad)
        return full


def step_bucket(step: int, free: int) -> int:
    """The chunk length a fixed-form engine runs ``step`` new positions as: the next bucket up that still
    fits the ``free`` slots left, else ``step`` itself."""
    return next((b for b in STEP_BUCKETS if step <= b <= free), step)
