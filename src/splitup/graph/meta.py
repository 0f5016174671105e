"""Graph metadata conventions and ONNX element types: the constants the builder, the validator and the
shape code all read, kept below all three so that none of them imports another for a name.

- symbolic input dimensions are strings; their maxima go to ``metadata_props[DIM_MAX_KEY]``;
- the values of shape-giving integer (or scale-giving float) inputs get a declared range in
  ``metadata_props[VALUE_MAX_KEY]`` (``{"new_shape": 64, "pads": [-2, 8]}``: a number N means every element
  is in 0..N, a pair [lo, hi] every element in lo..hi), so the outputs they size can be bounded;
- stateful inputs (KV cache) are paired with the outputs that replace them in ``metadata_props[STATE_KEY]``
  (``{"past.0.key": "present.0.key", ...}``).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto

from splitup import jsonparse
from splitup.graph.errors import MalformedGraph, UnsupportedDtype

DIM_MAX_KEY = "splitup.dim_max"
VALUE_MAX_KEY = "splitup.value_max"
STATE_KEY = "splitup.state"
#: Where the task that chooses tokens computes in float32 in a half-precision plan: "head" or "task"
#: (splitup.graph.upcast.token_fp32_form).
TOKEN_FP32_KEY = "splitup.token_fp32"

# Every ONNX element type a task may carry, by its numpy / ml_dtypes name (the names safetensors and the
# engines use). Strings (no static size), complex128 and the sub-byte packed types (no safetensors form)
# are absent.
ONNX_DTYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
    TensorProto.INT16: "int16",
    TensorProto.INT8: "int8",
    TensorProto.UINT64: "uint64",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT8: "uint8",
    TensorProto.BOOL: "bool",
    TensorProto.FLOAT8E4M3FN: "float8_e4m3fn",
    TensorProto.FLOAT8E5M2: "float8_e5m2",
    TensorProto.FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    TensorProto.FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
    TensorProto.COMPLEX64: "complex64",
}
DTYPE_ONNX: dict[str, int] = {v: k for k, v in ONNX_DTYPE_NAMES.items()}
# The numpy dtype of each name: bfloat16 and the float8 types come from ml_dtypes (onnx's own dependency).
NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(getattr(ml_dtypes, name, None) or name) for name in ONNX_DTYPE_NAMES.values()
}
# safetensors' codes for the same types (its numpy loader cannot read bfloat16 or float8: see node.wire).
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "C64": "complex64",
}


def dtype_of(elem_type: int, *, where: str) -> str:
    """The dtype name of an ONNX element type, or a typed refusal naming it (never a KeyError)."""
    name = ONNX_DTYPE_NAMES.get(elem_type)
    if name is None:
        label = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise UnsupportedDtype(
            f"element type {label} cannot cross a task boundary or be stored in a weight shard "
            f"(supported: {', '.join(sorted(DTYPE_ONNX))})", where=where)
    return name


def declared_json(model: onnx.ModelProto, key: str) -> object | None:
    """The JSON a graph declares under metadata ``key``; None when absent. Given twice or not JSON is
    ``MalformedGraph``."""
    values = [p.value for p in model.metadata_props if p.key == key]
    if not values:
        return None
    if len(values) > 1:
        raise MalformedGraph(f"metadata key {key} given more than once", where=key)
    try:
        return jsonparse.loads(values[0])
    except ValueError as exc:
        raise MalformedGraph(f"{key} is not valid JSON: {exc}", where=key) from None


def read_state(model: onnx.ModelProto) -> dict[str, str]:
    """The KV-cache pairs (past input -> present output) a graph declares under ``STATE_KEY``."""
    for p in model.metadata_props:
        if p.key == STATE_KEY:
            return dict(jsonparse.loads(p.value))
    return {}
