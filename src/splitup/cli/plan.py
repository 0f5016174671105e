"""``splitup plan``: split a model into tasks that each fit a VRAM budget."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from splitup.cli._declare import add_declare_options, apply_declarations
from splitup.errors import SplitUpError
from splitup.partition.plan import PlanResult, make_plan
from splitup.units import format_bytes, parse_bytes

EXAMPLES = """examples:
  splitup plan llama-70b --vram 12GiB --dtype fp16
  splitup plan llama-13b --nodes 8GiB,12GiB,16GiB,2x24GiB --json
  splitup plan model.onnx --vram 500MB --out plan/
  splitup plan llama-7b --vram 8GiB --chart plan.png
"""

_DTYPES = ("fp32", "float32", "fp16", "float16", "bf16", "bfloat16", "int8", "int4")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="split a model into VRAM-bounded tasks", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a zoo or real model name (see `splitup models`) or an ONNX file")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--vram", help="memory of each node, e.g. 12GiB")
    budget.add_argument("--nodes", help="comma-separated node sizes, e.g. 8GiB,16GiB,2x24GiB")
    p.add_argument("--dtype", default=None, choices=_DTYPES,
                   help="weight type: fp32, fp16 (bf16 is sized like fp16), or int8/int4 (weights quantised per "
                        "block, read through DequantizeLinear); default fp16 for planning-only graphs, fp32 when "
                        "a real model's bundles are written")
    p.add_argument("--activations", choices=("fp16", "fp32"),
                   help="activation and KV-cache type with --dtype int8/int4: default fp16 for planning-only "
                        "graphs (GPU nodes), fp32 when bundles with weights are written (runs on every engine); "
                        "the last task, which chooses tokens, computes in fp32 either way (--token-fp32)")
    p.add_argument("--token-fp32", choices=("auto", "task", "head"), default="auto",
                   help="in a half-precision plan, what of the task that chooses tokens computes in float32: "
                        "'task' (all of it: a validator judges the token from the previous node's committed "
                        "state), 'head' (only its LM head: smaller, but its executor can steer the state the "
                        "head reads within the fp16 rule and flip near-tie tokens), 'auto' (task unless that "
                        "takes more tasks; docs/posp.md)")
    p.add_argument("--context", type=int, help="maximum context (KV-cache length) for decoders")
    p.add_argument("--seq", type=int, help="longest chunk of tokens processed in one step (prefill chunk)")
    p.add_argument("--batch", type=int, help="most sequences a node runs in one engine call (decoders; default 1): "
                   "KV caches and activations are sized for this many concurrent streams")
    p.add_argument("--workspace", default="256MiB", help="runtime workspace allowance per task (default 256MiB)")
    p.add_argument("--cut-factor", type=float, default=2.0,
                   help="cut only where at most this many times the smallest cut's bytes cross (default 2)")
    add_declare_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--chart", type=Path, help="write a bar chart of memory per task (PNG, needs matplotlib)")
    p.add_argument("--out", type=Path, help="write plan.json and one task bundle (graph + weight shard) per task")
    p.set_defaults(func=run)


def parse_nodes(text: str) -> list[int]:
    sizes: list[int] = []
    for item in text.split(","):
        item = item.strip()
        count, _, size = item.rpartition("x") if "x" in item.lower().split("i")[0] else ("", "", item)
        if count and not count.isdigit():
            raise SplitUpError(f"bad node list entry {item!r} (examples: 12GiB, 2x24GiB)")
        sizes.extend([parse_bytes(size)] * (int(count) if count else 1))
    if not sizes or any(s <= 0 for s in sizes):
        raise SplitUpError("--nodes needs at least one positive size")
    return sizes


def _load(args: argparse.Namespace) -> tuple[Any, str, bool, bool, Path | None]:
    """(model, name, trusted, has_weights, weights_dir): files are untrusted and fully validated; zoo models
    are built here, with the pretrained weights of a real model when bundles are to be written.
    ``weights_dir`` is the directory of a file saved with external data, where its weights are read."""
    path = Path(args.model)
    if args.model.endswith(".onnx") or path.exists():
        from splitup.graph.load import load_model

        model = apply_declarations(load_model(path), args)
        # A model saved with external data (over 2 GiB) is planned with the weights beside it.
        if all(_has_data(t) for t in model.graph.initializer):
            return model, path.stem, False, True, None
        if all(_has_data(t) or _beside(t, path.parent) for t in model.graph.initializer):
            return model, path.stem, False, True, path.parent
        return model, path.stem, False, False, None
    if args.dim_max or args.value_max:
        raise SplitUpError("--dim-max and --value-max declare an ONNX file's maxima; a zoo model declares its own "
                           "(--context, --seq, --batch)")
    from splitup.graph import zoo
    from splitup.models.registry import SPECS

    zoo.entry(args.model)  # unknown names fail here with the list of known ones
    overrides: dict[str, Any] = {}
    if args.context:
        overrides["context"] = args.context
    if args.seq:
        overrides["max_seq"] = args.seq
    if args.batch:
        if args.batch < 1:
            raise SplitUpError("--batch must be at least 1")
        overrides["batch"] = args.batch
    real = bool(args.out) and args.model in SPECS and SPECS[args.model].path() is not None
    quantised = args.dtype in ("int8", "int4")
    if real:
        # Real weights: float32 unless asked (int4 on a GGUF model keeps the file's own 4-bit blocks).
        from splitup.models.real import build_real

        model = build_real(args.model, validate=False, dtype=args.dtype or "fp32",
                           activations=args.activations, **overrides)
        return model, args.model, True, True, None
    acts = args.activations or ("fp16" if quantised else None)
    model = zoo.build(args.model, dtype=args.dtype or "fp16", activations=acts, validate=False, **overrides)
    return model, args.model, True, False, None


def _has_data(t: Any) -> bool:
    import onnx

    return t.data_location != onnx.TensorProto.EXTERNAL


def _beside(t: Any, directory: Path) -> bool:
    location = next((e.value for e in t.external_data if e.key == "location"), "")
    return bool(location) and (directory / location).is_file()


def run(args: argparse.Namespace) -> int:
    budgets: int | list[int] = parse_nodes(args.nodes) if args.nodes else parse_bytes(args.vram)
    if isinstance(budgets, int) and budgets <= 0:
        raise SplitUpError("--vram must be positive")
    t0 = time.perf_counter()
    model, name, trusted, has_weights, weights_dir = _load(args)
    result = make_plan(model, name, budgets, workspace_bytes=parse_bytes(args.workspace), cut_factor=args.cut_factor,
                       out_dir=args.out, trusted=trusted, weights_dir=weights_dir, token_fp32=args.token_fp32)
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps(summary(result, elapsed)))
    else:
        print_table(result, elapsed)
    if args.chart:
        write_chart(result, args.chart)
    if args.out and not has_weights:
        print(f"note: {name} has no weights here (a shape-only planning graph): the bundles in {args.out} "
              "hold task graphs without weight shards", file=sys.stderr)
    return 0


def summary(result: PlanResult, seconds: float) -> dict[str, Any]:
    plan = result.plan
    return {
        "model": plan.model,
        "budget_bytes": plan.budget_bytes,
        "budgets": plan.budgets,
        "lower_bound": plan.lower_bound,
        "task_count": len(plan.tasks),
        "total_weight_bytes": plan.total_weight_bytes,
        "total_kv_cache_bytes": plan.total_kv_cache_bytes,
        "plan_seconds": round(seconds, 4),
        "partition_seconds": round(result.partition_seconds, 4),
        "partition_cpu_seconds": round(result.partition_cpu_seconds, 4),
        "written_to": str(result.written) if result.written else None,
        "tasks": [
            {
                "index": t.index, "task_id": t.task_id, "layers": t.layers, "vram_bytes": t.vram_bytes,
                "weight_bytes": t.weight_bytes, "activation_bytes": t.activation_bytes,
                "kv_cache_bytes": t.kv_cache_bytes, "workspace_bytes": t.workspace_bytes, "flops": t.flops,
                "precision": t.precision, "head": t.head,
                "cut_bytes": t.cut_bytes, "node_bytes": t.budget_bytes,
                "inputs": [i.name for i in t.inputs], "outputs": [o.name for o in t.outputs],
            }
            for t in plan.tasks
        ],
    }


def compact_layers(layers: list[str]) -> str:
    """``["embed", "layers.0", "layers.1", "layers.2"]`` -> ``embed, layers.0-2``."""
    out: list[str] = []
    run_prefix, first, last = None, None, None
    for label in [*layers, None]:
        prefix, _, idx = (label or "").rpartition(".")
        if label is not None and idx.isdigit() and prefix == run_prefix and last is not None and int(idx) == last + 1:
            last = int(idx)
            continue
        if run_prefix is not None:
            out.append(f"{run_prefix}.{first}" + (f"-{last}" if last != first else ""))
            run_prefix = None
        if label is None:
            break
        if idx.isdigit():
            run_prefix, first, last = prefix, int(idx), int(idx)
        else:
            out.append(label)
    return ", ".join(out)


def _flops(n: int) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return str(n)


def print_table(result: PlanResult, seconds: float) -> None:
    plan = result.plan
    table = Table(title=f"{plan.model}: {len(plan.tasks)} tasks (lower bound {plan.lower_bound}), planned in "
                        f"{seconds:.2f} s (partitioner {result.partition_seconds:.2f} s, "
                        f"{result.partition_cpu_seconds:.2f} s CPU)", title_justify="left")
    for col in ("task", "layers", "weights", "activations", "KV cache", "total", "node", "FLOPs", "cut"):
        table.add_column(col, justify="left" if col in ("layers",) else "right")
    for t in plan.tasks:
        table.add_row(str(t.index), compact_layers(t.layers), format_bytes(t.weight_bytes),
                      format_bytes(t.activation_bytes), format_bytes(t.kv_cache_bytes), format_bytes(t.vram_bytes),
                      format_bytes(t.budget_bytes), _flops(t.flops), format_bytes(t.cut_bytes))
    console = Console(width=None if Console().is_terminal else 140)
    console.print(table)
    console.print(f"weights {format_bytes(plan.total_weight_bytes)}, KV cache {format_bytes(plan.total_kv_cache_bytes)}; "
                  f"lower bound ceil(total / largest node) = {plan.lower_bound}")
    last = plan.tasks[-1]
    if last.head is not None:
        console.print(f"the token task computes only its head in float32 (from {last.head!r}): its executor can steer "
                      "that state within the fp16 rule and flip near-tie tokens; --token-fp32 task to close that "
                      "(docs/posp.md)")
    if result.written:
        console.print(f"wrote plan and {len(plan.tasks)} task bundles to {result.written}")


def write_chart(result: PlanResult, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SplitUpError("--chart needs matplotlib: pip install 'splitup[chart]'") from None
    tasks = result.plan.tasks
    gib = 2**30
    parts = [("weights", [t.weight_bytes / gib for t in tasks]), ("KV cache", [t.kv_cache_bytes / gib for t in tasks]),
             ("activations", [t.activation_bytes / gib for t in tasks]),
             ("workspace", [t.workspace_bytes / gib for t in tasks])]
    fig, ax = plt.subplots(figsize=(max(6, len(tasks) * 0.6), 4))
    bottom = [0.0] * len(tasks)
    for label, values in parts:
        ax.bar(range(len(tasks)), values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, t in enumerate(tasks):
        ax.hlines(t.budget_bytes / gib, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
    ax.set_xlabel("task")
    ax.set_ylabel("GiB")
    ax.set_title(f"{result.plan.model}: memory per task against the node budget (dashed)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
