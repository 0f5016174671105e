"""Re-executing a transcript: every recorded call, in order, on a fresh KV cache, then the tolerance rule.

Shared by the validator (its own engine) and the arbiter (``onnx.reference``, exact and slow), so both
judge by exactly the same replay and comparison.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from splitup.partition.task import GRAPH_FILE, TaskDefinition, load_task
from splitup.runtime import Runner, run_stateful
from splitup.verify.compare import DEFAULT_TOLERANCE, Tolerance, compare_outputs
from splitup.verify.transcript import Transcript

LOGITS = "logits"


@dataclass(frozen=True)
class Replay:
    outputs: list[dict[str, np.ndarray]]  # boundary outputs per call
    seconds: float
    state: dict[str, np.ndarray] = field(default_factory=dict)  # the cache after the last call


@dataclass(frozen=True)
class Judgement:
    match: bool
    reason: str
    worst_rel_l2: float


def replay(runner: Runner, transcript: Transcript) -> Replay:
    """Run every recorded call's inputs through ``runner`` with a cache that starts empty."""
    held = set(runner.task.state.values())
    state: dict[str, np.ndarray] = {}
    outs: list[dict[str, np.ndarray]] = []
    start = time.perf_counter()
    for step in transcript.steps:
        result, state = run_stateful(runner, step.inputs, state)
        outs.append({k: v for k, v in result.items() if k not in held})
    return Replay(outs, time.perf_counter() - start, state)


def judge(transcript: Transcript, replayed: Replay, tol: Tolerance = DEFAULT_TOLERANCE) -> Judgement:
    """The asserted outputs of every call against the replay; the first failing call decides."""
    worst = 0.0
    for i, (step, ref) in enumerate(zip(transcript.steps, replayed.outputs, strict=True)):
        verdict = compare_outputs(step.outputs, ref, tol, logits=[LOGITS] if LOGITS in ref else ())
        worst = max([worst, *(t.rel_l2 for t in verdict.tensors)])
        if not verdict.match:
            return Judgement(False, f"call {i}: {verdict.reason}", worst)
    return Judgement(True, "", worst)


def estimated_flops(task: TaskDefinition, transcript: Transcript) -> int:
    """Compute of a transcript: the task's FLOPs (taken at the maximum sequence) per position processed.

    Positions are read off the inputs' ``seq`` axis; a task without one counts each call as one full run.
    """
    seq_max = task.dim_max.get("seq")
    if not seq_max:
        return task.flops * len(transcript.steps)
    positions = 0
    for step in transcript.steps:
        n = 1
        for spec in task.inputs:
            if spec.name in step.inputs and "seq" in spec.shape:
                n = step.inputs[spec.name].shape[spec.shape.index("seq")]
                break
        positions += n
    return task.flops * positions // seq_max


class ReferenceRunner(Runner):
    """``onnx.reference.ReferenceEvaluator`` behind the engine interface: the arbiter's exact engine."""

    def __init__(self, bundle: Path) -> None:
        task = load_task(Path(bundle), verify=True)
        super().__init__(task, "onnx.reference", "cpu")
        # onnx.load resolves the external weights next to the graph (offsets into the verified shard).
        model = onnx.load(str(Path(bundle) / GRAPH_FILE))
        self._names = [o.name for o in model.graph.output]
        self._eval = ReferenceEvaluator(model)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._eval.run(None, dict(feeds))
        got = dict(zip(self._names, outs, strict=True))
        return {s.name: np.asarray(got[s.name], dtype=s.dtype) for s in self.task.outputs}
