"""TensorFlow and Keras models in: a Keras model object, a ``.keras`` file or a SavedModel directory
becomes a validated ONNX graph with the maxima of its dynamic dimensions declared, ready for
``splitup plan`` like any other model.

Two routes, chosen by what is installed and what the source is:
- **Keras 3 on the torch backend** (``KERAS_BACKEND=torch``, extras ``keras`` + ``torch``): Keras exports
  the model through ``torch.onnx`` itself. No TensorFlow needed (torch is already our reference
  engine's extra), so this is the lighter route for ``.keras`` files and Keras models.
- **TensorFlow + tf2onnx** (extra ``tensorflow``): any Keras model on the TensorFlow backend, and every
  SavedModel (only TensorFlow can load one), converted by tf2onnx from the model's traced function.

Either way the graph is normalised for SplitUp: inputs and outputs get readable names, every unknown
input dimension gets a declared name (``batch`` first, then ``d1``, ``d2``... unless ``dim_names`` says
otherwise) whose maximum is recorded under ``splitup.dim_max``, opset imports that no node uses (tf2onnx
adds ``ai.onnx.ml``) are dropped, and the validator runs on the result.
"""

from __future__ import annotations

import os
import tempfile
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
            model, names = _from_keras(loaded, opset)
        else:
            raise ModelError(f"{path}: not a .keras file nor a SavedModel directory (saved_model.pb)")
    else:
        model, names = _from_keras(source, opset)
    model = _normalise(model, names, dim_names or {}, dim_max)
    if validate:
        from splitup.graph.validate import validate_model

        validate_model(model)
    return model


def _from_keras(model: Any, opset: int) -> tuple[onnx.ModelProto, list[str]]:
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise ModelError(f"not a Keras model: {type(model).__name__}")
    names = [t.name for t in model.inputs]
    if keras.backend.backend() == "torch":
        # Keras exports only a model that has run once (it traces the call): run it on zeros
        import numpy as np

        probe = [np.zeros([d or 1 for d in t.shape], dtype=str(t.dtype)) for t in model.inputs]
        model(probe if len(probe) > 1 else probe[0], training=False)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model.onnx"
            try:
                model.export(str(out), format="onnx", verbose=False)
            except Exception as exc:  # noqa: BLE001 - torch.onnx's failures come in many types
                raise ModelError(f"Keras could not export the model through torch.onnx: {type(exc).__name__}: "
                                 f"{exc}") from None
            return onnx.load(out), names
    tf, tf2onnx = _tf()
    spec = [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(model.inputs, names, strict=True)]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    return proto, names


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
        wanted = list(dim_names.get(vi.name, ()))
        extra = 0
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                continue
            if i < len(wanted):
                d.dim_param = wanted[i]
            elif i == 0:
                d.dim_param = "batch"
            else:
                extra += 1
                d.dim_param = f"d{extra}"
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

