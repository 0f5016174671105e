"""Models we did not write: a PyTorch module exported to ONNX, made acceptable to our validator.

The exporter knows which axes are dynamic but not how large they may get; our validator requires a
maximum for every symbolic dimension (``splitup.dim_max``), so the caller names them here. The
TorchScript exporter is used because it needs nothing beyond torch (the dynamo one needs onnxscript).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from splitup.graph.meta import DIM_MAX_KEY
from splitup.models.errors import ModelError

DEFAULT_OPSET = 17


def declare_dims(model: onnx.ModelProto, dim_max: Mapping[str, int]) -> onnx.ModelProto:
    """Record the maxima of the model's symbolic input dimensions; every one must be named."""
    symbolic = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    missing = sorted(symbolic - set(dim_max))
    if missing:
        raise ModelError(f"give a maximum for the symbolic dimensions {missing}")
    props = {p.key: p.value for p in model.metadata_props}
    props[DIM_MAX_KEY] = json.dumps({k: int(v) for k, v in sorted(dim_max.items()) if k in symbolic}, sort_keys=True)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    return model


def export_torch(
    module: Any,
    example_inputs: Sequence[Any],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    dim_max: Mapping[str, int] | None = None,
    opset: int = DEFAULT_OPSET,
    validate: bool = True,
) -> onnx.ModelProto:
    """Export ``module`` (a ``torch.nn.Module`` in eval mode) to an in-memory ONNX model with its
    weights inside, declare the dynamic axes' maxima and run our validator on it."""
    try:
        import torch
    except ImportError as exc:
        raise ModelError("the PyTorch import path needs the torch extra: pip install 'splitup[torch]'") from exc
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, not broken
        torch.onnx.export(
            module, tuple(example_inputs), buf, dynamo=False, input_names=list(input_names),
            output_names=list(output_names), dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()},
            opset_version=opset, do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    declare_dims(model, dim_max or {})
    if validate:
        from splitup.graph.validate import validate_model

        validate_model(model)
    return model
