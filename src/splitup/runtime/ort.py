"""The onnxruntime engine: the best execution provider present, weights memory-mapped from the shard."""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitup.graph.meta import DTYPE_ONNX, NUMPY_DTYPES
from splitup.partition.task import WEIGHTS_FILE, TaskDefinition
from splitup.runtime.arithmetic import arithmetic_for, converts, float32_graph, ort_device_arithmetic
from splitup.runtime.engine import Engine, EngineError, EngineUnavailable, Runner
from splitup.runtime.kv import step_bucket

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
# Where a graph loaded from bytes finds its external data (a bundle converted at load).
EXTERNAL_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
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


# Types onnxruntime's numpy bridge cannot convert (numpy knows them only through ml_dtypes).
UNBRIDGED_DTYPES = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"})

# Providers that can capture a run as a device graph and replay it (shapes and buffers must repeat).
GRAPH_CAPTURE_PROVIDERS = ("CUDAExecutionProvider",)


def kv_form_for(providers: list[str]) -> str:
    """The KV-cache form for a runner on ``providers``: fixed where the best provider replays captured
    graphs (every step then has the same shapes and buffers), growing otherwise (on CPU attention then
    spans only the tokens there are, which is faster)."""
    return "fixed" if providers and providers[0] in GRAPH_CAPTURE_PROVIDERS else "growing"


def graph_capture_providers(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """``providers`` with graph capture switched on where a provider supports it."""
    return [(p, {"enable_cuda_graph": "1"}) if p in GRAPH_CAPTURE_PROVIDERS else p for p in providers]


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
        arith = arithmetic_for(task, ort_device_arithmetic(self.providers))
        # Loading from the path lets onnxruntime resolve external data next to the graph (mmap'd shard); a
        # converted graph is loaded from bytes, its external data resolved in the bundle's directory.
        source: str | bytes = str(graph)
        shard, convert = graph.parent / WEIGHTS_FILE, converts(task, arith)
        if convert or shard.is_symlink():
            # A task's head beside a link to its bundle's shard (Engine._open_part): onnxruntime refuses external
            # data outside the folder it is given, so it gets the shard's own.
            opts.add_session_config_entry(EXTERNAL_DATA_FOLDER_KEY,
                                          str(shard.resolve().parent if shard.is_symlink() else graph.parent))
            model = float32_graph(graph) if convert else onnx.load(str(graph), load_external_data=False)
            source = model.SerializeToString()
        try:
            sess = self._ort.InferenceSession(source, opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load task {task.task_id[:12]}: {exc}") from None
        runner = _OrtRunner(task, sess, self.devices()[0])
        runner.arithmetic = arith
        if runner.kv is not None and kv_form_for(self.providers) == "fixed":
            runner.kv_form = "fixed"
            runner.captured = _CapturedSteps(self._ort, graph, opts, self.providers, runner)
        return runner


class _OrtRunner(Runner):
    def __init__(self, task: TaskDefinition, sess, device: str) -> None:  # noqa: ANN001 - InferenceSession
        super().__init__(task, "onnxruntime", device)
        self._sess = sess
        self._names = [o.name for o in task.outputs]
        self._bound_types = any(t.dtype in UNBRIDGED_DTYPES for t in (*task.inputs, *task.outputs))
        self.captured: _CapturedSteps | None = None

    def step(self, feeds: Mapping[str, np.ndarray], state: Mapping[str, Any] | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.captured is not None:
            return self.captured.step(feeds, state or {})
        return super().step(feeds, state)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if self._bound_types:
                return self._run_bound(feeds)
            outs = self._sess.run(self._names, dict(feeds))
        except Exception as exc:
            raise EngineError(f"task {self.task.index} failed: {exc}") from None
        return dict(zip(self._names, outs, strict=True))

    def _run_bound(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """bfloat16 / float8 in or out: onnxruntime's numpy bridge has no such types, so inputs go in as
        typed OrtValues over their bytes and outputs are read back from onnxruntime's CPU buffers."""
        import onnxruntime as ort

        binding = self._sess.io_binding()
        for name, value in feeds.items():
            arr = np.ascontiguousarray(value)
            if arr.dtype.name in UNBRIDGED_DTYPES:
                bits = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    bits, DTYPE_ONNX[arr.dtype.name]))
            else:
                binding.bind_cpu_input(name, arr)
        for name in self._names:
            binding.bind_output(name, "cpu")
        self._sess.run_with_iobinding(binding)
        dtypes = {s.name: s.dtype for s in self.task.outputs}
        out = {}
        for name, value in zip(self._names, binding.get_outputs(), strict=True):
            if dtypes[name] not in UNBRIDGED_DTYPES:
                out[name] = value.numpy()
                continue
            dtype, shape = NUMPY_DTYPES[dtypes[name]], value.shape()
            size = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_uint8 * size).from_address(value.data_ptr()) if size else b""
            out[name] = np.frombuffer(bytes(raw), dtype).reshape(shape)
        return out


class _CapturedSteps:
    """Fixed-form steps as CUDA graphs: each session's caches stay on the device (bound as both the past
    input and the present output, so the position update writes in place), inputs and outputs are bound
    with IO binding to buffers that live as long as the session's caches, and each (session, step bucket)
    is captured on its first run and replayed after that. Not yet run on a GPU by our tests: only the
    choice of form and providers is tested (``tests/node/test_runtime.py``)."""

    def __init__(self, ort, graph: Path, opts, providers: list[str], runner: _OrtRunner) -> None:  # noqa: ANN001
        self._ort = ort
        self._graph, self._opts, self._providers = graph, opts, providers
        self._sess = None  # made on first use: a second session of the task, with graph capture on
        self.runner = runner
        self._slots: weakref.WeakKeyDictionary[DeviceValue, dict[int, _Capture]] = weakref.WeakKeyDictionary()
        self._next_id = 1
        self._lock = threading.Lock()

    def step(self, feeds: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        ort, task, kv = self._ort, self.runner.task, self.runner.kv
        assert kv is not None
        with self._lock:
            if self._sess is None:
                self._sess = ort.InferenceSession(str(self._graph), self._opts,
                                                  providers=graph_capture_providers(self._providers))
        specs = {s.name: s for s in task.inputs}
        step = kv.step_size(feeds)
        lengths = {n: np.asarray(state[n], np.int64) if n in state else np.zeros(specs[n].shape, np.int64)
                   for n in kv.lengths}
        kv.needed(lengths, step)
        bucket = step_bucket(step, kv.capacity - kv.length(lengths))
        caches: dict[str, DeviceValue] = {}
        for name, axis in kv.caches.items():
            held = state.get(name)
            if not isinstance(held, DeviceValue):  # a new session (or a cache handed over as an array)
                shape = [kv.capacity if i == axis else int(d) for i, d in enumerate(specs[name].shape)]
                value = np.zeros(shape, specs[name].dtype)
                if held is not None:
                    value[tuple(slice(0, n) for n in np.shape(held))] = np.asarray(held)
                held = DeviceValue(ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0), value.dtype)
            caches[name] = held
        seq_dim = specs[kv.step[0]].shape[kv.step[1]]
        values = {**{k: _pad_axes(np.asarray(v), specs[k].shape, seq_dim, bucket) for k, v in feeds.items()},
                  **lengths}
        per_session = self._slots.setdefault(next(iter(caches.values())), {})
        slot = per_session.get(bucket)
        if slot is None:
            slot = per_session[bucket] = self._bind(caches, values, seq_dim, bucket)
        for name, value in values.items():
            slot.inputs[name].update_inplace(np.ascontiguousarray(value))
        try:
            self._sess.run_with_iobinding(slot.binding, slot.options)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"task {task.index} failed: {exc}") from None
        done: dict[str, Any] = {}
        for spec in task.outputs:
            if spec.name not in task.state.values():
                value = slot.outputs[spec.name].numpy()
                axes = [i for i, d in enumerate(spec.shape) if d == seq_dim]
                done[spec.name] = value[tuple(slice(0, step) if i in axes else slice(None) for i in range(value.ndim))]
        # Lengths advance on the host by the positions asked for (a padded bucket wrote masked slots).
        new_state: dict[str, Any] = {**caches, **{n: v + step for n, v in lengths.items()}}
        done.update({present: new_state[past] for past, present in task.state.items()})
        return done, new_state

    def _bind(self, caches: Mapping[str, DeviceValue], values: Mapping[str, np.ndarray], seq_dim: str,
              bucket: int) -> _Capture:
        ort, task, sess = self._ort, self.runner.task, self._sess
        assert sess is not None
        binding = sess.io_binding()
        inputs, outputs = {}, {}
        for name, value in values.items():
            inputs[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0)
            binding.bind_ortvalue_input(name, inputs[name])
        for past, cache in caches.items():
            binding.bind_ortvalue_input(past, cache.value)
            binding.bind_ortvalue_output(task.state[past], cache.value)  # in place: the update writes by position
        for spec in task.outputs:
            if spec.name in task.state.values() and spec.name not in {task.state[p] for p in caches}:
                binding.bind_output(spec.name, "cpu")  # a length: advanced on the host instead
            elif spec.name not in task.state.values():
                shape = [bucket if d == seq_dim else int(d) for d in spec.shape]
                outputs[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(spec.dtype), "cuda", 0)
                binding.bind_ortvalue_output(spec.name, outputs[spec.name])
        options = ort.RunOptions()
        with self._lock:
            options.add_run_config_entry("gpu_graph_id", str(self._next_id))
            self._next_id += 1
        return _Capture(binding, inputs, outputs, options)


@dataclass
class _Capture:
    binding: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    options: Any


class DeviceValue:
    """A KV cache kept on the device between a session's calls (an ``OrtValue``), sized like an array."""

    def __init__(self, value: Any, dtype: np.dtype) -> None:
        self.value = value
        self.shape = tuple(value.shape())
        self.dtype = np.dtype(dtype)
        self.nbytes = int(value.tensor_size_in_bytes())
        self.ndim = len(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.value.numpy().astype(dtype or self.dtype, copy=False)


def _pad_axes(value: np.ndarray, shape: Sequence[int | str], dim: str, size: int) -> np.ndarray:
    """``value`` zero-padded to ``size`` along the axes its spec names ``dim``."""
    pad = [(0, size - value.shape[i]) if d == dim else (0, 0) for i, d in enumerate(shape)]
    return np.pad(value, pad) if any(p[1] for p in pad) else value
