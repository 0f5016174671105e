"""Run a written plan's tasks in sequence in one process (the reference for distributed runs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from splitup.partition.task import GRAPH_FILE, Plan, PlanError, load_task, task_dir


class LocalPipeline:
    """Loads every task of a plan directory (hash-checked) and runs inputs through them in order.

    KV-cache state is held here per task, like a node holds it for a generation session: outputs
    declared as state replace the matching inputs on the next call.
    """

    def __init__(self, plan_dir: Path, providers: list[str] | None = None) -> None:
        self.plan = Plan.load(plan_dir)
        self.sessions: list[ort.InferenceSession] = []
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        for task in self.plan.tasks:
            directory = task_dir(plan_dir, task)
            loaded = load_task(directory)
            if loaded.task_id != task.task_id:
                raise PlanError(f"bundle {directory} holds task {loaded.task_id[:12]}, plan says {task.task_id[:12]}")
            self.sessions.append(
                ort.InferenceSession(str(directory / GRAPH_FILE), opts, providers=providers or ["CPUExecutionProvider"])
            )
        self.state: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self.state.clear()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = dict(feeds)
        for task, sess in zip(self.plan.tasks, self.sessions, strict=True):
            inputs = {}
            for spec in task.inputs:
                if spec.name in task.state and spec.name not in env:
                    inputs[spec.name] = self.state.get(spec.name, _empty(spec))
                elif spec.name in task.state and spec.name in self.state:
                    inputs[spec.name] = self.state[spec.name]
                elif spec.name in env:
                    inputs[spec.name] = env[spec.name]
                else:
                    raise PlanError(f"task {task.index} needs input {spec.name!r}, which nothing provides")
            outs = sess.run([o.name for o in task.outputs], inputs)
            for spec, value in zip(task.outputs, outs, strict=True):
                env[spec.name] = value
            for past, present in task.state.items():
                self.state[past] = env[present]
        return {o.name: env[o.name] for o in self.plan.outputs}


def _empty(spec) -> np.ndarray:  # noqa: ANN001 - TensorSpec
    """An empty KV cache: the symbolic (cache-length) axes are 0, static ones as declared."""
    shape = [d if isinstance(d, int) else 0 for d in spec.shape]
    return np.zeros(shape, dtype=spec.dtype)
