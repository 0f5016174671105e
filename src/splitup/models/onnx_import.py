"""Models we did not write: a PyTorch module exported to ONNX, made acceptable to our validator.

The exporter knows which axes are dynamic but not how large they may get; our validator requires a
maximum for every symbolic dimension (``splitup.dim_max``), so the caller names them here. The
TorchScript exporter is the default because it needs nothing beyond torch and takes well under a second
for a small model; the dynamo one (``onnxscript``) is used when asked, or when TorchScript fails.
``export_transformers`` wraps a Hugging Face model (attention mask, KV cache as state) for either.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from splitup.graph.meta import DIM_MAX_KEY, STATE_KEY, VALUE_MAX_KEY, declared_json
from splitup.models.errors import ModelError

DEFAULT_OPSET = 17


def declare_dims(model: onnx.ModelProto, dim_max: Mapping[str, int]) -> onnx.ModelProto:
    """Record the maxima of the model's symbolic input dimensions; every one must be named."""
    symbolic = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    missing = sorted(symbolic - set(dim_max))
    if missing:
        example = ", ".join(f'"{d}": N' for d in missing)
        raise ModelError(f"give a maximum for the symbolic dimensions {missing}: declare_dims(model, {{{example}}}) "
                         f"or export_torch(..., dim_max={{{example}}}); they are stored as a JSON object in "
                         f"metadata_props[{DIM_MAX_KEY!r}]")
    props = {p.key: p.value for p in model.metadata_props}
    props[DIM_MAX_KEY] = json.dumps({k: int(v) for k, v in sorted(dim_max.items()) if k in symbolic}, sort_keys=True)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    return model


def declare_values(model: onnx.ModelProto, value_max: Mapping[str, Any]) -> onnx.ModelProto:
    """Record the range of each named graph input's values, so outputs sized by them (Expand, Tile, Resize,
    Pad, ConstantOfShape, Range, ...) can be bounded; a node refuses any feed outside it. Each range is
    ``N`` (every element 0..N), ``(lo, hi)`` (every element lo..hi) or ``{"max": [...], "min": [...]}`` (one
    per element, ``min`` zeros by default). Merges with ranges already declared; the validator checks them."""
    declared = declared_json(model, VALUE_MAX_KEY) or {}
    if not isinstance(declared, dict):
        raise ModelError(f"the model's {VALUE_MAX_KEY} metadata is not a map of input names to ranges")
    props = {p.key: p.value for p in model.metadata_props}
    declared.update({k: list(v) if isinstance(v, Sequence) else v for k, v in value_max.items()})
    props[VALUE_MAX_KEY] = json.dumps(declared, sort_keys=True)
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
    opset: int | None = None,
    dynamo: bool | None = None,
    state: Mapping[str, str] | None = None,
    validate: bool = True,
) -> onnx.ModelProto:
    """Export ``module`` (a ``torch.nn.Module``; put in eval mode here) to an in-memory ONNX model with its
    weights inside, declare the dynamic axes' maxima (``dim_max``) and run our validator on it.

    ``dynamo``: False uses the TorchScript exporter (fast, needs only torch), True the dynamo exporter
    (needs ``onnxscript``), None tries TorchScript and falls back to dynamo when TorchScript cannot
    export the module and onnxscript is installed. ``state`` pairs KV-cache inputs with the outputs that
    replace them (``{"past.0.key": "present.0.key"}``), so plans keep each layer's cache on its node.
    """
    try:
        import torch
    except ImportError as exc:
        raise ModelError("the PyTorch import path needs the torch extra: pip install 'splitup[torch]'") from exc
    missing = sorted({d for axes in (dynamic_axes or {}).values() for d in axes.values()} - set(dim_max or {}))
    if missing:
        raise ModelError(f"give a maximum for the dynamic dims {missing}: export_torch(..., dim_max={{"
                         + ", ".join(f"{d!r}: N" for d in missing) + "})")
    module.eval()  # exporting in training mode would bake dropout in (and export restores the mode after)
    args = dict(input_names=list(input_names), output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()})
    if dynamo:
        model = _export_dynamo(torch, module, example_inputs, args, opset)
    else:
        try:
            model = _export_torchscript(torch, module, example_inputs, args, opset or DEFAULT_OPSET)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types
            if dynamo is False or not _has_onnxscript():
                hint = "" if _has_onnxscript() else "; installing onnxscript enables the dynamo exporter"
                raise ModelError(f"torch.onnx could not export the module: {type(exc).__name__}: {exc}"
                                 f"{hint}") from None
            model = _export_dynamo(torch, module, example_inputs, args, opset)
    declare_dims(model, dim_max or {})
    if state:
        props = {p.key: p.value for p in model.metadata_props}
        props[STATE_KEY] = json.dumps(dict(state), sort_keys=True)
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
    if validate:
        from splitup.graph.validate import validate_model

        validate_model(model)
    return model


def _has_onnxscript() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxscript") is not None


def _export_torchscript(torch: Any, module: Any, example_inputs: Sequence[Any], args: dict[str, Any],
                        opset: int) -> onnx.ModelProto:
    _register_symbolics(torch)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, not broken; tracer warnings
        torch.onnx.export(module, tuple(example_inputs), buf, dynamo=False, opset_version=opset,
                          do_constant_folding=True, **args)
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(torch: Any, module: Any, example_inputs: Sequence[Any], args: dict[str, Any],
                   opset: int | None) -> onnx.ModelProto:
    if not _has_onnxscript():
        raise ModelError("the dynamo exporter needs onnxscript: pip install 'splitup[torch]'")
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(example_inputs), dynamo=True, opset_version=max(opset or 18, 18),
                                    verbose=False, **args)
    return program.model_proto


_registered = False


def _register_symbolics(torch: Any) -> None:
    """TorchScript symbolics for aten ops that current ``transformers`` uses and torch does not export.

    ``aten::diff`` (first difference, used to detect packed sequences when no attention mask is given):
    ``x[1:] - x[:-1]`` along the dim after concatenating ``prepend`` / ``append``: Concat, two Slices, Sub.
    ``aten::cumsum`` of bool (the same detection sums a bool mask): cast to int64 first, as torch does.
    """
    global _registered
    if _registered:
        return
    from torch.onnx import symbolic_helper as sh

    def diff(g: Any, x: Any, n: Any, dim: Any, prepend: Any, append: Any) -> Any:
        if sh._get_const(n, "i", "n") != 1:
            return sh._unimplemented("diff", "only n=1")
        axis_i = sh._get_const(dim, "i", "dim")
        parts = [t for t in (prepend, x, append) if not sh._is_none(t)]
        if len(parts) > 1:
            x = g.op("Concat", *parts, axis_i=axis_i)
        axis = g.op("Constant", value_t=torch.tensor([axis_i]))
        one, zero = g.op("Constant", value_t=torch.tensor([1])), g.op("Constant", value_t=torch.tensor([0]))
        end, last = g.op("Constant", value_t=torch.tensor([2**62])), g.op("Constant", value_t=torch.tensor([-1]))
        return g.op("Sub", g.op("Slice", x, one, end, axis), g.op("Slice", x, zero, last, axis))

    def cumsum(g: Any, x: Any, dim: Any, dtype: Any) -> Any:
        from torch.onnx import symbolic_opset11

        if x.type().scalarType() == "Bool":  # torch sums bools as int64; ONNX CumSum takes no bool
            x = g.op("Cast", x, to_i=onnx.TensorProto.INT64)
        return symbolic_opset11.cumsum(g, x, dim, dtype)

    torch.onnx.register_custom_op_symbolic("aten::diff", diff, 9)
    torch.onnx.register_custom_op_symbolic("aten::cumsum", cumsum, 11)
    _registered = True


def export_transformers(
    model: Any,
    *,
    max_batch: int,
    max_seq: int,
    attention_mask: bool = True,
    kv_cache: bool = False,
    max_past: int | None = None,
    dynamo: bool | None = None,
    validate: bool = True,
) -> onnx.ModelProto:
    """Export a Hugging Face ``transformers`` model (a causal LM or an encoder) with named, bounded inputs.

    Inputs: ``input_ids`` (batch, seq), with ``attention_mask`` (batch, past+seq) when asked, and with
    ``kv_cache`` the cache ``past.{i}.key`` / ``past.{i}.value`` (batch, kv_heads, past, head_dim).
    Outputs: ``logits`` (or ``last_hidden_state``) and ``present.{i}.key`` / ``.value``, declared as state.
    """
    import torch

    layers = model.config.num_hidden_layers
    causal = hasattr(model, "lm_head") or model.config.is_decoder
    if kv_cache and not causal:
        raise ModelError("a KV cache needs a causal (decoder) model")
    wrapper = _make_wrapper_class()(model, attention_mask, kv_cache, layers, causal)
    batch, seq, past = 1, min(4, max_seq), 3 if kv_cache else 0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    inputs: list[Any] = [ids]
    names, dyn = ["input_ids"], {"input_ids": {0: "batch", 1: "seq"}}
    dims = {"batch": max_batch, "seq": max_seq}
    if attention_mask:
        inputs.append(torch.ones(batch, past + seq, dtype=torch.int64))
        names.append("attention_mask")
        dyn["attention_mask"] = {0: "batch", 1: "total" if kv_cache else "seq"}
    state: dict[str, str] = {}
    out_names = ["logits" if causal else "last_hidden_state"]
    if kv_cache:
        cfg = model.config
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        limit = max_past or getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
        dims |= {"past": limit} | ({"total": limit + max_seq} if attention_mask else {})
        for i in range(layers):
            for kind in ("key", "value"):
                # the cache in the model's own precision (a half-precision model attends in half)
                inputs.append(torch.randn(batch, kv_heads, past, head_dim, generator=g).to(model.dtype))
                names.append(f"past.{i}.{kind}")
                dyn[f"past.{i}.{kind}"] = {0: "batch", 2: "past"}
                out_names.append(f"present.{i}.{kind}")
                state[f"past.{i}.{kind}"] = f"present.{i}.{kind}"
    dyn[out_names[0]] = {0: "batch", 1: "seq"}
    return export_torch(wrapper, inputs, input_names=names, output_names=out_names, dynamic_axes=dyn, dim_max=dims,
                        dynamo=dynamo, state=state or None, validate=validate)


def _make_wrapper_class() -> type:
    import torch

    class HFWrapper(torch.nn.Module):
        """Flat tensors in and out, so every input and output has a name the plan can route."""

        def __init__(self, model: Any, mask: bool, kv: bool, layers: int, causal: bool) -> None:
            super().__init__()
            self.model, self.mask, self.kv, self.layers, self.causal = model, mask, kv, layers, causal

        def forward(self, ids: Any, *rest: Any) -> Any:
            mask = rest[0] if self.mask else None
            past = rest[1:] if self.mask else rest
            if mask is None and self.causal:
                # "No mask" made explicit: without one, transformers looks for packed sequences in the
                # position ids (aten::diff, CumSum of bool), which has no valid ONNX form.
                total = ids.shape[1] + (past[0].shape[2] if past else 0)
                mask = torch.ones((ids.shape[0], total), dtype=torch.int64)
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if self.kv:
                from transformers import DynamicCache

                cache = DynamicCache(config=self.model.config)
                for i in range(self.layers):
                    cache.update(past[2 * i], past[2 * i + 1], i)
                # transformers >= 5.x names it ``cache``; older releases ``past_key_values``.
                params = inspect.signature(self.model.forward).parameters
                kwargs |= {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
            elif hasattr(self.model.config, "use_cache"):
                kwargs["use_cache"] = False
            out = self.model(**kwargs)
            first = out.logits if hasattr(out, "logits") else out.last_hidden_state
            if not self.kv:
                return first
            flat = []
            cache = getattr(out, "cache", None) or out.past_key_values
            for layer in cache.layers:
                flat += [layer.keys, layer.values]
            return (first, *flat)

    return HFWrapper
