"""``--dim-max`` and ``--value-max``: declaring an ONNX file's maxima on the command line (validate, plan).

They write the same metadata as ``declare_dims`` / ``declare_values`` (``splitup.dim_max``,
``splitup.value_max``) into the loaded model before it is validated; the file itself is not changed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from splitup.errors import SplitUpError

if TYPE_CHECKING:
    import onnx


def add_declare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim-max", action="append", default=[], metavar="NAME=N[,...]",
                   help="the maximum of a symbolic input dim of an ONNX file, e.g. batch=8,seq=2048 (repeatable)")
    p.add_argument("--value-max", action="append", default=[], metavar="INPUT=N|INPUT=LO:HI[,...]",
                   help="the range of the values of a graph input that sizes outputs (Expand's shape, Resize's "
                   "scales or sizes, Pad's pads, Tile's repeats, ...): N means 0..N, LO:HI allows negatives, "
                   "and N/N/... gives one per element (shape=8/4096); a node refuses any feed outside it "
                   "(repeatable)")


def _pairs(items: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for part in filter(None, (p.strip() for item in items for p in item.split(","))):
        name, _, value = part.partition("=")
        if not name.strip() or not value:
            raise SplitUpError(f"{option}: {part!r} is not NAME=VALUE")
        out.append((name.strip(), value.strip()))
    return out


def _number(text: str, option: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise SplitUpError(f"{option}: {text!r} is not a number") from None


def parse_dim_max(items: list[str]) -> dict[str, int]:
    out = {}
    for name, value in _pairs(items, "--dim-max"):
        if not value.isdigit() or int(value) < 1:
            raise SplitUpError(f"--dim-max: {name}={value} is not NAME=N with N >= 1")
        out[name] = int(value)
    return out


def parse_value_max(items: list[str]) -> dict[str, object]:
    """``NAME=N`` (0..N), ``NAME=LO:HI``, or one of those per element separated by ``/`` (``shape=8/4096``)."""
    out: dict[str, object] = {}
    for name, value in _pairs(items, "--value-max"):
        elements = []
        for part in value.split("/"):
            lo, sep, hi = part.partition(":")
            elements.append((_number(lo, "--value-max"), _number(hi, "--value-max")) if sep
                            else (0, _number(part, "--value-max")))
        if len(elements) > 1:
            out[name] = {"min": [lo for lo, _ in elements], "max": [hi for _, hi in elements]}
        else:
            out[name] = list(elements[0]) if ":" in value else elements[0][1]
    return out


def apply_declarations(model: onnx.ModelProto, args: argparse.Namespace) -> onnx.ModelProto:
    """The model with the command line's maxima added to those it declares (the validator checks them)."""
    from splitup.graph.limits import Limits
    from splitup.graph.shapes import read_dim_max
    from splitup.models.onnx_import import declare_dims, declare_values

    dims, values = parse_dim_max(args.dim_max), parse_value_max(args.value_max)
    if dims:
        declare_dims(model, {**read_dim_max(model, Limits()), **dims})
    if values:
        declare_values(model, values)
    return model
