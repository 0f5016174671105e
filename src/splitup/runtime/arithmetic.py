"""What a node computes a task in, decided by its engine at load: half precision where the bundle allows it
and the device has the kernels, float32 otherwise.

A bundle declares what it allows by the precision it states (``TaskDefinition.precision``): a task stating
fp16 activations may be computed in fp16 or in float32 (higher precision is always honest, and validators
judge it under the fp16 class whoever ran what); a task stating float32 activations, among them every task
that chooses tokens, only in float32. GPU execution providers (CUDA, ROCm, DirectML) and tinygrad on a GPU
device run an fp16 bundle as it is; onnxruntime's CPU provider, which lacks most fp16 kernels (it would
cast around every op), and tinygrad on the CPU get the bundle converted to float32 arithmetic at load
(``splitup.graph.upcast``: interface types kept, weights cast once, which the engine folds into a float32
copy: twice the fp16 weights' memory on such a node). The runner's ``arithmetic`` is what the node
declares in its transcripts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import onnx

from splitup.graph.precision import split_precision
from splitup.graph.upcast import float32_arithmetic
from splitup.partition.task import TaskDefinition

#: onnxruntime execution providers with float16 kernels for the ops a decoder uses.
HALF_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")
#: tinygrad devices that compute on the CPU (no fast float16 there).
CPU_DEVICES = ("CPU", "CLANG", "LLVM", "PYTHON", "NPY", "DISK")


def allows_half(task: TaskDefinition) -> bool:
    """Whether the bundle allows half-precision arithmetic: it states fp16 activations."""
    return split_precision(task.precision)[1] == "fp16"


def ort_device_arithmetic(providers: list[str]) -> str:
    """``fp16`` where onnxruntime's first (best) provider has float16 kernels, else ``fp32``."""
    return "fp16" if providers and providers[0] in HALF_PROVIDERS else "fp32"


def tinygrad_device_arithmetic(device: str) -> str:
    """``fp16`` on a tinygrad GPU device (``CUDA``, ``METAL``, ``AMD``, ``GPU``, ...), ``fp32`` on the CPU."""
    return "fp32" if device.split(":")[0].upper() in CPU_DEVICES else "fp16"


def arithmetic_for(task: TaskDefinition, device: str) -> str:
    """What a node whose device computes in ``device`` arithmetic runs ``task`` in."""
    return "fp16" if device == "fp16" and allows_half(task) else "fp32"


def converts(task: TaskDefinition, arithmetic: str) -> bool:
    """Whether the engine must convert the bundle: it states half precision, the node runs float32."""
    return arithmetic == "fp32" and allows_half(task)


def float32_graph(graph: Path) -> onnx.ModelProto:
    """The bundle's graph (external data not loaded) converted to float32 arithmetic, interface kept."""
    return float32_arithmetic(onnx.load(str(graph), load_external_data=False), keep_interface=True)[0]


def float32_copy(graph: Path, owner: object) -> Path:
    """``float32_graph`` written to a temporary directory beside links to the bundle's other files (its
    shard), for an engine that reads a path; removed when ``owner`` is collected."""
    tmp = Path(tempfile.mkdtemp(prefix="splitup-fp32-"))
    weakref.finalize(owner, shutil.rmtree, tmp, True)
    for f in graph.parent.iterdir():
        if f.name != graph.name and f.is_file():
            os.symlink(f.resolve(), tmp / f.name)  # external data resolves next to the graph
    out = tmp / graph.name
    onnx.save(float32_graph(graph), str(out))
    return out
