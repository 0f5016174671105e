"""Optimal contiguous partitioning of a graph into tasks that fit VRAM budgets.

The graph's nodes, in topological order, are cut only where the tensors crossing the cut are small
(at most ``cut_factor`` times the smallest such crossing inside the weighted part of the graph: the
hidden state between transformer blocks, the activations between MLP layers), and at the part
boundaries of operators that ``splitup.partition.refine`` split. The stretches between allowed cuts
are *units*; a task is a run of consecutive units. The objective is lexicographic:

1. the fewest tasks whose VRAM requirement fits a budget,
2. then the smallest FLOPs of the slowest task (pipeline throughput),
3. then the fewest bytes crossing the cuts.

With one node size all three are exact; with several (heterogeneous budgets) tasks may take any free
node they fit, 1 and 2 are exact, and 3 is minimised for the node sizes, in order, of a plan that
meets 1 and 2. If no partition exists with clean cuts, the cut rule is relaxed step by step; if a
single node or weight is larger than every budget, the error names it.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitup.errors import SplitUpError
from splitup.graph.memory import hidden_workspace
from splitup.graph.precision import HALF_TYPES, TOKEN_OUTPUT
from splitup.graph.upcast import token_fp32_form, token_head
from splitup.partition.cost import GraphAnalysis

DEFAULT_WORKSPACE = 256 * 2**20
# The ops ``graph.memory.hidden_workspace`` sizes (every other op allocates nothing it does not output):
# asked only for these, since reading a node's fields per node doubled the sweep's time.
HIDDEN_WORKSPACE_OPS = frozenset({"Attention", "LinearAttention", "CausalConvWithState"})


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


def float32_tail(a: GraphAnalysis) -> bool:
    """Whether the graph chooses tokens (outputs logits) and computes in half precision: its token task then
    computes in float32, in whole or its head (``splitup.graph.upcast``)."""
    return TOKEN_OUTPUT in a.graph_outputs and any(
        a.types[x].elem_type in HALF_TYPES for x in (*a.graph_outputs, *a.state) if x in a.types)


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
        # A decoder computing in half precision: its last task (the one emitting logits) computes in float32
        # (splitup.graph.upcast), so it is costed as it will run, half-precision tensors at twice their size.
        self.tail_fp32 = float32_tail(a)
        # Only its head does where the graph has one and the plan asks for that (graph.upcast.token_head,
        # token_fp32_form): nodes ``head..`` compute in float32, the rest of the last task in the plan's
        # precision. 0: the whole last task.
        self.head = 0
        if self.tail_fp32 and token_fp32_form(a.model) == "head":
            found = token_head(a.io, a.matrices(), set(a.initializers) | set(a.constants), set(a.graph_inputs))
            self.head = found[0] if found is not None else 0
        delta = [0] * (n + 2)
        nbytes, last_use = a.nbytes, a.last_use
        # A tensor made by node p and last read by node q crosses every cut in (p, q].
        for name, p in a.producer.items():
            q = last_use.get(name, -1)
            if q > p:
                b = nbytes(name)
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
        for p in range(self.head + 1, n) if self.head else ():
            self.forbidden[p] = True  # the head stays whole, with the token task
        inits = self.inits
        weighted = [i for i, (inputs, _) in enumerate(a.io) if not inits.isdisjoint(inputs)]
        set_weighted = set(weighted)
        self.first_w, self.last_w = (weighted[0], weighted[-1]) if weighted else (0, n - 1)
        self.weighted_prefix = [0] * (n + 1)
        for i in range(n):
            self.weighted_prefix[i + 1] = self.weighted_prefix[i] + (1 if i in set_weighted else 0)
        self._sweep()

    def candidate_cuts(self, factor: float | None, split_cuts: frozenset[int] = frozenset()) -> list[int]:
        """Cuts where at most ``factor`` times the smallest crossing leaves, plus the group boundaries
        of split operators (``split_cuts``), whose crossings the solver prices like any other."""
        inner = [p for p in range(1, self.n) if not self.forbidden[p]]
        if factor is None:
            return self._thin(inner)
        useful = [self.crossing[p] for p in inner
                  if self.first_w < p <= self.last_w and self.crossing[p] > 0 and p not in split_cuts]
        if not useful:
            return self._thin(inner)
        limit = factor * min(useful)
        return self._thin([p for p in inner if self.crossing[p] <= limit or p in split_cuts])

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

    def footprint(self, start: int, stop: int) -> tuple[int, int, int, int]:
        """(weight bytes, KV-cache bytes, peak activation bytes, FLOPs) of nodes ``[start, stop)`` as one task."""
        a = self.a
        reads = {x for inputs, _ in a.io[start:stop] for x in inputs}
        weights = reads & self.inits
        kv = reads & self.state_inputs
        flops = self.flops_prefix[stop] - self.flops_prefix[start]
        peak = max(self.level[start:stop]) - self.retained_prefix[start]
        if self.tail_fp32 and stop == self.n:
            head = max(start, self.head)
            body = {x for inputs, _ in a.io[start:head] for x in inputs}
            held = reads & (self.inits | self.state_inputs)
            wide = {x for inputs, _ in a.io[head:] for x in inputs} & held
            # a tensor the body reads too is held twice: as stored, and widened for the head
            nbytes = {x: (a.nbytes(x) if x in body or x not in wide else 0) + (self.widened(x) if x in wide else 0)
                      for x in held}
            body_peak = max(self.level[start:head], default=0) - self.retained_prefix[start]
            return (sum(nbytes[w] for w in weights), sum(nbytes[k] for k in kv),
                    max(body_peak, self.head_peak(head) - self.retained_prefix[start]), flops)
        return sum(a.nbytes(w) for w in weights), sum(a.nbytes(k) for k in kv), peak, flops

    def head_peak(self, head: int) -> int:
        """The most bytes live in float32 nodes ``head..``, less a task's ``retained_prefix`` at its start:
        their tensors and the outputs retained from the head on widened (an upper bound: integer tensors
        too), the outputs retained from before the head (the body's, in the plan's precision) not."""
        return 2 * self.level_suffix_max[head] - self.retained_prefix[head] if head < self.n else 0

    def stored_bytes(self, start: int) -> int:
        """Weights and KV cache read by nodes ``[start, n)``, at their stored size."""
        reads = {x for inputs, _ in self.a.io[start:] for x in inputs}
        return sum(self.a.nbytes(x) for x in reads & (self.inits | self.state_inputs))

    def widened(self, name: str) -> int:
        """Bytes of a weight or KV-cache tensor in the float32 task: half-precision types twice their size.
        (Activations are bounded by twice the peak: an upper bound, integer tensors included.)"""
        a = self.a
        t = a.initializers.get(name)
        half = (t.data_type if t is not None else a.types[name].elem_type) in HALF_TYPES
        return a.nbytes(name) * (2 if half else 1)

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
        nbytes, level, crossing, rp, fp, flops = a.nbytes, self.level, self.crossing, self.retained_prefix, \
            self.flops_prefix, a.flops
        for i, (node, (_, outputs)) in enumerate(zip(a.nodes, a.io, strict=True)):
            inputs_live += pending_inputs[i]
            out = sum(nbytes(o) for o in outputs if o)
            level[i] = crossing[i] + inputs_live + out + rp[i] + (hidden_workspace(node, a.types) if node.op_type
                                                                  in HIDDEN_WORKSPACE_OPS else 0)
            rp[i + 1] = rp[i] + retained[i]
            fp[i + 1] = fp[i] + flops[i]
        self.level_suffix_max = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            self.level_suffix_max[i] = max(level[i], self.level_suffix_max[i + 1])


def partition(
    analysis: GraphAnalysis,
    budgets: Sequence[int] | int,
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE,
    cut_factor: float = 2.0,
    split_cuts: frozenset[int] = frozenset(),
) -> Partition:
    """Split ``analysis`` into tasks. ``budgets``: one size for identical nodes, or the list of node sizes.
    ``split_cuts``: node positions where a split operator's parts meet (``splitup.partition.refine``);
    they are always candidate cuts."""
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
        cuts = costs.candidate_cuts(factor, split_cuts)
        result = _solve(costs, cuts, types)
        if result is not None:
            segments = result
            break
        if factor is None:
            raise PartitionError(_explain_infeasible(costs, largest, types))
        factor = factor * 4 if factor < 1e6 else None
    total_w = analysis.weight_bytes
    total_kv = sum(analysis.nbytes(n) for n in analysis.state)
    bound = math.ceil((total_w + total_kv) / largest)
    if costs.tail_fp32:
        # The last task holds at most the stored bytes of the longest tail that fits with its float32 head
        # (or all of it widened, without one); the rest needs tasks of its own.
        units = _Units(costs, cuts)
        start = units.tail_start(largest)
        if start < units.U:
            rest = total_w + total_kv - costs.stored_bytes(units.bounds[start])
            bound = max(bound, 1 + math.ceil(max(0, rest) / largest))
    return Partition(
        segments=segments,
        lower_bound=max(1, bound),
        cut_factor=factor if factor is not None else math.inf,
        total_weight_bytes=total_w,
        total_kv_cache_bytes=total_kv,
    )


def _explain_infeasible(costs: _Costs, largest: int, types: list[tuple[int, int | None]]) -> str:
    a = costs.a
    for name in sorted(a.initializers, key=a.nbytes, reverse=True)[:1]:
        if a.nbytes(name) + costs.workspace > largest:
            return (f"weight {name!r} alone needs {a.nbytes(name)} bytes (+{costs.workspace} workspace), "
                    f"more than the largest budget {largest}")
    for i in range(costs.n):
        weights, kv, peak, _ = costs.footprint(i, i + 1)
        need = weights + kv + peak + costs.workspace
        if need > largest:
            return (f"node {a.nodes[i].name!r} ({a.nodes[i].op_type}) alone needs {need} bytes with its weights, "
                    f"activations and workspace, "
                    f"more than the largest budget {largest}")
    if any(c is not None for _, c in types):
        return "the model does not fit on the given nodes even when every node is used; add nodes or memory"
    return "no partition fits the budget"


class _Units:
    """The units between candidate cuts, with what a run of them costs, for the solver.

    A task's VRAM is its weights and KV cache (each tensor once, however many of its units read it)
    plus its peak live bytes plus the workspace. Everything is monotone under inclusion (a run inside
    a run that fits also fits), so for each end the runs that fit start at or after one lowest start,
    found for all ends at once by a two-pointer sweep.
    """

    def __init__(self, costs: _Costs, cuts: list[int]) -> None:
        a = costs.a
        self.costs = costs
        self.bounds = bounds = [0, *cuts, costs.n]
        U = self.U = len(bounds) - 1
        readers: dict[str, list[int]] = {}
        for u in range(U):
            for inputs, _ in a.io[bounds[u] : bounds[u + 1]]:
                for x in inputs:
                    if x in costs.inits or x in costs.state_inputs:
                        r = readers.setdefault(x, [])
                        if not r or r[-1] != u:
                            r.append(u)
        private = [0] * U
        self.shared: list[list[tuple[str, int]]] = [[] for _ in range(U)]
        for name, units in readers.items():
            if len(units) == 1:
                private[units[0]] += a.nbytes(name)
            else:
                for u in units:
                    self.shared[u].append((name, a.nbytes(name)))
        self.private_prefix = list(itertools.accumulate(private, initial=0))
        self.umax = [max(costs.level[bounds[u] : bounds[u + 1]]) for u in range(U)]
        self.retained_at = [costs.retained_prefix[b] for b in bounds[:-1]]
        self.flops_prefix = np.array([costs.flops_prefix[b] for b in bounds], dtype=np.int64)
        self.crossing = [costs.crossing[b] for b in bounds[:-1]] + [0]
        self._lowest: dict[int, np.ndarray] = {}

    def lowest_starts(self, size: int) -> np.ndarray:
        """``lo[j]``: the first unit a task ending before unit ``j`` may start at under ``size``
        (``lo[j] == j``: unit ``j - 1`` alone does not fit)."""
        if size in self._lowest:
            return self._lowest[size]
        U, ws = self.U, self.costs.workspace
        pp, umax, rp, shared = self.private_prefix, self.umax, self.retained_at, self.shared
        lo = np.zeros(U + 1, dtype=np.int64)
        counts: dict[str, int] = {}
        held = 0  # bytes of the shared tensors read inside the window
        window: collections.deque[int] = collections.deque()  # units by falling peak
        i = 0
        for j in range(1, U + 1):
            u = j - 1
            for name, b in shared[u]:
                c = counts.get(name, 0)
                held += b if c == 0 else 0
                counts[name] = c + 1
            while window and umax[window[-1]] <= umax[u]:
                window.pop()
            window.append(u)
            while i < j and pp[j] - pp[i] + held + umax[window[0]] - rp[i] + ws > size:
                for name, b in shared[i]:
                    counts[name] -= 1
                    held -= b if counts[name] == 0 else 0
                if window[0] == i:
                    window.popleft()
                i += 1
            lo[j] = i
        if self.costs.tail_fp32:
            lo[U] = max(int(lo[U]), self.tail_start(size))
        self._lowest[size] = lo
        return lo

    def tail_start(self, size: int) -> int:
        """The first unit the last task may start at when it computes its head in float32
        (``_Costs.tail_fp32``): ``footprint`` of the run up to the end, grown one unit at a time from the
        end; ``U`` if not even the last unit fits."""
        costs, bounds = self.costs, self.bounds
        a, level, rp = costs.a, costs.level, costs.retained_prefix
        seen: set[tuple[str, bool]] = set()
        held, body_peak, first = 0, 0, self.U
        for u in range(self.U - 1, -1, -1):
            for i in range(bounds[u], bounds[u + 1]):
                wide = i >= costs.head
                for x in a.io[i][0]:
                    if (x, wide) not in seen and (x in costs.inits or x in costs.state_inputs):
                        seen.add((x, wide))
                        held += costs.widened(x) if wide else a.nbytes(x)
                if not wide:
                    body_peak = max(body_peak, level[i])
            start = bounds[u]
            peak = max(body_peak - rp[start], costs.head_peak(max(start, costs.head)) - rp[start])
            if held + peak + costs.workspace > size:
                break
            first = u
        return first

    def starts_under(self, size: int, max_flops: int | None) -> np.ndarray:
        lo = self.lowest_starts(size)
        if max_flops is None:
            return lo
        f = self.flops_prefix
        return np.maximum(lo, np.searchsorted(f, f - max_flops, side="left"))


def _fewest(units: _Units, types: list[tuple[int, int | None]], max_flops: int | None) -> list[int] | None:
    """Node types of a plan with the fewest tasks (one per task, in order), or None.

    From any position a task on a given node type goes as far as it can: reaching further never
    hurts, because every run inside a run that fits fits too. With counted node types the states
    are (position, nodes used), pruned to those no other state beats on both.
    """
    U = units.U
    reach = []
    for size, _ in types:
        lo = units.starts_under(size, max_flops)
        if size == types[-1][0] and bool(np.any(lo[1:] >= np.arange(1, U + 1))):
            return None  # some unit fits not even the largest node
        reach.append(np.searchsorted(lo, np.arange(U + 1), side="right") - 1)
    limited = any(c is not None for _, c in types)
    if not limited:
        t = len(types) - 1  # one unlimited type (a uniform budget): jump as far as possible
        order: list[int] = []
        pos = 0
        while pos < U:
            nxt = int(reach[t][pos])
            if nxt <= pos:
                return None
            pos = nxt
            order.append(t)
        return order
    frontier: dict[tuple[int, ...], tuple[int, list[int]]] = {tuple(0 for _ in types): (0, [])}
    while frontier:
        nxt_states: dict[tuple[int, ...], tuple[int, list[int]]] = {}
        for used, (pos, order) in frontier.items():
            for t, (_, count) in enumerate(types):
                if count is not None and used[t] >= count:
                    continue
                j = int(reach[t][pos])
                if j <= pos:
                    continue
                if j >= U:
                    return [*order, t]
                key = used[:t] + (used[t] + 1,) + used[t + 1 :]
                if key not in nxt_states or nxt_states[key][0] < j:
                    nxt_states[key] = (j, [*order, t])
        ranked = sorted(nxt_states.items(), key=lambda kv: -kv[1][0])
        kept: list[tuple[tuple[int, ...], tuple[int, list[int]]]] = []
        for used, state in ranked:
            if not any(all(x <= y for x, y in zip(k_used, used, strict=True)) for k_used, _ in kept):
                kept.append((used, state))
        frontier = dict(kept)
    return None


def _least_crossing(units: _Units, order: list[int], types: list[tuple[int, int | None]],
                    max_flops: int) -> list[int]:
    """Cut points (unit indices) of the plan with tasks on ``order`` under ``max_flops`` whose cuts
    carry the fewest bytes: one sliding-window minimum per task over the feasible starts, only
    between the furthest a greedy fill reaches and the nearest point the remaining tasks can finish from."""
    U, T = units.U, len(order)
    lows = [units.starts_under(types[t][0], max_flops) for t in order]
    furthest = [0] * (T + 1)
    for k, lo in enumerate(lows):
        furthest[k + 1] = min(U, int(np.searchsorted(lo, furthest[k], side="right")) - 1)
    nearest = [U] * (T + 1)
    for k in range(T - 1, -1, -1):
        nearest[k] = int(lows[k][nearest[k + 1]])
    inf = float("inf")
    cost: dict[int, float] = {0: 0}
    parents: list[dict[int, int]] = []
    crossing = units.crossing
    for k, lo in enumerate(lows):
        nxt: dict[int, float] = {}
        parent: dict[int, int] = {}
        window: collections.deque[int] = collections.deque()
        i, i_end = nearest[k], furthest[k]
        for j in range(max(nearest[k + 1], nearest[k] + 1), furthest[k + 1] + 1):
            while i < j and i <= i_end:  # admit starts up to j - 1
                c = cost.get(i, inf)
                if c < inf:
                    while window and cost[window[-1]] >= c:
                        window.pop()
                    window.append(i)
                i += 1
            while window and window[0] < lo[j]:
                window.popleft()
            if window:
                nxt[j] = cost[window[0]] + crossing[j]
                parent[j] = window[0]
        parents.append(parent)
        cost = nxt
    cuts = [U]
    for parent in reversed(parents):
        cuts.append(parent[cuts[-1]])
    return cuts[::-1]


def _solve(costs: _Costs, cuts: list[int], types: list[tuple[int, int | None]]) -> list[Segment] | None:
    units = _Units(costs, cuts)
    order = _fewest(units, types, None)
    if order is None:
        return None
    T = len(order)
    # The smallest bottleneck that still allows T tasks (feasibility only grows with the threshold).
    lo, hi = 0, int(units.flops_prefix[-1])
    while lo < hi:
        mid = (lo + hi) // 2
        found = _fewest(units, types, mid)
        if found is not None and len(found) == T:
            hi = mid
        else:
            lo = mid + 1
    bottleneck = lo
    best = _fewest(units, types, bottleneck) or order
    points = _least_crossing(units, best, types, bottleneck)
    b = units.bounds
    return [_segment(costs, b[points[k]], b[points[k + 1]], types[t][0]) for k, t in enumerate(best)]


def _segment(costs: _Costs, start: int, stop: int, budget: int) -> Segment:
    weights, kv, peak, flops = costs.footprint(start, stop)
    return Segment(
        start=start,
        stop=stop,
        weight_bytes=weights,
        kv_cache_bytes=kv,
        activation_bytes=peak,
        workspace_bytes=costs.workspace,
        flops=flops,
        cut_bytes=costs.crossing[stop] if stop < costs.n else 0,
        budget_bytes=budget,
    )
