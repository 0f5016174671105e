"""TensorFlow and Keras models in: a Keras model object, a ``.keras`` file or a SavedModel directory
becomes a validated ONNX graph with the maxima of its dynamic dimensions declared, ready for
``splitup plan`` like any other model.

Two routes, chosen by what is installed and what the source is:
- **Keras 3 on the torch backend** (``KERAS_BACKEND=torch``, extras ``keras`` + ``torch``): the model is
  exported by ``torch.export`` (the dynamo ONNX exporter, onnxscript) with its dynamic dims declared.
  No TensorFlow needed (torch is already our reference engine's extra), so this is the lighter route
  for ``.keras`` files and Keras models; SavedModels still need TensorFlow.
- **TensorFlow + tf2onnx** (extra ``tensorflow``): any Keras model on the TensorFlow backend, and every
  SavedModel (only TensorFlow can load one), converted by tf2onnx from the model's traced function.

Either way the graph is normalised for SplitUp: inputs and outputs get readable names, every unknown
input dimension gets a declared name (``batch`` first, then ``d1``, ``d2``... unless ``dim_names`` says
otherwise) whose maximum is recorded under ``splitup.dim_max``, opset imports that no node uses (tf2onnx
adds ``ai.onnx.ml``) are dropped, and the validator runs on the result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from splitup.models.errors import MissingExtraError, ModelError

DEFAULT_OPSET = 17


def _keras() -> Any:
    try:
        import keras
    except ImportError as exc:
        raise MissingExtraError("importing a Keras model needs Keras 3: pip install 'splitup[tensorflow]' "
                                "(or 'splitup[keras,torch]' with KERAS_BACKEND=torch)", "tensorflow") from exc
    return keras


def _tf() -> tuple[Any, Any]:
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise MissingExtraError("this route needs TensorFlow and tf2onnx: pip install 'splitup[tensorflow]'",
                                "tensorflow") from exc
    return tf, tf2onnx


def is_savedmodel(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def import_tensorflow(source: Any, *, dim_max: Mapping[str, int], dim_names: Mapping[str, Sequence[str]] | None = None,
                      opset: int = DEFAULT_OPSET, validate: bool = True) -> onnx.ModelProto:
    """``source``: a Keras model, a ``.keras`` file or a SavedModel directory. ``dim_max`` gives the
    maximum of every named dynamic dimension (``{"batch": 8, "seq": 128}``); ``dim_names`` names an
    input's dimensions (``{"tokens": ["batch", "seq"]}``), static ones ignored."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if is_savedmodel(path):
            model, names = _from_savedmodel(path, opset)
        elif path.suffix == ".keras" and path.is_file():
            keras = _keras()
            try:
                loaded = keras.models.load_model(path, compile=False, safe_mode=True)
            except Exception as exc:  # a damaged or foreign file: Keras says what, in many types
                raise ModelError(f"{path}: Keras cannot load it: {type(exc).__name__}: {exc}") from None
            model, names = _from_keras(loaded, opset, dim_names or {}, dim_max)
        else:
            raise ModelError(f"{path}: not a .keras file nor a SavedModel directory (saved_model.pb)")
    else:
        model, names = _from_keras(source, opset, dim_names or {}, dim_max)
    model = _normalise(model, names, dim_names or {}, dim_max)
    if validate:
        from splitup.graph.validate import validate_model

        validate_model(model)
    return model


def _from_keras(model: Any, opset: int, dim_names: Mapping[str, Sequence[str]],
                dim_max: Mapping[str, int]) -> tuple[onnx.ModelProto, list[str]]:
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise ModelError(f"not a Keras model: {type(model).__name__}")
    names = [t.name for t in model.inputs]
    if keras.backend.backend() == "torch":
        return _from_keras_torch(model, names, dim_names, dim_max, opset), names
    tf, tf2onnx = _tf()
    spec = [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(model.inputs, names, strict=True)]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    return proto, names


def _from_keras_torch(model: Any, names: list[str], dim_names: Mapping[str, Sequence[str]],
                      dim_max: Mapping[str, int], opset: int) -> onnx.ModelProto:
    """Through torch.export (the dynamo exporter), with the dynamic dims declared: Keras's own
    ``export(format="onnx")`` traces with TorchScript whenever a dim is dynamic, which bakes the traced
    sizes into shape arithmetic (MultiHeadAttention's reshapes fail to export at all)."""
    import numpy as np
    import torch

    from splitup.models.onnx_import import _export_dynamo

    class Call(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *xs: Any) -> Any:
            return self.model(list(xs) if len(xs) > 1 else xs[0], training=False)

    shared: dict[str, Any] = {}  # one torch Dim per declared name, so inputs that share a dim stay equal
    specs, samples = [], []
    for t, name in zip(model.inputs, names, strict=True):
        dims = _dim_names(name, [d is not None for d in t.shape], dim_names)
        missing = sorted({d for d in dims if d is not None} - set(dim_max))
        if missing:
            raise ModelError(f"give a maximum for the dynamic dims {missing} of input {name!r}: "
                             f"import_tensorflow(..., dim_max={{" + ", ".join(f"{d!r}: N" for d in missing) + "})")
        spec = {}
        for i, d in enumerate(dims):
            if d is not None and dim_max[d] > 1:  # a maximum of 1 is a static 1
                spec[i] = shared.setdefault(d, torch.export.Dim(f"dim{len(shared)}", min=1, max=dim_max[d]))
        specs.append(spec)
        # a traced size of 1 would be specialised as a constant: trace at 2 where the maximum allows
        shape = [d if d is not None else min(2, dim_max[dims[i] or ""]) for i, d in enumerate(t.shape)]
        samples.append(torch.from_numpy(np.zeros(shape, dtype=str(t.dtype))))
    # forward takes *xs, so torch.export sees one tuple argument: its dynamic shapes are one tuple too
    args = dict(input_names=list(names), output_names=[f"output_{k}" for k in range(len(model.outputs))],
                dynamic_shapes=(tuple(specs),))
    try:
        return _export_dynamo(torch, Call().eval(), samples, args, opset)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export's failures come in many types
        raise ModelError(f"torch.export could not export the Keras model: {type(exc).__name__}: {exc}; the "
                         f"TensorFlow route (pip install 'splitup[tensorflow]', KERAS_BACKEND=tensorflow) "
                         f"converts through tf2onnx instead") from None


def _dim_names(name: str, static: Sequence[bool], dim_names: Mapping[str, Sequence[str]]) -> list[str | None]:
    """The declared name of each dynamic dim of an input (None for a static one): the caller's
    ``dim_names`` first, else ``batch`` for the first dim, then ``d1``, ``d2``..."""
    wanted = list(dim_names.get(name, ()))
    out: list[str | None] = []
    extra = 0
    for i, fixed in enumerate(static):
        if fixed:
            out.append(None)
        elif i < len(wanted):
            out.append(wanted[i])
        elif i == 0:
            out.append("batch")
        else:
            extra += 1
            out.append(f"d{extra}")
    return out


def _from_savedmodel(path: Path, opset: int) -> tuple[onnx.ModelProto, list[str]]:
    tf, tf2onnx = _tf()
    loaded = tf.saved_model.load(str(path))
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ModelError(f"{path}: the SavedModel has no 'serving_default' signature "
                         f"(it has {sorted(loaded.signatures)})")
    args, kwargs = sig.structured_input_signature
    specs = list(args) + [kwargs[k] for k in sorted(kwargs)]
    names = [s.name for s in specs]
    fn = tf.function(lambda *xs: sig(**dict(zip(names, xs, strict=True))), input_signature=specs)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset)
    return proto, names


def _normalise(model: onnx.ModelProto, names: Sequence[str], dim_names: Mapping[str, Sequence[str]],
               dim_max: Mapping[str, int]) -> onnx.ModelProto:
    from splitup.models.onnx_import import declare_dims

    g = model.graph
    rename: dict[str, str] = {}
    feeds = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    if len(feeds) == len(names):
        rename.update({i.name: n for i, n in zip(feeds, names, strict=True)})
    for k, o in enumerate(g.output):
        # exporters name outputs after internal nodes ("Identity:0", "71"): give them stable names
        clean = o.name.split(":")[0].replace("/", "_").rsplit("Identity", 1)[0].strip("_")
        if not clean or clean.isdigit() or clean in rename.values():
            clean = f"output_{k}"
        rename[o.name] = clean
    for vi in list(g.input) + list(g.output):
        vi.name = rename.get(vi.name, vi.name)
    for node in g.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    for vi in feeds:
        dims = vi.type.tensor_type.shape.dim
        for d, declared in zip(dims, _dim_names(vi.name, [d.HasField("dim_value") for d in dims], dim_names),
                               strict=True):
            if declared is not None:
                d.dim_param = declared
    # outputs' symbolic dims are inferred again by the validator; stale exporter names would only mislead
    for vi in g.output:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.ClearField("dim_param")
    _replace_erfc(g)
    used = {n.domain for n in g.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return declare_dims(model, dim_max)


def _replace_erfc(g: onnx.GraphProto) -> None:
    """tf2onnx writes TensorFlow's Erfc (exact GELU) as an ``Erfc`` node, which is no ONNX operator:
    rewrite it as 1 - Erf(x), the same function in standard ops."""
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type != "Erfc" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        one, erf = f"{n.output[0]}__one", f"{n.output[0]}__erf"
        g.initializer.append(onnx.helper.make_tensor(one, onnx.TensorProto.FLOAT, [], [1.0]))
        nodes.append(onnx.helper.make_node("Erf", [n.input[0]], [erf], name=f"{n.name}__erf"))
        nodes.append(onnx.helper.make_node("Sub", [one, erf], [n.output[0]], name=n.name))
    del g.node[:]
    g.node.extend(nodes)

