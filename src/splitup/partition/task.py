"""Task definitions and plans: what a node receives, and the document that wires tasks together.

A task bundle is a directory holding

- ``task.onnx``: the validated sub-graph; its initializers are external data that point straight into
  the shard (ONNX ``location``/``offset``/``length`` into the safetensors file's data section), so the
  engine memory-maps the weights without a copy and without any pickle;
- ``weights.safetensors``: the task's weight shard, addressed by its sha256;
- ``task.json``: the :class:`TaskDefinition` (interfaces, VRAM, FLOPs, hashes).

The task id is the sha256 of the definition's canonical JSON (which includes both file hashes), so a
changed byte anywhere changes the id. ``plan.json`` lists the tasks in pipeline order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from splitup import jsonparse
from splitup.errors import SplitUpError
from splitup.graph.errors import GraphRejected
from splitup.graph.limits import Limits
from splitup.graph.meta import DIM_MAX_KEY, DTYPE_ONNX, STATE_KEY, VALUE_MAX_KEY, dtype_of
from splitup.graph.precision import DEFAULT_PRECISION, TOKEN_OUTPUT, precision_of, split_precision
from splitup.graph.quant import raw_bytes
from splitup.graph.sizes import tensor_bytes
from splitup.graph.upcast import float32_arithmetic, float32_head, token_fp32_form, token_head
from splitup.graph.validate import validate_model
from splitup.graph.values import ranges_json, read_value_max
from splitup.partition.cost import INLINE_ELEMENTS, GraphAnalysis
from splitup.partition.partitioner import Partition, Segment
from splitup.partition.shapeflow import Probes, rematerialise, shape_values

PLAN_FORMAT = "splitup.plan"
PLAN_VERSION = 1
GRAPH_FILE = "task.onnx"
WEIGHTS_FILE = "weights.safetensors"
TASK_FILE = "task.json"



class PlanError(SplitUpError):
    """A plan or task bundle is malformed, of an unknown version, or fails its hash check."""


class PlannerFault(PlanError):
    """A task the planner cut from a valid model fails validation: a SplitUp bug, never the user's model."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# The builder's name for a decoder's sequence axis (``splitup.graph.zoo``); the KV-cache axis is the other
# symbol of a state input, and its maximum is the model's context.
SEQ_DIM = "seq"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a task's interface. ``shape`` may hold symbolic names; ``max_shape`` bounds them."""

    name: str
    dtype: str
    shape: list[int | str]
    max_shape: list[int]

    @property
    def max_bytes(self) -> int:
        return tensor_bytes(DTYPE_ONNX[self.dtype], self.max_shape, where=f"tensor {self.name}")

    @staticmethod
    def from_json(d: dict[str, Any]) -> TensorSpec:
        if d["dtype"] not in DTYPE_ONNX:
            raise ValueError(f"tensor {d['name']!r} has unknown dtype {d['dtype']!r}")
        return TensorSpec(str(d["name"]), str(d["dtype"]), list(d["shape"]), [int(x) for x in d["max_shape"]])


@dataclass(frozen=True)
class TaskDefinition:
    model: str
    index: int
    graph_sha256: str
    weights_sha256: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: dict[str, str]
    dim_max: dict[str, int]
    vram_bytes: int
    weight_bytes: int
    activation_bytes: int
    kv_cache_bytes: int
    workspace_bytes: int
    flops: int
    cut_bytes: int
    budget_bytes: int
    layers: list[str]
    node_count: int
    # "<weights>/<activations>" (splitup.graph.precision): the PoSP tolerance is chosen by it.
    precision: str = DEFAULT_PRECISION
    # [[lo, hi]] (shared by every element) or one [lo, hi] per element, of the inputs whose values size outputs
    # (``splitup.value_max`` in the graph); the node refuses a feed outside (``splitup.runtime.interface``).
    value_max: dict[str, list[list[float]]] = field(default_factory=dict)
    # The output a token task's float32 head reads (graph.upcast.token_head): its logits are judged from
    # the executor's committed value of it (splitup.verify.replay). None: no separate head.
    head: str | None = None
    task_id: str = field(default="")

    def canonical(self) -> bytes:
        body = asdict(self)
        body.pop("task_id")
        if body["precision"] == DEFAULT_PRECISION:
            body.pop("precision")  # fp32 tasks keep the ids they had before precision was recorded
        if not body["value_max"]:
            body.pop("value_max")  # so do tasks without value-sized inputs
        if body["head"] is None:
            body.pop("head")  # and tasks without a float32 head
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def with_id(self) -> TaskDefinition:
        tid = hashlib.sha256(self.canonical()).hexdigest()
        return TaskDefinition(**{**asdict(self), "inputs": self.inputs, "outputs": self.outputs, "task_id": tid})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> TaskDefinition:
        try:
            body = dict(d)
            body["inputs"] = [TensorSpec.from_json(x) for x in d["inputs"]]
            body["outputs"] = [TensorSpec.from_json(x) for x in d["outputs"]]
            task = TaskDefinition(**body)
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed task definition: {exc}") from None
        try:
            split_precision(task.precision)
        except ValueError as exc:
            raise PlanError(f"task {task.index}: {exc}") from None
        names = {o.name for o in task.outputs}
        if task.head is not None and (task.head not in names or TOKEN_OUTPUT not in names or task.head == TOKEN_OUTPUT):
            raise PlanError(f"task {task.index}: its head input {task.head!r} must be an output of a task that "
                            f"outputs {TOKEN_OUTPUT!r}, and not that output")
        if task.task_id != task.with_id().task_id:
            raise PlanError(f"task {task.index}: task_id does not match its definition")
        return task


@dataclass(frozen=True)
class Plan:
    model: str
    budget_bytes: int
    budgets: list[int]
    lower_bound: int
    cut_factor: float
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: dict[str, str]
    tasks: list[TaskDefinition]
    total_weight_bytes: int
    total_kv_cache_bytes: int

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["tasks"] = [t.to_json() for t in self.tasks]
        body["cut_factor"] = None if self.cut_factor == float("inf") else self.cut_factor
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **body}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Plan:
        if d.get("format") != PLAN_FORMAT:
            raise PlanError("not a SplitUp plan (format field missing or wrong)")
        if d.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {d.get('version')!r} is not supported (this build reads {PLAN_VERSION})")
        try:
            return Plan(
                model=str(d["model"]), budget_bytes=int(d["budget_bytes"]), budgets=[int(b) for b in d["budgets"]],
                lower_bound=int(d["lower_bound"]),
                cut_factor=float("inf") if d["cut_factor"] is None else float(d["cut_factor"]),
                inputs=[TensorSpec.from_json(x) for x in d["inputs"]],
                outputs=[TensorSpec.from_json(x) for x in d["outputs"]], state=dict(d["state"]),
                tasks=[TaskDefinition.from_json(t) for t in d["tasks"]],
                total_weight_bytes=int(d["total_weight_bytes"]), total_kv_cache_bytes=int(d["total_kv_cache_bytes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @staticmethod
    def load(path: Path) -> Plan:
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        try:
            return Plan.from_json(jsonparse.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read plan {path}: {exc}") from None


@dataclass
class BuiltTask:
    """A task ready to be written: definition, graph and (for bound models) its weight arrays."""

    definition: TaskDefinition
    graph: onnx.ModelProto
    weights: dict[str, np.ndarray] | None


def _interface(a: GraphAnalysis, sym: dict[str, onnx.ValueInfoProto], name: str, fresh: dict[str, int]) -> TensorSpec:
    t = a.types[name]
    vi = sym.get(name)
    dims = list(vi.type.tensor_type.shape.dim) if vi is not None and vi.type.tensor_type.HasField("shape") else []
    shape: list[int | str] = []
    for axis, mx in enumerate(t.shape):
        d = dims[axis] if axis < len(dims) else None
        if d is not None and d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d is not None and d.dim_param in a.dim_max:
            shape.append(d.dim_param)
        elif d is None and mx == 0:
            shape.append(0)
        else:
            sym_name = f"{name}.dim{axis}"
            fresh[sym_name] = max(int(mx), 1)
            shape.append(sym_name)
    return TensorSpec(name, dtype_of(t.elem_type, where=f"tensor {name}"), shape, [int(x) for x in t.shape])


def _symbolic_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Shapes with the symbolic input dims kept, so task interfaces stay symbolic (seq, past, ...)."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    stripped.graph.ClearField("initializer")
    for t in model.graph.initializer:  # dims and types only: never touch weight data here
        stub = stripped.graph.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = TensorProto.EXTERNAL
        e = stub.external_data.add()
        e.key, e.value = "location", "unused"
    inferred = onnx.shape_inference.infer_shapes(stripped, data_prop=True)
    return {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}


def _layers(nodes: list[onnx.NodeProto], initializers: set[str]) -> list[str]:
    """Readable names of what a task holds: builder scopes (``layers.3``, ``embeddings``) and, for
    unscoped nodes, the weights they read (``embed``, ``lm_head``)."""
    seen: list[str] = []
    for n in nodes:
        parts = n.name.split(".")
        if len(parts) > 2 and parts[1].isdigit():
            labels = [".".join(parts[:2])]
        elif len(parts) > 1:
            labels = [parts[0]]
        else:
            labels = [x.rsplit(".", 1)[0] for x in n.input if x in initializers]
        for label in labels:
            if label not in seen:
                seen.append(label)
    return seen


def build_tasks(a: GraphAnalysis, part: Partition, model_name: str, *, validate: bool = True) -> list[BuiltTask]:
    """Cut each segment out as a task graph, each recomputing the shape values it reads (they never cross a
    cut). ``validate=False`` is for plans that are only printed."""
    sym = _symbolic_types(a.model)
    values, probes = shape_values(a), Probes(a)
    bodies = [rematerialise(a, probes, values, a.nodes[seg.start : seg.stop]) for seg in part.segments]
    reads = [_reads(a, nodes) for nodes in bodies]
    graph_outputs = set(a.graph_outputs)
    tasks = []
    for index, (seg, nodes) in enumerate(zip(part.segments, bodies, strict=True)):
        later = {x for r in reads[index + 1:] for x in r}
        # A recomputed shape value is never handed on: a later task recomputes it too, or reads it from the
        # task that made it originally.
        outputs = [o for n in a.nodes[seg.start : seg.stop] for o in n.output
                   if o and (o in graph_outputs or o in later)]
        tasks.append(_build_task(a, sym, seg, nodes, reads[index], outputs, index, model_name, validate))
    return tasks


def _made(nodes: list[onnx.NodeProto]) -> set[str]:
    return {o for n in nodes for o in n.output if o}


def _reads(a: GraphAnalysis, nodes: list[onnx.NodeProto]) -> list[str]:
    """The data a task receives: what its nodes read that they do not make, minus constants and weights."""
    made = _made(nodes)
    return list(dict.fromkeys(x for n in nodes for x in n.input
                              if x and x not in made and x not in a.constants and x not in a.initializers))


def _build_task(a: GraphAnalysis, sym: dict[str, onnx.ValueInfoProto], seg: Segment, nodes: list[onnx.NodeProto],
                inputs: list[str], outputs: list[str], index: int, model_name: str, validate: bool) -> BuiltTask:
    reads = [x for n in nodes for x in n.input if x]
    consts = list(dict.fromkeys(x for x in reads if x in a.constants))
    inits = list(dict.fromkeys(x for x in reads if x in a.initializers))
    fresh: dict[str, int] = {}
    in_specs = [_interface(a, sym, x, fresh) for x in inputs]
    out_specs = [_interface(a, sym, x, {}) for x in outputs]
    used_dims = {d for s in in_specs for d in s.shape if isinstance(d, str)}
    dim_max = {k: v for k, v in a.dim_max.items() if k in used_dims} | fresh
    state = {k: v for k, v in a.state.items() if k in inputs and v in outputs}
    bound = all(a.has_data(a.initializers[n]) for n in inits)
    # Small initializers (axes, shape constants, scalars) stay inside the graph: shape inference reads
    # their values, which it cannot do through external data.
    inline = [n for n in inits if a.initializers[n].data_location != TensorProto.EXTERNAL
              and math.prod(a.initializers[n].dims) <= INLINE_ELEMENTS]
    shard = [n for n in inits if n not in inline]
    weights = {n: _shard_array(a, a.initializers[n]) for n in shard} if bound else None

    def vi(spec: TensorSpec) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(spec.name, a.types[spec.name].elem_type, spec.shape)

    initializers = [a.initializers[n] for n in inline] + [_external_stub(a.initializers[n]) for n in shard]
    graph = helper.make_graph(
        [a.constants[c] for c in consts] + nodes, f"{model_name}.task{index}",
        [vi(s) for s in in_specs], [vi(s) for s in out_specs], initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=list(a.model.opset_import), producer_name="splitup")
    model.ir_version = a.model.ir_version
    props = {DIM_MAX_KEY: json.dumps(dim_max, sort_keys=True)}
    declared = {k: v for k, v in read_value_max(a.model, Limits()).items() if k in inputs}
    value_max = {k: [list(p) for p in v] for k, v in declared.items()}
    if declared:
        props[VALUE_MAX_KEY] = json.dumps({k: ranges_json(v) for k, v in declared.items()}, sort_keys=True)
    if state:
        props[STATE_KEY] = json.dumps(state, sort_keys=True)
    helper.set_model_props(model, props)
    head = None
    if TOKEN_OUTPUT in outputs and split_precision(precision_of(model))[1] == "fp16":
        # The task choosing tokens computes its head in float32, from a hidden state it also outputs (and so
        # commits), or all of it where there is no such point (docs/posp.md, "Precision of the
        # token-choosing task"); the partitioner costed it so (partitioner._Costs.tail_fp32).
        # the same head the partitioner costed (its weights by the same rule)
        found = token_head([(n.input, n.output) for n in nodes], a.matrices(), set(inits) | set(consts),
                           set(inputs)) if token_fp32_form(a.model) == "head" else None
        if found is None:
            model, weights = float32_arithmetic(model, weights, state=state)
            in_specs = [_as_float32(s) if s.name in state else s for s in in_specs]
            out_specs = [_as_float32(s) for s in out_specs]
        else:
            start, head = found
            spec = _interface(a, sym, head, {})
            model.graph.output.append(vi(spec))
            model, weights = float32_head(model, weights, len(consts) + start, head)
            made = {o for n in nodes[start:] for o in n.output}
            out_specs = [_as_float32(s) if s.name in made else s for s in out_specs] + [spec]
    if validate:
        try:
            validate_model(model)
        except GraphRejected as exc:
            raise PlannerFault(
                f"task {index} of the plan ({', '.join(_layers(nodes, set(a.initializers))[:4]) or 'no layers'}), "
                f"cut by the planner from a model that validated, fails validation: {exc}. This is a SplitUp "
                f"fault, not a problem with your model; please report it with the model") from exc
    definition = TaskDefinition(
        model=model_name, index=index, graph_sha256="", weights_sha256=None, inputs=in_specs, outputs=out_specs,
        state=state, dim_max=dim_max, vram_bytes=seg.vram_bytes, weight_bytes=seg.weight_bytes,
        activation_bytes=seg.activation_bytes, kv_cache_bytes=seg.kv_cache_bytes,
        workspace_bytes=seg.workspace_bytes, flops=seg.flops, cut_bytes=seg.cut_bytes,
        budget_bytes=seg.budget_bytes, layers=_layers(nodes, set(a.initializers)), node_count=len(nodes),
        precision=precision_of(model), value_max=value_max, head=head,
    )
    return BuiltTask(definition, model, weights)


def _as_float32(spec: TensorSpec) -> TensorSpec:
    return replace(spec, dtype="float32") if spec.dtype in ("float16", "bfloat16") else spec


def _shard_array(a: GraphAnalysis, t: TensorProto) -> np.ndarray:
    """What the shard stores for one initializer: its values, or for 4-bit types (which safetensors cannot
    name) its packed bytes as uint8; the graph keeps the real type and reads exactly those bytes."""
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return raw_bytes(t)
    return a.array(t)


def _external_stub(t: TensorProto) -> TensorProto:
    stub = TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))
    stub.data_location = TensorProto.EXTERNAL
    e = stub.external_data.add()
    e.key, e.value = "location", WEIGHTS_FILE
    return stub


def write_task(task: BuiltTask, directory: Path) -> TaskDefinition:
    """Write one bundle; returns the definition with its file hashes and task id filled in."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    graph = onnx.ModelProto()
    graph.CopyFrom(task.graph)
    weights_sha = None
    if task.weights is not None:
        shard = directory / WEIGHTS_FILE
        save_file({k: np.ascontiguousarray(v) for k, v in task.weights.items()}, str(shard))
        offsets = _safetensors_offsets(shard)
        for init in graph.graph.initializer:
            if init.name not in offsets:
                continue  # inline
            begin, end = offsets[init.name]
            del init.external_data[:]
            for key, value in (("location", WEIGHTS_FILE), ("offset", str(begin)), ("length", str(end - begin))):
                e = init.external_data.add()
                e.key, e.value = key, value
        weights_sha = sha256_file(shard)
    graph_bytes = graph.SerializeToString(deterministic=True)
    tmp = directory / (GRAPH_FILE + ".tmp")
    tmp.write_bytes(graph_bytes)
    os.replace(tmp, directory / GRAPH_FILE)
    d = task.definition
    definition = TaskDefinition(**{**asdict(d), "inputs": d.inputs, "outputs": d.outputs,
                                   "graph_sha256": hashlib.sha256(graph_bytes).hexdigest(),
                                   "weights_sha256": weights_sha}).with_id()
    (directory / TASK_FILE).write_text(json.dumps(definition.to_json(), indent=1))
    return definition


def _safetensors_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges of each tensor in a safetensors file (header: u64 length + JSON)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = jsonparse.loads(f.read(n))
    base = 8 + n
    return {k: (base + v["data_offsets"][0], base + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def task_dir(root: Path, task: TaskDefinition) -> Path:
    return Path(root) / "tasks" / f"{task.index:03d}-{task.task_id[:16]}"


def load_task(directory: Path, *, verify: bool = True) -> TaskDefinition:
    """Read a bundle's definition and check both file hashes against it."""
    directory = Path(directory)
    try:
        task = TaskDefinition.from_json(jsonparse.loads((directory / TASK_FILE).read_text()))
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read task bundle {directory}: {exc}") from None
    if verify:
        if sha256_file(directory / GRAPH_FILE) != task.graph_sha256:
            raise PlanError(f"task {task.task_id[:12]}: {GRAPH_FILE} does not match its sha256")
        if task.weights_sha256 is not None and sha256_file(directory / WEIGHTS_FILE) != task.weights_sha256:
            raise PlanError(f"task {task.task_id[:12]}: {WEIGHTS_FILE} does not match its sha256")
    return task
