"""Checking a request's tensors against a task's declared input interface, before anything runs."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from splitup.errors import SplitUpError
from splitup.partition.task import SEQ_DIM, TaskDefinition


class InterfaceError(SplitUpError):
    """Tensors that do not fit the task's interface: names, dtypes, ranks, dims beyond their maxima."""


def check_feeds(task: TaskDefinition, tensors: Mapping[str, np.ndarray], *, passthrough: Collection[str] = (),
                state_held: bool = False) -> None:
    """Refuse anything the task does not declare.

    ``passthrough`` names tensors that only travel through this hop to a later one. With ``state_held`` the
    node supplies the KV-cache inputs itself, so a client sending them is an error; otherwise missing state
    inputs mean an empty cache.
    """
    specs = {s.name: s for s in task.inputs}
    for name in tensors:
        if name not in specs and name not in passthrough:
            raise InterfaceError(f"task {task.index} has no input {name!r} (inputs: {', '.join(specs)})")
        if state_held and name in task.state:
            raise InterfaceError(f"{name!r} is KV-cache state held by the node's session; do not send it")
    missing = [n for n in specs if n not in tensors and n not in task.state]
    if missing:
        raise InterfaceError(f"task {task.index} is missing input(s) {', '.join(missing)}")
    symbols: dict[str, tuple[int, str]] = {}
    for name, value in tensors.items():
        spec = specs.get(name)
        if spec is None:
            continue
        if str(value.dtype) != spec.dtype:
            raise InterfaceError(f"input {name!r}: dtype {value.dtype}, expected {spec.dtype}")
        if value.ndim != len(spec.shape):
            raise InterfaceError(f"input {name!r}: rank {value.ndim} {list(value.shape)}, expected {spec.shape}")
        for axis, (got, want, most) in enumerate(zip(value.shape, spec.shape, spec.max_shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise InterfaceError(f"input {name!r} axis {axis}: {got}, expected {want}")
                continue
            if got > most:
                raise InterfaceError(f"input {name!r} axis {axis} ({want}): {got} exceeds the maximum {most}")
            seen = symbols.setdefault(want, (got, name))
            if seen[0] != got:
                raise InterfaceError(f"dimension {want!r} is {got} in {name!r} but {seen[0]} in {seen[1]!r}")
        if name in task.value_max:
            check_values(name, value, task.value_max[name])


def check_values(name: str, value: np.ndarray, declared: list[list[float]]) -> None:
    """A feed whose values size outputs must stay in its declared range(s): the task was sized at their ends."""
    if not value.size:
        return
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        raise InterfaceError(f"input {name!r}: values must be finite, they size this task's outputs "
                             "(splitup.value_max)")
    if len(declared) == 1:
        (lo, hi), least, most = declared[0], value.min().item(), value.max().item()
        if least < lo or most > hi:
            raise InterfaceError(f"input {name!r}: values {least}..{most} are outside the declared range {lo}..{hi} "
                                 "(splitup.value_max), which the task's memory was sized for")
        return
    if value.size != len(declared):
        raise InterfaceError(f"input {name!r}: {value.size} values, but a range is declared for each of "
                             f"{len(declared)} (splitup.value_max)")
    for i, (v, (lo, hi)) in enumerate(zip(value.reshape(-1).tolist(), declared, strict=True)):
        if not lo <= v <= hi:
            raise InterfaceError(f"input {name!r}: element {i} is {v}, outside its declared range {lo}..{hi} "
                                 "(splitup.value_max), which the task's memory was sized for")


class ContextLimit(InterfaceError):
    """A step whose positions (the cached past plus the new sequence) go beyond the task's maximum context."""


def check_positions(task: TaskDefinition, feeds: Mapping[str, np.ndarray]) -> None:
    """Refuse a step whose cache would grow past the task's declared maximum.

    ``feeds`` holds the state inputs (the past, from the session or the client) and the new inputs. The
    present cache is past + seq long and every position indexes the model's position table, whose size
    is the maximum of the cache axis; beyond it an engine would fail inside a Gather, or worse, run.
    """
    if not task.state or SEQ_DIM not in task.dim_max:
        return
    specs = {s.name: s for s in task.inputs}
    seq = next((int(v.shape[axis]) for name, v in feeds.items() if name in specs and name not in task.state
                for axis, d in enumerate(specs[name].shape) if d == SEQ_DIM and axis < v.ndim), None)
    if seq is None:
        return
    # A fixed-capacity cache carries its filled length beside it (``past.N.length``); a growing one is as
    # long as its axis.
    lengths = [int(np.max(v)) for n, v in feeds.items() if n in task.state and n.endswith(".length") and v.size]
    # The cache axis is the state's symbolic dim that no other input has: a batch axis (``batch``) is
    # shared with the token inputs, the cache length is the state's own.
    shared = {d for s in task.inputs if s.name not in task.state for d in s.shape if isinstance(d, str)}
    for name in task.state:
        value, spec = feeds.get(name), specs.get(name)
        if value is None or spec is None:
            continue
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str) and d not in shared and d in task.dim_max and axis < value.ndim:
                past = max(lengths) if lengths else int(value.shape[axis])
                most = task.dim_max[d]
                if past + seq > most:
                    raise ContextLimit(f"context limit: {past} cached + {seq} new positions = {past + seq} exceed "
                                       f"task {task.index}'s maximum context of {most} ({d!r})")
                return
