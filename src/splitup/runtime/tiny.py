"""The tinygrad engine: ``tinygrad.nn.onnx.OnnxRunner`` on the device tinygrad picks for this machine."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from splitup.partition.task import TaskDefinition, TensorSpec
from splitup.runtime.arithmetic import arithmetic_for, converts, float32_copy, tinygrad_device_arithmetic
from splitup.runtime.engine import Engine, EngineError, EngineUnavailable, Runner
from splitup.runtime.kv import step_bucket

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
T = TypeVar("T")


def on_tinygrad_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the process's one tinygrad thread; every tinygrad use, in this engine or outside it,
    goes through here, or the kernel cache's sqlite connection ends up owned by a thread it never runs on."""
    return _tinygrad_thread().submit(fn, *args).result()


class TinygradEngine(Engine):
    name = "tinygrad"

    def __init__(self) -> None:
        # tinygrad reads CC when it first probes the CPU device, so it must be set before Device is touched.
        if "CC" not in os.environ and (cc := _find_cc()) is not None:
            os.environ["CC"] = cc
        self.device = on_tinygrad_thread(_probe_device)
        from tinygrad.nn.onnx import OnnxRunner

        self._runner_cls = OnnxRunner
        log.info("tinygrad: device %s", self.device)

    def devices(self) -> list[str]:
        return [self.device]

    def _open(self, graph: Path, task: TaskDefinition) -> Runner:
        arith = arithmetic_for(task, tinygrad_device_arithmetic(self.device))
        keep = threading.Event()  # lives as long as the runner: owns a converted copy of the graph
        graph = float32_copy(graph, keep) if converts(task, arith) else graph

        def make():  # noqa: ANN202 - OnnxRunner
            tmp = Path(tempfile.mkdtemp(prefix="splitup-tinygrad-"))
            try:
                runner = self._runner_cls(_widen_4bit(graph, tmp))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            # tinygrad reads external data lazily: the widened copy lives as long as the runner.
            weakref.finalize(runner, shutil.rmtree, tmp, True)
            return _transpose_matmul_weights(runner)

        try:
            runner = on_tinygrad_thread(make)
        except Exception as exc:  # tinygrad raises plain exceptions for unsupported graphs
            raise EngineError(f"tinygrad cannot load task {task.task_id[:12]}: {exc}") from None
        done = _TinygradRunner(task, runner, self.device)
        done.arithmetic = arith
        done.keep = keep
        return done


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


# Lanes of a decode-step dot product kept apart until the end (see ``_matvec``): 8 fills an AVX register.
_LANES = 8


def _transpose_matmul_weights(runner):  # noqa: ANN001, ANN202 - OnnxRunner
    """Keep each MatMul weight (in, out) stored as (out, in) and run those MatMuls as ``_matvec``: a decode
    step is matrix-vector products, and tinygrad's CPU kernels then read each dot product contiguously.
    MatMuls of two computed operands (attention) run as ``_product``. Values and results are unchanged
    (up to float summation order)."""
    from tinygrad import Tensor
    from tinygrad.nn.onnx import OnnxNode

    nodes = []
    for node in runner.graph_nodes:
        w = runner.graph_values.get(node.inputs[1]) if node.op == "MatMul" and len(node.inputs) == 2 else None
        if isinstance(w, Tensor) and w.ndim == 2 and node.inputs[1] in runner.const_names:
            runner.graph_values[node.inputs[1]] = w.T.contiguous().realize()
            node = OnnxNode(_MATVEC, node.opset_id, node.inputs, node.outputs, node.opts)
        elif node.op == "MatMul":
            node = OnnxNode(_PRODUCT, node.opset_id, node.inputs, node.outputs, node.opts)
        nodes.append(node)
    runner.graph_nodes = tuple(nodes)
    softmax = {opset: _realized(fn) for opset, fn in runner.onnx_ops["Softmax"].items()}
    runner.onnx_ops = {**runner.onnx_ops, _MATVEC: _matvec, _PRODUCT: _product, "Softmax": softmax}
    return runner


def _realized(fn):  # noqa: ANN001, ANN202 - an ONNX op implementation
    """``fn`` with its result in a buffer of its own. tinygrad otherwise fuses a softmax into the product
    that reads it (attention's weights @ values) and evaluates every exp once per output column: 64 times
    over for a head of 64 dims, most of a decode step's time."""
    return lambda *args, **kwargs: fn(*args, **kwargs).contiguous()


_MATVEC = "SplitUpMatMulTransposed"
_PRODUCT = "SplitUpMatMul"
# ``_product`` splits reductions at least this long into ``_LANES`` chunks.
_LONG_REDUCTION = 128


def _product(x, y):  # noqa: ANN001, ANN202 - tinygrad Tensors
    """``x @ y``. For one row per matrix over a long reduction (a decode step's attention weights @ values,
    over the cache's slots) the reduction is summed in ``_LANES`` chunks, then those: a single chunk's
    output (heads x head dims) is too small for tinygrad's CPU heuristics to vectorise, and it would
    accumulate each output in one running sum (about 3x slower on SmolLM2's attention over 512 slots)."""
    k = int(y.shape[-2])
    if x.ndim < 2 or y.ndim < 2 or int(x.shape[-2]) != 1 or k < _LONG_REDUCTION or k % _LANES:
        return x @ y
    chunks = x.reshape(*x.shape[:-1], _LANES, k // _LANES, 1) * y.reshape(*y.shape[:-2], 1, _LANES, k // _LANES,
                                                                       int(y.shape[-1]))
    return chunks.sum(-2).contiguous().sum(-2)


def _matvec(x, wt):  # noqa: ANN001, ANN202 - tinygrad Tensors
    """``x @ wt.T`` for a weight stored (out, in). For one row (a decode step) the dot products are summed
    in ``_LANES`` interleaved partial sums, then those: tinygrad's CPU code then accumulates in a vector
    register, where one running sum would make every add wait on the one before (several times faster on
    SmolLM2's projections). Longer inputs (prefill) are matrix products, which tinygrad already handles."""
    k = int(wt.shape[1])
    rows = 1
    for d in x.shape[:-1]:
        rows *= int(d)
    if rows != 1 or k % _LANES:
        return x @ wt.T
    lead = tuple(x.shape[:-1])
    # The input in a buffer of its own too: fused into the product, whatever made it (a SiLU's exp, a
    # norm) would be evaluated again for every output row.
    x = x.contiguous()
    lanes = x.reshape(*lead, 1, k // _LANES, _LANES) * wt.reshape(int(wt.shape[0]), k // _LANES, _LANES)
    # In a buffer of its own: fused with a sibling product (a gated MLP's gate and up) tinygrad orders one
    # of the two reductions across the weight rows instead of along them.
    return lanes.sum(-2).sum(-1).contiguous()


def _probe_device() -> str:
    try:
        from tinygrad import Device
    except ImportError as exc:
        raise EngineUnavailable(f"tinygrad is not installed (pip install 'splitup[tinygrad]'): {exc}") from None
    try:
        from tinygrad.nn.onnx import OnnxRunner  # noqa: F401 - fail here, not at the first task
    except ImportError as exc:
        raise EngineUnavailable(f"tinygrad is not installed (pip install 'splitup[tinygrad]'): {exc}") from None
    except RuntimeError as exc:  # importing it makes tensors, which needs a device: "no usable devices"
        raise EngineUnavailable(f"tinygrad found no usable device: {exc}") from None
    try:
        device = str(Device.DEFAULT)
    except Exception as exc:  # e.g. "no usable devices": no compiler for the CPU backend
        raise EngineUnavailable(f"tinygrad found no usable device: {exc}") from None
    if device in ("CPU", "CLANG") and not shutil.which(os.environ.get("CC", "clang")):
        raise EngineUnavailable("tinygrad's CPU backend needs a C compiler: no clang found on PATH")
    return device


class _TinygradRunner(Runner):
    """A task on tinygrad. Tasks with a fixed-capacity KV cache run in the fixed form: the caches live on
    the device at the task's maximum context and are updated in place, every call is padded to a step
    bucket, and each (bucket, batch) shape is captured once with ``TinyJit`` and replayed after that;
    compiled kernels also land in tinygrad's disk cache, so a restarted node does not compile again."""

    def __init__(self, task: TaskDefinition, runner, device: str) -> None:  # noqa: ANN001 - OnnxRunner
        super().__init__(task, "tinygrad", device)
        self._runner = runner
        self._weights = dict(runner.graph_values)  # initializers only: what each shape's copy starts from
        self._slots: dict[tuple[int, ...], _Slot] = {}
        if self.kv is not None:
            self.kv_form = "fixed"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # All calls go through the one tinygrad thread, which also keeps them from interleaving
        # (OnnxRunner keeps per-call values on itself).
        return on_tinygrad_thread(self._run, feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Without a fixed-capacity cache, shapes may change every call: OnnxRunner pins symbolic dims and
        # shape-derived constants at the first call, so both caches start empty each call.
        self._runner.variable_dims = {}
        self._runner._python_const_cache = {}
        try:
            outs = self._runner({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return {s.name: np.asarray(outs[s.name].numpy(), dtype=s.dtype) for s in self.task.outputs}
        except Exception as exc:
            raise EngineError(f"task {self.task.index} failed on tinygrad: {exc}") from None

    def step(self, feeds: Mapping[str, np.ndarray], state: Mapping[str, Any] | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.kv is None:
            return super().step(feeds, state)
        return on_tinygrad_thread(self._step, feeds, state or {})

    def _step(self, feeds: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        from tinygrad import Tensor

        kv = self.kv
        assert kv is not None
        missing = [s.name for s in self.task.inputs if s.name not in feeds and s.name not in self.task.state]
        if missing:
            raise EngineError(f"task {self.task.index} needs input(s) {', '.join(missing)}, which nothing provides")
        specs = {s.name: s for s in self.task.inputs}
        step = kv.step_size(feeds)
        lengths = {n: np.asarray(state[n], np.int64) if n in state else np.zeros(specs[n].shape, np.int64)
                   for n in kv.lengths}
        kv.needed(lengths, step)
        bucket = step_bucket(step, kv.capacity - kv.length(lengths))
        seq_dim = specs[kv.step[0]].shape[kv.step[1]]
        try:
            key = (bucket, *(d for n in sorted(feeds) for d in feeds[n].shape))
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(None, {})
            inputs: dict[str, Any] = {}
            for spec in self.task.inputs:
                if spec.name in kv.caches:
                    inputs[spec.name] = self._device_cache(spec, state.get(spec.name))
                    continue
                if spec.name in lengths:
                    value = lengths[spec.name]
                else:
                    value = np.asarray(feeds[spec.name], dtype=spec.dtype)
                    axes = [i for i, d in enumerate(spec.shape) if d == seq_dim]
                    if bucket != step and axes:
                        pad = [(0, 0)] * value.ndim
                        for i in axes:
                            pad[i] = (0, bucket - step)
                        value = np.pad(value, pad)
                # Inputs go into buffers kept per shape: a new Tensor per call costs a schedule of its own.
                held = slot.inputs.get(spec.name)
                if held is None:
                    held = slot.inputs[spec.name] = Tensor(np.ascontiguousarray(value)).contiguous().realize()
                else:
                    _write(held, value)
                inputs[spec.name] = held
            if slot.jit is None:  # the shape's first call (or a first call that failed)
                slot.jit = self._make_jit(inputs)
            outs = slot.jit(**inputs)
            done: dict[str, Any] = {}
            for spec in self.task.outputs:
                if spec.name in self.task.state.values():
                    continue
                value = _read(outs[spec.name]).astype(spec.dtype, copy=False)
                axes = [i for i, d in enumerate(spec.shape) if d == seq_dim]
                if bucket != step and axes:
                    value = value[tuple(slice(0, step) if i in axes else slice(None) for i in range(value.ndim))]
                done[spec.name] = np.ascontiguousarray(value)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"task {self.task.index} failed on tinygrad: {exc}") from None
        # The caches were written in place; only the lengths advance, by the positions asked for (padding
        # wrote slots past them, which the mask hides and the next call overwrites).
        new_state: dict[str, Any] = {n: DeviceCache(inputs[n]) for n in kv.caches}
        new_state.update({n: v + step for n, v in lengths.items()})
        for past, present in self.task.state.items():
            done[present] = new_state[past]
        return done, new_state

    def _device_cache(self, spec: TensorSpec, held: Any) -> Any:
        from tinygrad import Tensor

        assert self.kv is not None
        axis = self.kv.caches[spec.name]
        if isinstance(held, DeviceCache) and held.shape[axis] == self.kv.capacity:
            return held.tensor
        shape = [self.kv.capacity if i == axis else int(d) for i, d in enumerate(spec.shape)]
        if held is None:
            return Tensor.zeros(*shape, dtype=_tiny_dtype(spec.dtype)).contiguous().realize()
        # A cache handed over as an array (a caller's, or another engine's): copied to the device once.
        value = np.asarray(held, dtype=spec.dtype)
        pad = [(0, 0)] * value.ndim
        pad[axis] = (0, self.kv.capacity - value.shape[axis])
        return Tensor(np.ascontiguousarray(np.pad(value, pad))).realize()

    def _make_jit(self, inputs: Mapping[str, Any]) -> Any:
        """A TinyJit over a private copy of the runner (OnnxRunner pins dims and shape-derived constants per
        shape) that writes the new caches into the input buffers, so sessions keep one buffer per cache.
        It captures on its first call: ``inputs`` (that call's) are traced here first without running
        anything, which is where OnnxRunner reads the shape-derived constants it then keeps (a capture
        cannot read tensor data). The alternative, a first call run eagerly, costs a whole extra
        schedule of the graph: most of a new shape's first call."""
        import copy

        from tinygrad import TinyJit

        runner = copy.copy(self._runner)
        runner.graph_values = dict(self._weights)
        runner.variable_dims = {}
        runner._python_const_cache = {}
        task = self.task
        caches = self.kv.caches if self.kv else {}

        def call(**inputs: Any) -> dict[str, Any]:
            outs = runner(inputs)
            for past, present in task.state.items():
                if past in inputs and present in outs and past in caches:
                    inputs[past].assign(outs[present])
            kept = {o.name: outs[o.name] for o in task.outputs if o.name not in task.state.values()}
            for past in caches:
                kept[past] = inputs[past]
            return kept

        runner(dict(inputs))  # the trace: lazy tensors only, dropped here
        runner.graph_values = dict(self._weights)
        jit = TinyJit(call)
        jit.cnt = 1  # TinyJit's call count: 1 = the next call captures (0 would run it eagerly first)
        return jit


@dataclass
class _Slot:
    """One captured shape: its JIT and the device buffers its non-cache inputs are written into."""

    jit: Any  # made on the shape's first call, from that call's inputs
    inputs: dict[str, Any]


def _write(t: Any, value: np.ndarray) -> None:
    """Copy ``value`` into the realized tensor ``t``'s buffer (in place: the JIT replays on this buffer)."""
    from tinygrad.device import Buffer

    buf = t.uop.buffer
    data = np.ascontiguousarray(value, dtype=np.dtype(buf.dtype.fmt) if buf.dtype.fmt else None)
    if hasattr(buf.allocator, "_as_buffer"):  # host memory (the CPU device): a plain memcpy
        buf.allocator.dev.synchronize()
        np.frombuffer(buf.allocator._as_buffer(buf._buf), dtype=data.dtype)[: data.size] = data.reshape(-1)
    else:
        buf.copy_from(Buffer("PYTHON", buf.size, buf.dtype, opaque=memoryview(bytearray(data.tobytes()))))


def _read(t: Any) -> np.ndarray:
    """A copy of a realized tensor's values, without scheduling anything."""
    buf = t.uop.buffer
    mv = buf.as_memoryview(allow_zero_copy=True)
    return np.frombuffer(mv, dtype=np.dtype(buf.dtype.fmt)).copy().reshape([int(d) for d in t.shape])


class DeviceCache:
    """A KV cache held on tinygrad's device between calls (a session's state): sized, and readable as an
    array (``np.asarray``) for the rare caller that wants its values."""

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor
        self.shape = tuple(int(d) for d in tensor.shape)
        self.dtype = np.dtype(tensor.dtype.fmt) if getattr(tensor.dtype, "fmt", None) else np.dtype(np.float32)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.ndim = len(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return on_tinygrad_thread(self.tensor.numpy).astype(dtype or self.dtype, copy=False)


def _tiny_dtype(name: str) -> Any:
    from tinygrad import dtypes

    return {"float32": dtypes.float32, "float16": dtypes.float16, "bfloat16": dtypes.bfloat16,
            "float64": dtypes.float64}[name]
