"""From a model to a plan: analyse, partition, cut out the tasks, and optionally write the bundles."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from splitup.graph.meta import dtype_of
from splitup.graph.upcast import TOKEN_FP32_FORMS, with_token_fp32_form
from splitup.graph.upgrade import upgrade_opset
from splitup.partition.cost import GraphAnalysis, analyze
from splitup.partition.partitioner import (
    DEFAULT_WORKSPACE,
    Partition,
    PartitionError,
    float32_tail,
    partition,
)
from splitup.partition.refine import plan_partition
from splitup.partition.task import Plan, TensorSpec, build_tasks, task_dir, write_task
from splitup.units import format_bytes


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    analysis: GraphAnalysis
    partition: Partition
    written: Path | None
    # The partitioner's own time (finding split sites, rewriting, solving), wall and CPU seconds; the
    # rest of planning is sizing the graph and validating every task cut from it.
    partition_seconds: float = 0.0
    partition_cpu_seconds: float = 0.0


def _graph_specs(a: GraphAnalysis, model: onnx.ModelProto, names: list[str]) -> list[TensorSpec]:
    infos = {vi.name: vi for vi in (*model.graph.input, *model.graph.output)}
    specs = []
    for name in names:
        dims = list(infos[name].type.tensor_type.shape.dim)
        bound = a.types[name].shape
        if len(dims) != len(bound):  # an output declared without a shape (or a wrong one): its bound's rank
            dims = [None] * len(bound)
        # A dim the model leaves unnamed (a length data chooses) is named after the tensor, like a cut's.
        shape: list[int | str] = [d.dim_value if d is not None and d.HasField("dim_value")
                                  else (d.dim_param if d is not None and d.dim_param else f"{name}.dim{axis}")
                                  for axis, d in enumerate(dims)]
        specs.append(TensorSpec(name, dtype_of(a.types[name].elem_type, where=f"tensor {name}"), shape, list(a.types[name].shape)))
    return specs


def _what_fits(a: GraphAnalysis, budgets: int | Sequence[int], workspace: int, cut_factor: float) -> str:
    """The remedy for an infeasible plan: the smallest uniform node size that fits (to 1 MiB)."""
    if not isinstance(budgets, int):
        return "add nodes or give them more memory (--nodes)"
    lo = budgets
    hi = partition(a, 2**62, workspace_bytes=workspace, cut_factor=cut_factor).segments[0].vram_bytes
    while hi - lo > 2**20:
        mid = (lo + hi) // 2
        try:
            partition(a, mid, workspace_bytes=workspace, cut_factor=cut_factor)
            hi = mid
        except PartitionError:
            lo = mid
    size = f"{math.ceil(hi * 10 / 2**30) / 10:g}GiB" if hi >= 2**30 else f"{math.ceil(hi / 2**20)}MiB"
    spare = f" with the {format_bytes(workspace)} workspace each task keeps (--workspace)" if workspace else ""
    return f"nodes of {size} would fit it{spare} (--vram {size}; {format_bytes(budgets)} is too small)"


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [b for a in node.attribute
            for b in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def _rename_reads(graph: onnx.GraphProto, mapping: dict[str, str]) -> set[str]:
    """Rename reads of outer names in ``graph`` and its bodies; returns the outer names that were read."""
    local = {o for n in graph.node for o in n.output} | {vi.name for vi in graph.input}
    visible = {k: v for k, v in mapping.items() if k not in local}
    read: set[str] = set()
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x in visible:
                node.input[i] = visible[x]
                read.add(x)
        for body in _bodies(node):
            read |= _rename_reads(body, visible)
    return read


def _localise_body_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which each control-flow node's bodies hold their own copies of the main graph's
    ``Constant`` nodes they read (renamed), so a task cut around an If/Loop/Scan carries every constant
    its bodies need; ``model`` itself when no body reads one."""
    outer = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
    if not outer or not any(_bodies(n) for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    mapping = {name: f"{name}#local" for name in outer}
    for node in copy.graph.node:
        for body in _bodies(node):
            for name in sorted(_rename_reads(body, mapping), reverse=True):
                c = body.node.add()
                c.CopyFrom(outer[name])
                c.output[0], c.name = mapping[name], f"{outer[name].name or name}#local"
                body.node.insert(0, body.node.pop())
    return copy


def make_plan(
    model: onnx.ModelProto,
    name: str,
    budgets: int | Sequence[int],
    *,
    workspace_bytes: int = DEFAULT_WORKSPACE,
    cut_factor: float = 2.0,
    out_dir: Path | None = None,
    trusted: bool = False,
    weights_dir: Path | None = None,
    token_fp32: str = "auto",
) -> PlanResult:
    """Split ``model`` under ``budgets``; with ``out_dir`` write plan.json and one bundle per task.

    Shape-only models (no weight data) can be planned and their graphs written, but have no shards.
    A model from an old exporter (opset below 13) is upgraded first; its tasks are written upgraded.
    ``weights_dir`` holds the external-data files of a model saved with them (over 2 GiB): the shards are
    read from there. ``token_fp32``: in a half-precision plan, how much of the task that chooses tokens
    computes in float32 (docs/posp.md, "Precision of the token-choosing task"): ``task`` (all of it, judged
    from the previous task's committed hidden state), ``head`` (its head only, from the hidden state it
    commits itself: smaller, but its executor may steer that state within the fp16 rule) or ``auto``
    (``task`` unless that takes more tasks than ``head``).
    """
    if token_fp32 not in ("auto", *TOKEN_FP32_FORMS):
        raise ValueError(f"token_fp32 must be auto, {' or '.join(TOKEN_FP32_FORMS)}; got {token_fp32!r}")
    if not trusted:
        model = _localise_body_constants(upgrade_opset(model))
    analysis = analyze(model, trusted=trusted, weights_dir=weights_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    # the form travels in the graph's metadata, which the partitioner, its rewrites and the task writer read;
    # the caller's model may be the analysed one itself, so its metadata is put back afterwards
    original = list(analysis.model.metadata_props)
    try:
        forms = [token_fp32] if token_fp32 != "auto" else list(TOKEN_FP32_FORMS) if float32_tail(analysis) else ["task"]
        tried: list[tuple[str, GraphAnalysis, Partition]] = []
        for form in forms:
            with_token_fp32_form(analysis.model, form)
            try:
                # The analysis comes back rewritten where the planner split operators; tasks are cut from it.
                tried.append((form, *plan_partition(analysis, budgets, workspace_bytes=workspace_bytes,
                                                    cut_factor=cut_factor)))
            except PartitionError as exc:
                if form == forms[-1] and not tried:
                    raise PartitionError(f"{exc}; {_what_fits(analysis, budgets, workspace_bytes, cut_factor)}") from None
        # the whole token task in float32 unless that costs a task (a ``head`` plan's bound holds for both forms)
        form, a, part = min(tried, key=lambda t: len(t[2].segments))
        with_token_fp32_form(a.model, form)  # the analysis may be shared between the tries
        part = replace(part, lower_bound=min(p.lower_bound for _, _, p in tried))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        # Every task is validated whether or not it is written: a plan that prints fine must also write.
        built = build_tasks(a, part, name, validate=True)
    finally:
        del analysis.model.metadata_props[:]
        analysis.model.metadata_props.extend(original)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if (out_dir / "tasks").exists():
            shutil.rmtree(out_dir / "tasks")
        out_dir.mkdir(parents=True, exist_ok=True)
        definitions = []
        for task in built:
            staging = out_dir / "tasks" / f".staging-{task.definition.index}"
            d = write_task(task, staging)
            staging.rename(task_dir(out_dir, d))
            definitions.append(d)
    else:
        definitions = [t.definition.with_id() for t in built]
    plan = Plan(
        model=name,
        budget_bytes=budgets if isinstance(budgets, int) else max(budgets),
        budgets=[budgets] if isinstance(budgets, int) else sorted(budgets),
        lower_bound=part.lower_bound,
        cut_factor=part.cut_factor,
        inputs=_graph_specs(a, a.model, a.graph_inputs),
        outputs=_graph_specs(a, a.model, a.graph_outputs),
        state=a.state,
        tasks=definitions,
        total_weight_bytes=part.total_weight_bytes,
        total_kv_cache_bytes=part.total_kv_cache_bytes,
    )
    if out_dir is not None:
        plan.save(out_dir / "plan.json")
    return PlanResult(plan, a, part, out_dir, wall, cpu)
