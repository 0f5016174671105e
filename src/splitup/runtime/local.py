"""Run a written plan's tasks in sequence in one process (the reference for distributed runs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from splitup.partition.task import Plan, task_dir
from splitup.runtime.registry import get_engine


class LocalPipeline:
    """Loads every task of a plan directory (hash-checked) on one engine and runs inputs through them in order.

    KV-cache state is held here per task, like a node holds it for a generation session: outputs
    declared as state replace the matching inputs on the next call.
    """

    def __init__(self, plan_dir: Path, providers: list[str] | None = None, *, engine=None) -> None:  # noqa: ANN001
        from splitup.runtime.ort import OnnxruntimeEngine

        self.plan = Plan.load(plan_dir)
        if engine is None:
            engine = OnnxruntimeEngine(providers=providers) if providers else get_engine("onnxruntime")
        self.engine = engine
        self.runners = [engine.load(task_dir(plan_dir, t), task_id=t.task_id) for t in self.plan.tasks]
        self.state: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self.state.clear()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from splitup.runtime import run_stateful

        env: dict[str, np.ndarray] = dict(feeds)
        for runner in self.runners:
            task = runner.task
            # Held state wins over a caller's cache; a caller's cache seeds a task that holds none yet.
            given = {s.name: env[s.name] for s in task.inputs
                     if s.name in env and not (s.name in task.state and s.name in self.state)}
            outs, new_state = run_stateful(runner, given, self.state)
            env.update(outs)
            self.state.update(new_state)
        return {o.name: env[o.name] for o in self.plan.outputs}
