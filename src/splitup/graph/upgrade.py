"""Old exporters: a model whose default-domain opset is below the validator's window is upgraded with
onnx's own version converter, on the side that plans the model (the user's machine), and the upgraded
graph is then validated like any other. Nodes never upgrade: the tasks they receive are written at the
upgraded opset, and a task below the window is refused there.

The converter is C++ that assumes a well-formed model, so it only sees one that parses, passes onnx's
checker, and imports no other domain; any refusal of the converter is a ``BadOpset`` naming the op.
"""

from __future__ import annotations

import onnx
from onnx import ModelProto

from splitup.graph.allowlist import DEFAULT_DOMAINS
from splitup.graph.errors import BadOpset
from splitup.graph.limits import Limits


def default_opset(model: ModelProto) -> int | None:
    return next((op.version for op in model.opset_import if op.domain in DEFAULT_DOMAINS), None)


def upgrade_opset(model: ModelProto, limits: Limits | None = None) -> ModelProto:
    """``model`` itself when its opset is inside the window (or the model is for ``validate_model`` to
    refuse for another reason), else an upgraded copy at the window's lowest opset."""
    limits = limits or Limits()
    version = default_opset(model)
    others = [op.domain for op in model.opset_import if op.domain not in DEFAULT_DOMAINS]
    if version is None or version >= limits.min_opset or others or not model.HasField("graph"):
        return model
    where = f"opset {version}"
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - ValidationError or a C++ error: either way not convertible
        raise BadOpset(f"opset {version} is below {limits.min_opset} and the model is not well-formed enough to "
                       f"upgrade: {str(exc).splitlines()[0][:200]}", where=where) from None
    try:
        upgraded = onnx.version_converter.convert_version(model, limits.min_opset)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/ConvertError per adapter
        raise BadOpset(f"opset {version} is below {limits.min_opset} and onnx's version converter cannot upgrade "
                       f"it: {str(exc).splitlines()[0][:200]}; re-export at opset {limits.min_opset} or later",
                       where=where) from None
    upgraded = _keep_scan8_batch(model, upgraded, version)
    # Some adapters change what callers feed (Scan 8 -> 9 drops the batch axis): such a model is not the
    # same model any more, and is refused rather than run with different inputs.
    for before, after, kind in ((model.graph.input, upgraded.graph.input, "input"),
                                (model.graph.output, upgraded.graph.output, "output")):
        changed = [b.name for b, a in zip(before, after, strict=False) if b.name != a.name or b.type != a.type]
        if changed or len(before) != len(after):
            raise BadOpset(f"opset {version} is below {limits.min_opset} and onnx's version converter changes the "
                           f"model's {kind}s when upgrading it; re-export at opset {limits.min_opset} or later",
                           where=f"graph {kind} {(changed or [''])[0]}")
    return upgraded


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _keep_scan8_batch(model: ModelProto, upgraded: ModelProto, version: int) -> ModelProto:
    """Scan 8 scans a batch of sequences, Scan 9 one: the converter drops the leading batch axis from the
    graph's inputs and outputs. With a static batch of 1 that axis carries no data, so the old interface is
    kept around the upgraded graph (``Squeeze`` each changed input, ``Unsqueeze`` each changed output); any
    other change is left for the caller to refuse."""
    if version >= 9 or not any(n.op_type == "Scan" for n in model.graph.node):
        return upgraded
    pairs = [*zip(model.graph.input, upgraded.graph.input, strict=False),
             *zip(model.graph.output, upgraded.graph.output, strict=False)]
    if len(model.graph.input) != len(upgraded.graph.input) or len(model.graph.output) != len(upgraded.graph.output):
        return upgraded
    changed = {b.name for b, a in pairs if b.type != a.type}
    for b, a in pairs:
        if b.name in changed and (b.name != a.name or _dims(b)[:1] != [1] or _dims(b)[1:] != _dims(a)
                                  or b.type.tensor_type.elem_type != a.type.tensor_type.elem_type):
            return upgraded
    if not changed:
        return upgraded
    fixed = ModelProto()
    fixed.CopyFrom(upgraded)
    graph = fixed.graph
    axes = onnx.helper.make_tensor("splitup.batch_axis", onnx.TensorProto.INT64, [1], [0])
    graph.initializer.append(axes)
    inputs = {vi.name for vi in model.graph.input} & changed
    outputs = {vi.name for vi in model.graph.output} & changed
    inner = {name: f"{name}.unbatched" for name in inputs | outputs}
    for node in graph.node:  # top-level nodes only: a Scan-8 body sees per-step slices, not these names
        node.input[:] = [inner.get(x, x) if x in inputs else x for x in node.input]
        node.output[:] = [inner.get(x, x) if x in outputs else x for x in node.output]
    first = [onnx.helper.make_node("Squeeze", [n, axes.name], [inner[n]]) for n in sorted(inputs)]
    last = [onnx.helper.make_node("Unsqueeze", [inner[n], axes.name], [n]) for n in sorted(outputs)]
    nodes = [*first, *graph.node, *last]
    del graph.node[:]
    graph.node.extend(nodes)
    for vi, original in [*zip(graph.input, model.graph.input, strict=True),
                         *zip(graph.output, model.graph.output, strict=True)]:
        vi.type.CopyFrom(original.type)
    return fixed
