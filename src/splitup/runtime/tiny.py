"""The tinygrad engine: ``tinygrad.nn.onnx.OnnxRunner`` on the device tinygrad picks for this machine."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from splitup.partition.task import TaskDefinition
from splitup.runtime.engine import Engine, EngineError, EngineUnavailable, Runner

log = logging.getLogger("splitup.runtime")


def _find_cc() -> str | None:
    """tinygrad's CPU backend runs ``$CC`` (default ``clang``); distributions often ship only ``clang-NN``."""
    if shutil.which(os.environ.get("CC", "clang")):
        return os.environ.get("CC", "clang")
    versioned = sorted(
        (p for d in os.environ.get("PATH", "").split(os.pathsep) for p in glob.glob(os.path.join(d, "clang-[0-9]*"))),
        key=lambda p: int(p.rsplit("-", 1)[1]) if p.rsplit("-", 1)[1].isdigit() else 0,
    )
    return versioned[-1] if versioned else None


class TinygradEngine(Engine):
    name = "tinygrad"

    def __init__(self) -> None:
        try:
            from tinygrad import Device
            from tinygrad.nn.onnx import OnnxRunner
        except ImportError as exc:
            raise EngineUnavailable(f"tinygrad is not installed (pip install 'splitup[tinygrad]'): {exc}") from None
        self.device = str(Device.DEFAULT)
        if self.device in ("CPU", "CLANG"):
            cc = _find_cc()
            if cc is None:
                raise EngineUnavailable("tinygrad's CPU backend needs a C compiler: no clang found on PATH")
            os.environ.setdefault("CC", cc)  # read by tinygrad at compile time
        self._runner_cls = OnnxRunner
        log.info("tinygrad: device %s", self.device)

    def devices(self) -> list[str]:
        return [self.device]

    def _open(self, graph: Path, task: TaskDefinition) -> Runner:
        try:
            runner = self._runner_cls(graph)
        except Exception as exc:  # tinygrad raises plain exceptions for unsupported graphs
            raise EngineError(f"tinygrad cannot load task {task.task_id[:12]}: {exc}") from None
        return _TinygradRunner(task, runner, self.device)


class _TinygradRunner(Runner):
    def __init__(self, task: TaskDefinition, runner, device: str) -> None:  # noqa: ANN001 - OnnxRunner
        super().__init__(task, "tinygrad", device)
        self._runner = runner
        # OnnxRunner keeps per-call values on itself, so calls must not interleave.
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            # OnnxRunner pins symbolic dims and shape-derived constants at the first call (it assumes JIT-fixed
            # shapes); a KV cache grows every step, so both caches start empty each call.
            self._runner.variable_dims = {}
            self._runner._python_const_cache = {}
            try:
                outs = self._runner({k: np.ascontiguousarray(v) for k, v in feeds.items()})
                return {s.name: np.asarray(outs[s.name].numpy(), dtype=s.dtype) for s in self.task.outputs}
            except Exception as exc:
                raise EngineError(f"task {self.task.index} failed on tinygrad: {exc}") from None
