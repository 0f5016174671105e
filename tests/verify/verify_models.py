"""Small calibration models shared by the verification tests (imported by name: tests/verify is on sys.path)."""

from __future__ import annotations

import numpy as np
import onnx

from splitup.verify import calib_models as cm


def build(kind: str, seed: int, **cheat) -> onnx.ModelProto:
    if kind == "mlp":
        return cm.mlp(seed, hidden=96, layers=3, **cheat)
    return cm.attention_block(seed, seq=8, d_model=32, heads=4, d_ff=64, **cheat)


def skip_one_layer(kind: str) -> dict:
    return {"skip_layer": 2} if kind == "mlp" else {"skip": "ffn"}


def input_for(model: onnx.ModelProto, seed: int, scale: float = 1.0) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)
