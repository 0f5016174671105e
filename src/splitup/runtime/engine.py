"""The engine interface: load a verified task bundle, run it; stateful steps on top of any engine."""

from __future__ import annotations

import os
import tempfile
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitup.errors import SplitUpError
from splitup.graph.limits import Limits
from splitup.graph.meta import ONNX_DTYPE_NAMES
from splitup.graph.precision import TOKEN_OUTPUT
from splitup.graph.upcast import head_graph, split_head
from splitup.graph.validate import validate_file
from splitup.partition.task import GRAPH_FILE, WEIGHTS_FILE, PlanError, TaskDefinition, TensorSpec, load_task
from splitup.runtime.interface import check_feeds, check_values
from splitup.runtime.kv import KvLayout


class EngineError(SplitUpError):
    """A task could not be loaded or run by an engine."""


class EngineUnavailable(EngineError):
    """The engine's library (or the compiler it needs) is not installed on this machine."""


class Runner(ABC):
    """One loaded task. ``run`` is stateless: callers supply every input, KV caches included.

    ``kv_form`` is how this runner holds a task's KV cache between calls (``splitup.runtime.kv``):
    ``growing`` (exactly the tokens there are) or ``fixed`` (the task's maximum context, allocated once).
    """

    kv_form = "growing"
    # What this runner computes in: "fp32", or "fp16" where the task allows half precision and the engine's
    # device has the kernels (``splitup.runtime.arithmetic``). The transcript declares it to validators.
    arithmetic = "fp32"

    def __init__(self, task: TaskDefinition, engine: str, device: str) -> None:
        self.task = task
        self.engine = engine
        self.device = device
        self.kv = KvLayout.of(task.inputs, task.state)
        self._head: Runner | None = None

    def head(self) -> Runner:
        """A runner of this task's float32 head alone (``task.head`` in, the logits out): what a validator
        runs on an executor's committed hidden state (``splitup.verify.replay``)."""
        if self._head is None:
            raise EngineError(f"task {self.task.task_id[:12]} has no float32 head on this {self.engine} runner")
        return self._head

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs in the order of ``task.outputs``, as numpy arrays."""

    def step(self, feeds: Mapping[str, np.ndarray], state: Mapping[str, Any] | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One call with held state: (outputs, next state). State values are whatever this runner keeps
        between calls (numpy arrays here; device buffers for engines that keep caches on the device)."""
        full = fill_state(self.task, feeds, state, self.kv_form)
        if self.kv is None and self.task.state:
            check_feeds(self.task, full)  # a concatenating cache must still fit its declared maximum
        for name, declared in self.task.value_max.items():  # whoever calls, no engine sees an unsized feed
            if name in full:
                check_values(name, np.asarray(full[name]), declared)
        outs = self.run(full)
        return outs, {past: outs[present] for past, present in self.task.state.items()}


class Engine(ABC):
    name: str = ""

    @abstractmethod
    def devices(self) -> list[str]:
        """Human-readable names of what this engine will run on, best first."""

    @abstractmethod
    def _open(self, graph: Path, task: TaskDefinition) -> Runner:
        """Build a runner for an already verified bundle."""

    def load(self, directory: Path, *, task_id: str | None = None, limits: Limits | None = None) -> Runner:
        """Verify, then load, the bundle in ``directory``.

        Checks, before the engine sees a byte: both file hashes against ``task.json``, the expected task id,
        the memory-safety validation of the graph (a bundle may come from a stranger), and that the graph's
        interface is the one the definition declares (the node checks requests against the definition).
        """
        directory = Path(directory)
        task = load_task(directory, verify=True)
        if task_id is not None and task.task_id != task_id:
            raise PlanError(f"bundle {directory} holds task {task.task_id[:12]}, expected {task_id[:12]}")
        model, report = validate_file(directory / GRAPH_FILE, limits=limits or Limits(max_total_bytes=None))
        _check_interface(model, task)
        # Feeds are checked against task.json's ranges, the graph was sized at its own: they must agree.
        if {k: [list(p) for p in v] for k, v in report.value_max.items()} != task.value_max:
            raise PlanError(f"task {task.task_id[:12]}: value ranges differ between the graph ({report.value_max}) "
                            f"and task.json ({task.value_max})")
        if task.head is None:
            return self._open(directory / GRAPH_FILE, task)
        try:
            body, head = split_task(onnx.load(str(directory / GRAPH_FILE), load_external_data=False), task)
        except ValueError as exc:
            raise PlanError(f"task {task.task_id[:12]}: its head {task.head!r} does not split the graph: {exc}") from None
        return HeadedRunner(task, self._open_part(directory, *body), self._open_part(directory, *head))

    def _open_part(self, directory: Path, model: onnx.ModelProto, task: TaskDefinition) -> Runner:
        """A part of a verified bundle's graph, written beside a link to the bundle's shard."""
        tmp = tempfile.TemporaryDirectory(prefix="splitup-part-")
        try:
            onnx.save(model, str(Path(tmp.name) / GRAPH_FILE))
            if (directory / WEIGHTS_FILE).exists():
                os.symlink((directory / WEIGHTS_FILE).resolve(), Path(tmp.name) / WEIGHTS_FILE)
            runner = self._open(Path(tmp.name) / GRAPH_FILE, task)
        except BaseException:
            tmp.cleanup()
            raise
        weakref.finalize(runner, tmp.cleanup)  # engines may read the shard lazily: it lives with the runner
        return runner


def split_task(model: onnx.ModelProto, task: TaskDefinition,
               ) -> tuple[tuple[onnx.ModelProto, TaskDefinition], tuple[onnx.ModelProto, TaskDefinition]]:
    """A task with a float32 head as its body and its head (``graph.upcast.split_head``), each with the
    definition of its interface."""
    assert task.head is not None
    body, head = split_head(model, task.head, [TOKEN_OUTPUT])
    body_task = replace(task, outputs=[s for s in task.outputs if s.name != TOKEN_OUTPUT], head=None)
    return (body, body_task), (head, _head_task(task))


def head_of(model: onnx.ModelProto, task: TaskDefinition) -> tuple[onnx.ModelProto, TaskDefinition]:
    """A task's float32 head alone (``graph.upcast.head_graph``; the body is not built) and its definition."""
    assert task.head is not None
    return head_graph(model, task.head, [TOKEN_OUTPUT]), _head_task(task)


def _head_task(task: TaskDefinition) -> TaskDefinition:
    specs = {s.name: s for s in task.outputs}
    assert task.head is not None
    return replace(task, inputs=[specs[task.head]], outputs=[specs[TOKEN_OUTPUT]], state={}, head=None, value_max={})


class HeadedRunner(Runner):
    """A task with a float32 head run as two engine calls, the body then the head on the hidden state the
    body hands out: the logits are the head of exactly the bits the node commits (an engine running the
    whole graph may fuse away the rounding between them), as a validator computes them."""

    def __init__(self, task: TaskDefinition, body: Runner, head: Runner) -> None:
        super().__init__(task, body.engine, body.device)
        self.body, self._head = body, head
        self.kv_form, self.arithmetic = body.kv_form, body.arithmetic

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.body.run(feeds)
        return outs | self._head.run({self.task.head: outs[self.task.head]})

    def step(self, feeds: Mapping[str, np.ndarray], state: Mapping[str, Any] | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        outs, state = self.body.step(feeds, state)
        return outs | self._head.run({self.task.head: np.asarray(outs[self.task.head])}), state


def _check_interface(model, task: TaskDefinition) -> None:  # noqa: ANN001 - onnx.ModelProto
    inits = {t.name for t in model.graph.initializer}
    graph_in = {i.name: ONNX_DTYPE_NAMES.get(i.type.tensor_type.elem_type) for i in model.graph.input if i.name not in inits}
    graph_out = {o.name: ONNX_DTYPE_NAMES.get(o.type.tensor_type.elem_type) for o in model.graph.output}
    want_in = {s.name: s.dtype for s in task.inputs}
    want_out = {s.name: s.dtype for s in task.outputs}
    if graph_in != want_in or graph_out != want_out:
        raise PlanError(f"task {task.task_id[:12]}: graph interface differs from task.json "
                        f"(graph inputs {sorted(graph_in)}, declared {sorted(want_in)})")


def empty_state(spec: TensorSpec, known: Mapping[str, int] | None = None) -> np.ndarray:
    """An empty KV cache: symbolic axes the other inputs fix (a batch axis) take their size, the rest (the
    cache length) are 0, static ones as declared."""
    known = known or {}
    return np.zeros([d if isinstance(d, int) else known.get(d, 0) for d in spec.shape], dtype=spec.dtype)


def fill_state(task: TaskDefinition, feeds: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray] | None,
               form: str = "growing") -> dict[str, np.ndarray]:
    """The task's full feed: given inputs, then held state, then empty caches for state never produced;
    fixed-capacity caches grown to fit the call in the KV-cache ``form`` (``splitup.runtime.kv``)."""
    known: dict[str, int] = {}
    for spec in task.inputs:
        if spec.name in feeds and spec.name not in task.state:
            for d, got in zip(spec.shape, feeds[spec.name].shape, strict=False):
                if isinstance(d, str):
                    known.setdefault(d, int(got))
    full: dict[str, np.ndarray] = {}
    for spec in task.inputs:
        if spec.name in feeds:
            full[spec.name] = feeds[spec.name]
        elif spec.name in task.state:
            held = state.get(spec.name) if state is not None else None
            full[spec.name] = held if held is not None else empty_state(spec, known)
        else:
            raise EngineError(f"task {task.index} needs input {spec.name!r}, which nothing provides")
    layout = KvLayout.of(task.inputs, task.state)
    return layout.ensure_capacity(full, form) if layout is not None else full


def run_stateful(runner: Runner, feeds: Mapping[str, np.ndarray],
                 state: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one step: returns (outputs, next state), where state outputs replace the inputs they feed."""
    return runner.step(feeds, state)
