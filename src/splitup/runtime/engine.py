"""The engine interface: load a verified task bundle, run it; stateful steps on top of any engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from splitup.errors import SplitUpError
from splitup.graph.limits import Limits
from splitup.graph.meta import ONNX_DTYPE_NAMES
from splitup.graph.validate import validate_file
from splitup.partition.task import GRAPH_FILE, PlanError, TaskDefinition, TensorSpec, load_task


class EngineError(SplitUpError):
    """A task could not be loaded or run by an engine."""


class EngineUnavailable(EngineError):
    """The engine's library (or the compiler it needs) is not installed on this machine."""


class Runner(ABC):
    """One loaded task. ``run`` is stateless: callers supply every input, KV caches included."""

    def __init__(self, task: TaskDefinition, engine: str, device: str) -> None:
        self.task = task
        self.engine = engine
        self.device = device

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs in the order of ``task.outputs``, as numpy arrays."""


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
        model, _ = validate_file(directory / GRAPH_FILE, limits=limits or Limits(max_total_bytes=None))
        _check_interface(model, task)
        return self._open(directory / GRAPH_FILE, task)


def _check_interface(model, task: TaskDefinition) -> None:  # noqa: ANN001 - onnx.ModelProto
    inits = {t.name for t in model.graph.initializer}
    graph_in = {i.name: ONNX_DTYPE_NAMES.get(i.type.tensor_type.elem_type) for i in model.graph.input if i.name not in inits}
    graph_out = {o.name: ONNX_DTYPE_NAMES.get(o.type.tensor_type.elem_type) for o in model.graph.output}
    want_in = {s.name: s.dtype for s in task.inputs}
    want_out = {s.name: s.dtype for s in task.outputs}
    if graph_in != want_in or graph_out != want_out:
        raise PlanError(f"task {task.task_id[:12]}: graph interface differs from task.json "
                        f"(graph inputs {sorted(graph_in)}, declared {sorted(want_in)})")


def empty_state(spec: TensorSpec) -> np.ndarray:
    """An empty KV cache: symbolic (cache-length) axes are 0, static ones as declared."""
    return np.zeros([d if isinstance(d, int) else 0 for d in spec.shape], dtype=spec.dtype)


def fill_state(task: TaskDefinition, feeds: Mapping[str, np.ndarray],
               state: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The task's full feed: given inputs, then held state, then empty caches for state never produced."""
    full: dict[str, np.ndarray] = {}
    for spec in task.inputs:
        if spec.name in feeds:
            full[spec.name] = feeds[spec.name]
        elif spec.name in task.state:
            held = state.get(spec.name) if state is not None else None
            full[spec.name] = held if held is not None else empty_state(spec)
        else:
            raise EngineError(f"task {task.index} needs input {spec.name!r}, which nothing provides")
    return full


def run_stateful(runner: Runner, feeds: Mapping[str, np.ndarray],
                 state: Mapping[str, np.ndarray] | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run one step: returns (outputs, next state), where state outputs replace the inputs they feed."""
    outs = runner.run(fill_state(runner.task, feeds, state))
    return outs, {past: outs[present] for past, present in runner.task.state.items()}
