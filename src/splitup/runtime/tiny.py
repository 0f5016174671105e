"""The tinygrad engine: ``tinygrad.nn.onnx.OnnxRunner`` on the device tinygrad picks for this machine."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import threading
import weakref
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
            tmp = Path(tempfile.mkdtemp(prefix="splitup-tinygrad-"))
            try:
                runner = self._runner_cls(_widen_4bit(graph, tmp))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            # tinygrad reads external data lazily: the widened copy lives as long as the runner.
            weakref.finalize(runner, shutil.rmtree, tmp, True)
            return runner

        try:
            runner = _tinygrad_thread().submit(make).result()
        except Exception as exc:  # tinygrad raises plain exceptions for unsupported graphs
            raise EngineError(f"tinygrad cannot load task {task.task_id[:12]}: {exc}") from None
        return _TinygradRunner(task, runner, self.device)


def _widen_4bit(graph: Path, tmp: Path) -> Path:
    """tinygrad's ONNX reader has no 4-bit element types: a bundle with int4/uint4 weights is handed to it
    with those tensors widened to int8/uint8 (one byte per value, half the float16 size); same values,
    same DequantizeLinear. Other bundles are read as they are."""
    import onnx
    from onnx import TensorProto

    from splitup.graph.quant import unpack_int4

    header = onnx.load(str(graph), load_external_data=False)
    if not any(t.data_type in (TensorProto.INT4, TensorProto.UINT4) for t in header.graph.initializer):
        return graph
    model = onnx.load(str(graph), load_external_data=True)  # the bundle was validated: data stays inside it
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
            signed = t.data_type == TensorProto.INT4
            count = int(np.prod(t.dims, dtype=np.int64))
            values = unpack_int4(t.raw_data, count, signed)
            t.data_type = TensorProto.INT8 if signed else TensorProto.UINT8
            t.raw_data = values.tobytes()
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type in (TensorProto.INT4, TensorProto.UINT4):
            tt.elem_type = TensorProto.INT8 if tt.elem_type == TensorProto.INT4 else TensorProto.UINT8
    out = tmp / "task.onnx"
    onnx.save(model, str(out), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    return out


def _probe_device() -> str:
    try:
        from tinygrad import Device
        from tinygrad.nn.onnx import OnnxRunner  # noqa: F401 - fail here, not at the first task
    except ImportError as exc:
        raise EngineUnavailable(f"tinygrad is not installed (pip install 'splitup[tinygrad]'): {exc}") from None
    try:
        device = str(Device.DEFAULT)
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
