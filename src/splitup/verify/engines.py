"""Run one ONNX model on the engines an honest node or validator may use, for tolerance calibration.

Every runner takes a model and float32 feeds and returns float32 outputs by name, so their results
are directly comparable. The differences between them are the honest noise the comparison rule must
absorb: graph optimisations (fusions change summation order), thread counts (parallel reductions
split differently), float64 accumulation (the exact arbiter's view), and tinygrad's own kernels.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from splitup.runtime.ort import EXACT_QUANT_ACCURACY, QUANT_ACCURACY_KEY
from splitup.verify.calib_models import to_float64

Outputs = dict[str, np.ndarray]
Runner = Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], Outputs]

_ORT_LEVELS = ("disable", "basic", "extended", "all")


def ort_session(model: onnx.ModelProto, *, level: str = "all", threads: int = 1):  # noqa: ANN201 - InferenceSession
    """An onnxruntime CPU session at one optimisation level and intra-op thread count."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Spinning worker threads burn the shared cores while they wait; calibration needs no latency.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The fused quantised kernel at the accuracy nodes run (float32 accumulation), as the runtime sets it.
    opts.add_session_config_entry(QUANT_ACCURACY_KEY, EXACT_QUANT_ACCURACY)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, level: str = "all",
                    threads: int = 1) -> Outputs:
    sess = ort_session(model, level=level, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def run_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Outputs:
    """onnx.reference in float32: numpy's kernels, a different summation order from onnxruntime's."""
    from onnx.reference import ReferenceEvaluator

    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, dict(feeds)), strict=True))


def run_float64(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Outputs:
    """The model evaluated in float64 by onnx.reference, rounded back to float32 at the end."""
    wide = {k: np.asarray(v, dtype=np.float64) if np.asarray(v).dtype == np.float32 else v
            for k, v in feeds.items()}
    out = run_reference(to_float64(model), wide)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


def tinygrad_available() -> bool:
    """tinygrad is importable and has a device: CPU needs a clang, PYTHON (slow) always works."""
    _configure_tinygrad()
    try:
        import tinygrad.nn.onnx  # noqa: F401
    except Exception:  # noqa: BLE001 - any import-time failure means "not usable here"
        return False
    return True


def _configure_tinygrad() -> None:
    # tinygrad's CPU backend shells out to `clang`; Debian installs it versioned (clang-19).
    if "DEV" in os.environ:
        return
    cc = os.environ.get("CC") or next(
        (c for c in ("clang", "clang-21", "clang-20", "clang-19", "clang-18") if shutil.which(c)), None
    )
    if cc:
        os.environ.setdefault("CC", cc)
        os.environ["DEV"] = "CPU"
    else:
        os.environ["DEV"] = "PYTHON"


def tinygrad_session(model: onnx.ModelProto) -> Callable[[Mapping[str, np.ndarray]], Outputs]:
    """tinygrad's ONNX runner for ``model``, one per set of input shapes (it binds symbolic dimensions on
    its first call), run on the runtime's one tinygrad thread; the serialized model is written once and
    removed with the returned function."""
    _configure_tinygrad()
    from splitup.runtime.tiny import on_tinygrad_thread

    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "model.onnx"
    path.write_bytes(model.SerializeToString())
    runners: dict[tuple, Callable] = {}

    def run(feeds: Mapping[str, np.ndarray]) -> Outputs:
        def call() -> Outputs:
            from tinygrad import Tensor
            from tinygrad.nn.onnx import OnnxRunner

            key = tuple(sorted((k, np.shape(v)) for k, v in feeds.items()))
            if key not in runners:
                runners[key] = OnnxRunner(str(path))
            out = runners[key]({k: Tensor(np.ascontiguousarray(v)) for k, v in feeds.items()})
            return {k: v.numpy() for k, v in out.items()}

        return on_tinygrad_thread(call)

    weakref.finalize(run, tmp.cleanup)
    return run


def run_tinygrad(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Outputs:
    return tinygrad_session(model)(feeds)


def honest_engines(*, with_tinygrad: bool = False) -> dict[str, Runner]:
    """The honest configurations compared in calibration, by name."""
    engines: dict[str, Runner] = {}
    for level in ("disable", "all"):
        for threads in (1, 2):
            engines[f"ort-{level}-t{threads}"] = (
                lambda m, f, level=level, threads=threads: run_onnxruntime(m, f, level=level, threads=threads)
            )
    engines["onnx-reference-f32"] = run_reference
    engines["onnx-reference-f64"] = run_float64
    if with_tinygrad and tinygrad_available():
        engines["tinygrad"] = run_tinygrad
    return engines
