"""Re-executing a transcript: every recorded call, in order, on a fresh KV cache, then the tolerance rule.

Shared by the validator (its own engine) and the arbiter (``onnx.reference``, exact and slow), so both
judge by exactly the same replay and comparison.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from splitup.partition.task import GRAPH_FILE, TaskDefinition, load_task
from splitup.runtime import Runner, run_stateful
from splitup.runtime.engine import HeadedRunner, head_of
from splitup.verify.compare import (
    DEFAULT_TOLERANCE,
    TOLERANCES,
    ArithmeticBelowStated,
    CoarseClassRefused,
    Tolerance,
    check_token_tolerance,
    chooses_tokens,
    compare_outputs,
    judged_class,
)
from splitup.verify.transcript import Transcript

LOGITS = "logits"


@dataclass(frozen=True)
class Replay:
    outputs: list[dict[str, np.ndarray]]  # boundary outputs per call
    seconds: float
    state: dict[str, np.ndarray] = field(default_factory=dict)  # the cache after the last call
    # per call, for a task with a float32 head: the head run on the executor's committed head input
    head: list[dict[str, np.ndarray]] = field(default_factory=list)


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
    heads: list[dict[str, np.ndarray]] = []
    boundary = runner.task.head
    # a headed runner's body alone: the head is judged only as run below on the executor's committed head
    # input, so running it on the replayed one as well would compute every call's logits twice
    layers = runner.body if isinstance(runner, HeadedRunner) else runner
    start = time.perf_counter()
    for step in transcript.steps:
        result, state = run_stateful(layers, step.inputs, state)
        outs.append({k: v for k, v in result.items() if k not in held})
        if boundary is not None and boundary in step.outputs:
            heads.append(runner.head().run({boundary: step.outputs[boundary]}))
    return Replay(outs, time.perf_counter() - start, state, heads)


def judge(transcript: Transcript, replayed: Replay, tol: Tolerance | None = None,
          task: TaskDefinition | None = None, *, arithmetic: str = "fp32") -> Judgement:
    """The asserted outputs of every call against the replay; the first failing call decides.

    Without ``tol`` the thresholds are those of the class ``compare.judged_class`` gives for the
    precision ``task`` states, the arithmetic the transcript declares and the validator's own
    (``arithmetic``); float32 without a task. A task choosing tokens is never judged under a coarser
    class (``CoarseClassRefused``, also for an explicit ``tol``); an executor declaring half precision
    for a float32 task loses whatever its outputs.
    Logits are held to the transcript's decoding rule, each call's sampled draw keyed by the tokens in
    the sequence once its inputs are in (read off ``task``'s ``seq`` axis).
    """
    head = task.head if task is not None else None
    head_tol = TOLERANCES["fp32"] if tol is None else tol
    if task is not None:
        tokens = chooses_tokens([o.name for o in task.outputs])
        try:
            # with a float32 head the body keeps the plan's class; the logits are judged below in float32
            cls = judged_class(task.precision, tokens=tokens and head is None, executor=transcript.arithmetic,
                               validator=arithmetic)
        except ArithmeticBelowStated as exc:
            return Judgement(False, str(exc), float("inf"))
        if tol is None:
            tol = TOLERANCES[cls]
        elif tokens and head is None:
            check_token_tolerance(tol)
        if head is not None:
            check_token_tolerance(head_tol)
            if len(replayed.head) != len(transcript.steps):
                raise CoarseClassRefused(f"task {task.task_id[:12]} chooses tokens in a float32 head: its logits are "
                                         f"judged only against the head run on each call's {head!r} "
                                         f"({len(replayed.head)} of {len(transcript.steps)} calls have it)")
    tol = tol or DEFAULT_TOLERANCE
    positions = call_positions(task, transcript) if task is not None else [0] * len(transcript.steps)
    worst = 0.0
    for i, (step, ref) in enumerate(zip(transcript.steps, replayed.outputs, strict=True)):
        if head is None:
            verdicts = [compare_outputs(step.outputs, ref, tol, logits=[LOGITS] if LOGITS in ref else (),
                                        decoding=transcript.decoding, position=positions[i])]
        else:
            # two stages: what the layers made (the head's input included) under the plan's class; the
            # logits under float32's against the head computed from the executor's own head input
            verdicts = [
                compare_outputs({k: v for k, v in step.outputs.items() if k != LOGITS},
                                {k: v for k, v in ref.items() if k != LOGITS}, tol),
                compare_outputs({LOGITS: step.outputs[LOGITS]} if LOGITS in step.outputs else {},
                                replayed.head[i], head_tol, logits=[LOGITS], decoding=transcript.decoding,
                                position=positions[i]),
            ]
        for verdict in verdicts:
            worst = max([worst, *(t.rel_l2 for t in verdict.tensors)])
            if not verdict.match:
                return Judgement(False, f"call {i}: {verdict.reason}", worst)
    return Judgement(True, "", worst)


def call_positions(task: TaskDefinition, calls: Transcript | Sequence[Mapping[str, np.ndarray]]) -> list[int]:
    """Tokens in the sequence after each call (a transcript's, or a list of feeds): the running total of
    the inputs' ``seq`` axis (one per call for a task without one)."""
    feeds = [s.inputs for s in calls.steps] if isinstance(calls, Transcript) else calls
    total, out = 0, []
    for inputs in feeds:
        n = 1
        for spec in task.inputs:
            if spec.name in inputs and "seq" in spec.shape:
                n = inputs[spec.name].shape[spec.shape.index("seq")]
                break
        total += n
        out.append(total)
    return out


def estimated_flops(task: TaskDefinition, transcript: Transcript) -> int:
    """Compute of a transcript: the task's FLOPs (taken at the maximum sequence) per position processed.

    Positions are read off the inputs' ``seq`` axis; a task without one counts each call as one full run.
    """
    seq_max = task.dim_max.get("seq")
    if not seq_max:
        return task.flops * len(transcript.steps)
    positions = call_positions(task, transcript)
    return task.flops * (positions[-1] if positions else 0) // seq_max


class ReferenceRunner(Runner):
    """``onnx.reference.ReferenceEvaluator`` behind the engine interface: the arbiter's exact engine."""

    def __init__(self, bundle: Path | None = None, *, graph: tuple[onnx.ModelProto, TaskDefinition] | None = None,
                 ) -> None:
        if graph is None:
            # onnx.load resolves the external weights next to the graph (offsets into the verified shard).
            task = load_task(Path(bundle), verify=True)
            graph = onnx.load(str(Path(bundle) / GRAPH_FILE)), task
        model, task = graph  # ``graph``: a model whose weights are loaded, and its definition
        super().__init__(task, "onnx.reference", "cpu")
        self._names = [o.name for o in model.graph.output]
        self._eval = ReferenceEvaluator(model)
        if task.head is not None:
            # the exact engine runs the whole graph (no fusing there) and, for judging, the head alone
            self._head = ReferenceRunner(graph=head_of(model, task))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._eval.run(None, dict(feeds))
        got = dict(zip(self._names, outs, strict=True))
        return {s.name: np.asarray(got[s.name], dtype=s.dtype) for s in self.task.outputs}
