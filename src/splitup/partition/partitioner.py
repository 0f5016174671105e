"""Optimal contiguous partitioning of a graph into tasks that fit VRAM budgets.

The graph's nodes, in topological order, are cut only where the tensors crossing the cut are small
(at most ``cut_factor`` times the smallest such crossing inside the weighted part of the graph: the
hidden state between transformer blocks, the activations between MLP layers). The stretches between
allowed cuts are *units*; a task is a run of consecutive units. The objective is lexicographic and
solved exactly by dynamic programming over cut points:

1. the fewest tasks whose VRAM requirement fits a budget,
2. then the smallest FLOPs of the slowest task (pipeline throughput),
3. then the fewest bytes crossing the cuts.

With several node sizes (heterogeneous budgets) each task is placed on the smallest free node it fits.
If no partition exists with clean cuts, the cut rule is relaxed step by step; if a single node or
weight is larger than every budget, the error names it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from splitup.errors import SplitUpError
from splitup.partition.cost import GraphAnalysis

DEFAULT_WORKSPACE = 256 * 2**20


class PartitionError(SplitUpError):
    """No partition satisfies the budgets; the message names what does not fit."""


@dataclass(frozen=True)
class Segment:
    """One task of a plan: nodes ``[start, stop)`` of ``GraphAnalysis.nodes`` and what it needs."""

    start: int
    stop: int
    weight_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    workspace_bytes: int
    flops: int
    cut_bytes: int  # bytes leaving this task for later tasks
    budget_bytes: int  # the size of the node type it was placed on

    @property
    def vram_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.activation_bytes + self.workspace_bytes


@dataclass(frozen=True)
class Partition:
    segments: list[Segment]
    lower_bound: int
    cut_factor: float
    total_weight_bytes: int
    total_kv_cache_bytes: int


@dataclass(frozen=True)
class _Unit:
    start: int
    stop: int
    weights: frozenset[str]
    kv: frozenset[str]
    flops: int
    peak: int  # peak live bytes inside the unit, with everything entering it live
    retained: int  # graph outputs made here that stay live until the task ends


class _Costs:
    def __init__(self, a: GraphAnalysis, workspace: int) -> None:
        self.a = a
        self.workspace = workspace
        n = len(a.nodes)
        self.n = n
        self.consts = set(a.constants)
        self.inits = set(a.initializers)
        self.outputs = set(a.graph_outputs)
        self.state_inputs = set(a.state)
        delta = [0] * (n + 2)
        # A tensor made by node p and last read by node q crosses every cut in (p, q].
        for name, p in a.producer.items():
            q = a.last_use.get(name, -1)
            if q > p:
                b = a.nbytes(name)
                delta[p + 1] += b
                delta[q + 1] -= b
        self.crossing = [0] * (n + 1)
        run = 0
        for i in range(n + 1):
            run += delta[i]
            self.crossing[i] = run
        # Cutting between two reads of a KV-cache input would split one layer's state over two nodes.
        self.forbidden = [False] * (n + 1)
        for name in self.state_inputs:
            f, last = a.first_use.get(name), a.last_use.get(name)
            if f is not None and last is not None:
                for p in range(f + 1, last + 1):
                    self.forbidden[p] = True
        weighted = [i for i, node in enumerate(a.nodes) if any(x in self.inits for x in node.input)]
        set_weighted = set(weighted)
        self.first_w, self.last_w = (weighted[0], weighted[-1]) if weighted else (0, n - 1)
        self.weighted_prefix = [0] * (n + 1)
        for i in range(n):
            self.weighted_prefix[i + 1] = self.weighted_prefix[i] + (1 if i in set_weighted else 0)
        self._sweep()

    def candidate_cuts(self, factor: float | None) -> list[int]:
        inner = [p for p in range(1, self.n) if not self.forbidden[p]]
        if factor is None:
            return self._thin(inner)
        useful = [self.crossing[p] for p in inner if self.first_w < p <= self.last_w and self.crossing[p] > 0]
        if not useful:
            return inner
        limit = factor * min(useful)
        return self._thin([p for p in inner if self.crossing[p] <= limit])

    def _thin(self, cuts: list[int]) -> list[int]:
        """Of consecutive cuts with no weight read between them, keep the cheapest: they split the
        weights identically, so the others only add DP states."""
        kept: list[int] = []
        for p in cuts:
            if kept and self.weighted_prefix[p] == self.weighted_prefix[kept[-1]]:
                if self.crossing[p] < self.crossing[kept[-1]]:
                    kept[-1] = p
                continue
            kept.append(p)
        return kept

    def unit(self, start: int, stop: int) -> _Unit:
        a = self.a
        weights: set[str] = set()
        kv: set[str] = set()
        for node in a.nodes[start:stop]:
            for x in node.input:
                if x in self.inits:
                    weights.add(x)
                elif x in self.state_inputs:
                    kv.add(x)
        return _Unit(start, stop, frozenset(weights), frozenset(kv), self.flops_prefix[stop] - self.flops_prefix[start],
                     max(self.level[start:stop]) - self.retained_prefix[start],
                     self.retained_prefix[stop] - self.retained_prefix[start])

    def _sweep(self) -> None:
        """Live bytes while each node runs, in one pass.

        ``level[i]`` is the bytes live during node i (everything crossing into it, the graph inputs
        still to be read, its outputs) plus the graph outputs made before it, which a task keeps until
        it ends; a task starting at s subtracts ``retained_prefix[s]``. KV-cache inputs are counted
        separately, as the task's cache.
        """
        a = self.a
        n = self.n
        pending_inputs = [0] * (n + 1)
        for name in a.graph_inputs:
            q = a.last_use.get(name, -1)
            if q >= 0 and name not in self.state_inputs:
                pending_inputs[0] += a.nbytes(name)
                pending_inputs[q + 1] -= a.nbytes(name)
        retained = [0] * n
        for name in a.graph_outputs:
            p = a.producer.get(name)
            if p is not None and a.last_use.get(name, -1) < 0:
                retained[p] += a.nbytes(name)
        self.retained_prefix = [0] * (n + 1)
        self.flops_prefix = [0] * (n + 1)
        self.level = [0] * n
        inputs_live = 0
        for i, node in enumerate(a.nodes):
            inputs_live += pending_inputs[i]
            out = sum(a.nbytes(o) for o in node.output if o)
            self.level[i] = self.crossing[i] + inputs_live + out + self.retained_prefix[i]
            self.retained_prefix[i + 1] = self.retained_prefix[i] + retained[i]
            self.flops_prefix[i + 1] = self.flops_prefix[i] + a.flops[i]


def partition(
    analysis: GraphAnalysis,
    budgets: Sequence[int] | int,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE,
    cut_factor: float = 2.0,
) -> Partition:
    """Split ``analysis`` into tasks. ``budgets``: one size for identical nodes, or the list of node sizes."""
    if isinstance(budgets, int):
        types: list[tuple[int, int | None]] = [(budgets, None)]
    else:
        if not budgets:
            raise PartitionError("no node sizes given")
        counts: dict[int, int] = {}
        for b in budgets:
            counts[b] = counts.get(b, 0) + 1
        types = sorted(counts.items())
    if any(size <= 0 for size, _ in types):
        raise PartitionError("budgets must be positive")
    costs = _Costs(analysis, workspace_bytes)
    largest = max(size for size, _ in types)
    biggest = max(analysis.initializers, key=analysis.nbytes, default=None)
    if biggest is not None and analysis.nbytes(biggest) + workspace_bytes > largest:
        raise PartitionError(_explain_infeasible(costs, largest, types))
    if all(c is not None for _, c in types):
        capacity = sum(size * (c or 0) for size, c in types)
        need = analysis.weight_bytes + sum(analysis.nbytes(n) for n in analysis.state)
        if need > capacity:
            raise PartitionError(f"the model needs at least {need} bytes of weights and KV cache, more than all "
                                 f"{sum(c or 0 for _, c in types)} nodes hold together ({capacity}); "
                                 "the model does not fit on the given nodes")
    factor: float | None = cut_factor
    while True:
        cuts = costs.candidate_cuts(factor)
        result = _solve(costs, cuts, types)
        if result is not None:
            segments = result
            break
        if factor is None:
            raise PartitionError(_explain_infeasible(costs, largest, types))
        factor = factor * 4 if factor < 1e6 else None
    total_w = analysis.weight_bytes
    total_kv = sum(analysis.nbytes(n) for n in analysis.state)
    return Partition(
        segments=segments,
        lower_bound=max(1, math.ceil((total_w + total_kv) / largest)),
        cut_factor=factor if factor is not None else math.inf,
        total_weight_bytes=total_w,
        total_kv_cache_bytes=total_kv,
    )


def budget_for_tasks(analysis: GraphAnalysis, count: int, *, workspace_bytes: int = 0) -> int:
    """A uniform budget under which the partitioner needs exactly ``count`` tasks.

    The fewest tasks only fall as the budget grows, so a bisection over the budget finds one in a few
    partitioner runs. Raises ``PartitionError`` when no budget gives exactly ``count`` (the count can
    jump past it when the graph has few places to cut).
    """
    if count < 1:
        raise PartitionError("a plan has at least one task")
    lo, hi = 0, partition(analysis, 2**62, workspace_bytes=workspace_bytes).segments[0].vram_bytes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            n = len(partition(analysis, mid, workspace_bytes=workspace_bytes).segments)
        except PartitionError:
            n = count + 1  # too small for the largest single piece: more tasks than any budget gives
        if n == count:
            return mid
        lo, hi = (mid, hi) if n > count else (lo, mid)
    if count == 1:
        return hi
    raise PartitionError(f"no budget splits the model into exactly {count} tasks")


def _explain_infeasible(costs: _Costs, largest: int, types: list[tuple[int, int | None]]) -> str:
    a = costs.a
    for name in sorted(a.initializers, key=a.nbytes, reverse=True)[:1]:
        if a.nbytes(name) + costs.workspace > largest:
            return (f"weight {name!r} alone needs {a.nbytes(name)} bytes (+{costs.workspace} workspace), "
                    f"more than the largest budget {largest}")
    for i in range(costs.n):
        u = costs.unit(i, i + 1)
        need = sum(a.nbytes(w) for w in u.weights) + sum(a.nbytes(k) for k in u.kv) + u.peak + costs.workspace
        if need > largest:
            return (f"node {a.nodes[i].name!r} ({a.nodes[i].op_type}) alone needs {need} bytes with its weights, "
                    f"activations and workspace, "
                    f"more than the largest budget {largest}")
    if any(c is not None for _, c in types):
        return "the model does not fit on the given nodes even when every node is used; add nodes or memory"
    return "no partition fits the budget"


def _solve(costs: _Costs, cuts: list[int], types: list[tuple[int, int | None]]) -> list[Segment] | None:
    a = costs.a
    bounds = [0, *cuts, costs.n]
    units = [costs.unit(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    U = len(units)
    largest = max(s for s, _ in types)
    # seg[i][j]: (vram, flops) of units i..j-1, only for segments that fit the largest budget.
    seg: list[dict[int, tuple[int, int]]] = []
    for i in range(U):
        row: dict[int, tuple[int, int]] = {}
        weights: set[str] = set()
        kv: set[str] = set()
        flops = retained = peak = 0
        wbytes = kvbytes = 0
        for j in range(i, U):
            u = units[j]
            for w in u.weights - weights:
                wbytes += a.nbytes(w)
            weights |= u.weights
            for k in u.kv - kv:
                kvbytes += a.nbytes(k)
            kv |= u.kv
            peak = max(peak, u.peak + retained)
            retained += u.retained
            flops += u.flops
            vram = wbytes + kvbytes + peak + costs.workspace
            if wbytes + kvbytes + costs.workspace > largest:
                break
            if vram <= largest:
                row[j + 1] = (vram, flops)
        seg.append(row)

    limited = any(c is not None for _, c in types)
    start = (0, tuple(0 for _ in types))

    def moves(state: tuple[int, tuple[int, ...]], max_flops: int | None):
        i, used = state
        for j, (vram, flops) in seg[i].items():
            if max_flops is not None and flops > max_flops:
                continue
            for t, (size, count) in enumerate(types):
                if vram <= size and (count is None or used[t] < count):
                    nxt = used if not limited else used[:t] + (used[t] + 1,) + used[t + 1 :]
                    yield (j, nxt), t
                    break

    def levels(max_flops: int | None, limit: int) -> int | None:
        frontier = {start}
        for k in range(1, limit + 1):
            nxt = {s for st in frontier for s, _ in moves(st, max_flops)}
            if any(s[0] == U for s in nxt):
                return k
            if not nxt:
                return None
            frontier = nxt
        return None

    T = levels(None, U)
    if T is None:
        return None
    candidates = sorted({f for row in seg for _, f in row.values()})
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if levels(candidates[mid], T) == T:
            hi = mid
        else:
            lo = mid + 1
    bottleneck = candidates[lo]
    # Fewest cut bytes with exactly T tasks under the bottleneck.
    best: dict[tuple[int, tuple[int, ...]], tuple[int, list[tuple[int, int, int]]]] = {start: (0, [])}
    for _ in range(T):
        nxt: dict[tuple[int, tuple[int, ...]], tuple[int, list[tuple[int, int, int]]]] = {}
        for st, (cost, path) in best.items():
            for s2, t in moves(st, bottleneck):
                c = cost + (costs.crossing[bounds[s2[0]]] if s2[0] < U else 0)
                if s2 not in nxt or c < nxt[s2][0]:
                    nxt[s2] = (c, [*path, (st[0], s2[0], t)])
        best = nxt
    finals = [v for s, v in best.items() if s[0] == U]
    _, path = min(finals, key=lambda v: v[0])
    return [_segment(costs, units, bounds, i, j, types[t][0]) for i, j, t in path]


def _segment(costs: _Costs, units: list[_Unit], bounds: list[int], i: int, j: int, budget: int) -> Segment:
    a = costs.a
    weights = frozenset().union(*(u.weights for u in units[i:j]))
    kv = frozenset().union(*(u.kv for u in units[i:j]))
    peak = retained = 0
    for u in units[i:j]:
        peak = max(peak, u.peak + retained)
        retained += u.retained
    return Segment(
        start=bounds[i],
        stop=bounds[j],
        weight_bytes=sum(a.nbytes(w) for w in weights),
        kv_cache_bytes=sum(a.nbytes(k) for k in kv),
        activation_bytes=peak,
        workspace_bytes=costs.workspace,
        flops=sum(u.flops for u in units[i:j]),
        cut_bytes=costs.crossing[bounds[j]] if bounds[j] < costs.n else 0,
        budget_bytes=budget,
    )
