"""The onnxruntime engine: the best execution provider present, weights memory-mapped from the shard."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from splitup.partition.task import TaskDefinition
from splitup.runtime.engine import Engine, EngineError, EngineUnavailable, Runner

log = logging.getLogger("splitup.runtime")

# Best first. CPU is always appended as the fallback for ops a GPU provider does not implement.
PREFERRED_PROVIDERS = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)


# onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits at load time. Its CPU default (accuracy
# level 4) quantises the activations to int8 inside the kernel: ~1.3x faster than float32 on SmolLM2 but
# ~9% relative error in the logits, far more than any other engine's honest difference, so Proof of
# Sampling could not tell it from a cheat. Level 1 accumulates in float32 (within 3e-5 of the float
# model, as tinygrad computes it); bench/quant_table.py measures both.
QUANT_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
EXACT_QUANT_ACCURACY = "1"
FAST_QUANT_ACCURACY = "4"


def session_options(ort, *, threads: int | None = None, fast_quantised: bool = False):  # noqa: ANN001, ANN201
    """SessionOptions shared by the engine and the single-process decoder, so both compute the same."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # Idle worker threads must not spin: several nodes may share the same cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry(QUANT_ACCURACY_KEY, FAST_QUANT_ACCURACY if fast_quantised else EXACT_QUANT_ACCURACY)
    return opts


def choose_providers(available: list[str]) -> list[str]:
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    best = chosen[:1] if chosen else []
    return best + (["CPUExecutionProvider"] if best != ["CPUExecutionProvider"] else [])


class OnnxruntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, *, threads: int | None = None, providers: list[str] | None = None,
                 fast_quantised: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineUnavailable(f"onnxruntime is not installed: {exc}") from None
        self._ort = ort
        self.threads = threads
        self.fast_quantised = fast_quantised
        self.providers = providers or choose_providers(ort.get_available_providers())
        log.info("onnxruntime %s: execution providers %s", ort.__version__, ", ".join(self.providers))

    def devices(self) -> list[str]:
        return [p.removesuffix("ExecutionProvider") for p in self.providers]

    def _open(self, graph: Path, task: TaskDefinition) -> Runner:
        opts = session_options(self._ort, threads=self.threads, fast_quantised=self.fast_quantised)
        try:
            # Loading from the path lets onnxruntime resolve external data next to the graph (mmap'd shard).
            sess = self._ort.InferenceSession(str(graph), opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load task {task.task_id[:12]}: {exc}") from None
        return _OrtRunner(task, sess, self.devices()[0])


class _OrtRunner(Runner):
    def __init__(self, task: TaskDefinition, sess, device: str) -> None:  # noqa: ANN001 - InferenceSession
        super().__init__(task, "onnxruntime", device)
        self._sess = sess
        self._names = [o.name for o in task.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self._sess.run(self._names, dict(feeds))
        except Exception as exc:
            raise EngineError(f"task {self.task.index} failed: {exc}") from None
        return dict(zip(self._names, outs, strict=True))
