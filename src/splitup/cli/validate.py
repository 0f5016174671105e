"""``splitup validate MODEL.onnx``: would a node run this graph? Exit 0 with a summary, or 2 with the reason."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitup.cli._declare import add_declare_options, apply_declarations
from splitup.graph.limits import Limits
from splitup.graph.load import load_model
from splitup.graph.upgrade import default_opset, upgrade_opset
from splitup.graph.validate import ValidationReport, validate_model
from splitup.units import BadByteSize, format_bytes, parse_bytes


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except BadByteSize as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check an ONNX model for memory safety",
        description="Validate an ONNX model as a node would before running it: allowed ops, opset, "
        "structure, external-data paths, bounded shapes and byte limits.",
    )
    p.add_argument("model", help="path to the .onnx file (external data must sit in its directory)")
    p.add_argument(
        "--max-bytes",
        type=_byte_size,
        default=None,
        metavar="N",
        help="limit on initializers + peak activations, e.g. 12GiB, 500MB or a plain byte count",
    )
    p.add_argument(
        "--max-tensor-bytes", type=_byte_size, default=None, metavar="N", help="cap for any single tensor"
    )
    add_declare_options(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    limits = Limits(max_total_bytes=args.max_bytes)
    if args.max_tensor_bytes is not None:
        limits = dataclasses.replace(limits, max_tensor_bytes=args.max_tensor_bytes)
    original = apply_declarations(load_model(args.model, limits), args)
    model = upgrade_opset(original, limits)
    report = validate_model(model, limits=limits, bundle_dir=Path(args.model).parent)
    upgraded_from = default_opset(original) if model is not original else None
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "total_bytes": report.total_bytes,
                          "upgraded_from_opset": upgraded_from}))
    else:
        Console().print(_summary(args.model, report, upgraded_from))
    return 0


def _summary(path: str, report: ValidationReport, upgraded_from: int | None) -> Table:
    table = Table(title=f"{path}: ok", show_header=False, box=None, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    ops = ", ".join(f"{op}×{n}" for op, n in list(report.op_counts.items())[:8])
    if len(report.op_counts) > 8:
        ops += f", … ({len(report.op_counts)} op types)"
    table.add_row("ops", f"{report.node_count} nodes, opset {report.opset}: {ops}")
    if upgraded_from is not None:
        table.add_row("upgraded", f"from opset {upgraded_from} (onnx's version converter; splitup plan writes the "
                                  "upgraded graph)")
    table.add_row("params", f"{report.parameter_count:,} ({format_bytes(report.parameter_bytes)})")
    table.add_row("peak activations", f"{format_bytes(report.peak_activation_bytes)} at {report.peak_node}")
    table.add_row("total", format_bytes(report.total_bytes))
    table.add_row("largest tensor", f"{report.largest_tensor} ({format_bytes(report.largest_tensor_bytes)})")
    if report.dim_max:
        table.add_row("dim maxima", ", ".join(f"{k}≤{v}" for k, v in report.dim_max.items()))
    if report.value_max:
        table.add_row("value ranges", ", ".join(f"{k} in " + "/".join(f"{lo}..{hi}" for lo, hi in v)
                                                for k, v in report.value_max.items()))
    for name, shape in report.output_shapes.items():
        table.add_row(f"output {name}", f"{report.output_dtypes[name]}{list(shape)}")
    return table
