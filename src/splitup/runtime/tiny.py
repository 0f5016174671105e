"""The tinygrad engine: ``tinygrad.nn.onnx.OnnxRunner`` on the device tinygrad picks for this machine."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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


def _tinygrad_thread() -> ThreadPoolExecutor:
    """One thread for all tinygrad work in this process: its kernel cache is a sqlite connection owned by
    the thread that first compiles, and a node compiles on HTTP workers and validation threads alike."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitup-tinygrad")
        return _EXECUTOR


_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


class TinygradEngine(Engine):
    name = "tinygrad"

    def __init__(self) -> None:
        # tinygrad reads CC when it first probes the CPU device, so it must be set before Device is touched.
        if "CC" not in os.environ and (cc := _find_cc()) is not None:
            os.environ["CC"] = cc
        self.device = _tinygrad_thread().submit(_probe_device).result()
        from tinygrad.nn.onnx import OnnxRunner

        self._runner_cls = OnnxRunner
        log.info("tinygrad: device %s", self.device)

    def devices(self) -> list[str]:
        return [self.device]

    def _open(self, graph: Path, task: TaskDefinition) -> Runner:
        def make():  # noqa: ANN202 - OnnxRunner
            return self._runner_cls(graph)

        try:
            runner = _tinygrad_thread().submit(make).result()
        except Exception as exc:  # tinygrad raises plain exceptions for unsupported graphs
            raise EngineError(f"tinygrad cannot load task {task.task_id[:12]}: {exc}") from None
        return _TinygradRunner(task, runner, self.device)


def _probe_device() -> str:
    try:
        from tinygrad import Device
    except ImportError as exc:
        raise EngineUnavailable(f"tinygrad is not installed (pip install 'splitup[tinygrad]'): {exc}") from None
    try:
        device = str(Device.DEFAULT)
        # Imported after the probe: the module makes tensors at import, which fails without a device.
        from tinygrad.nn.onnx import OnnxRunner  # noqa: F401 - fail here, not at the first task
    except Exception as exc:  # e.g. "no usable devices": no compiler for the CPU backend
        raise EngineUnavailable(f"tinygrad found no usable device: {exc}") from None
    if device in ("CPU", "CLANG") and not shutil.which(os.environ.get("CC", "clang")):
        raise EngineUnavailable("tinygrad's CPU backend needs a C compiler: no clang found on PATH")
    return device


class _TinygradRunner(Runner):
    def __init__(self, task: TaskDefinition, runner, device: str) -> None:  # noqa: ANN001 - OnnxRunner
        super().__init__(task, "tinygrad", device)
        self._runner = runner

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # All calls go through the one tinygrad thread, which also keeps them from interleaving
        # (OnnxRunner keeps per-call values on itself).
        return _tinygrad_thread().submit(self._run, feeds).result()

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # OnnxRunner pins symbolic dims and shape-derived constants at the first call (it assumes JIT-fixed
        # shapes); a KV cache grows every step, so both caches start empty each call.
        self._runner.variable_dims = {}
        self._runner._python_const_cache = {}
        try:
            outs = self._runner({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return {s.name: np.asarray(outs[s.name].numpy(), dtype=s.dtype) for s in self.task.outputs}
        except Exception as exc:
            raise EngineError(f"task {self.task.index} failed on tinygrad: {exc}") from None
