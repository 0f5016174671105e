"""The float32 form of a half-precision graph (the token-choosing task's): same model, float32 arithmetic,
interface kept where asked, oversized weight matrices stored in column blocks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from splitup.graph import upcast, zoo
from splitup.graph.precision import HALF_TYPES

IDS = np.array([[5, 17, 3, 250, 9]], np.int64)


def _run(model: onnx.ModelProto) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input_ids": IDS})[0]


def _half() -> onnx.ModelProto:
    return zoo.build("tiny-llama", seed=0, dtype="fp16", kv_cache=False)


def test_float32_arithmetic_computes_the_same_model_in_float32():
    half = _half()
    full, _ = upcast.float32_arithmetic(half)
    assert not any(t.data_type in HALF_TYPES for t in full.graph.initializer)
    a, b = _run(half), _run(full)
    assert b.dtype == np.float32 and a.dtype == np.float16
    assert np.abs(a.astype(np.float64) - b).max() < 0.02 * np.abs(b).max()
    kept, _ = upcast.float32_arithmetic(half, keep_interface=True)
    assert [o.type.tensor_type.elem_type for o in kept.graph.output] == [
        o.type.tensor_type.elem_type for o in half.graph.output]
    assert _run(kept).dtype == np.float16


def test_a_matrix_over_the_tensor_limit_is_stored_in_column_blocks():
    full, _ = upcast.float32_arithmetic(_half())
    split = onnx.ModelProto()
    split.CopyFrom(full)
    head = next(t for t in split.graph.initializer if t.name == "lm_head.weight")
    limit = 4 * int(np.prod(head.dims)) // 3  # forces three blocks
    upcast._split_wide_matmuls(split.graph, None, limit)
    names = {t.name for t in split.graph.initializer}
    assert "lm_head.weight" not in names and {f"lm_head.weight.cols{i}" for i in range(3)} <= names
    assert all(4 * int(np.prod(t.dims)) <= limit for t in split.graph.initializer if t.name.startswith("lm_head"))
    a, b = _run(full), _run(split)
    assert np.allclose(a, b, rtol=1e-6, atol=1e-6)
