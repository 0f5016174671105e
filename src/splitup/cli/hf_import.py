"""``splitup import``: a local Hugging Face model directory as a validated ONNX file for ``splitup plan``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from splitup.units import format_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="turn a local Hugging Face model directory into a validated ONNX file, offline",
        description="Reads config.json and *.safetensors (Llama, GPT-2 and BERT families), builds the graph, "
        "binds the weights, declares the maxima of the symbolic dims and validates the result. No network, "
        "no torch. Then: splitup plan MODEL.onnx --vram 8GiB --out plan/",
    )
    p.add_argument("directory", help="the model directory (config.json + *.safetensors)")
    p.add_argument("--out", required=True, help="the ONNX file to write (weights inside, or beside it in OUT.data "
                   "when they exceed 2 GiB)")
    p.add_argument("--max-seq", type=int, default=None,
                   help="maximum tokens per call (default: the family's, at most the model's context)")
    p.add_argument("--max-batch", type=int, default=None, help="BERT only: maximum batch size")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitup.graph.meta import DIM_MAX_KEY, read_state
    from splitup.graph.validate import validate_file
    from splitup.models.hf_import import import_hf, save_imported

    t0 = time.perf_counter()
    model = import_hf(args.directory, dtype=args.dtype, max_seq=args.max_seq, max_batch=args.max_batch)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_imported(model, out)
    external = out.with_name(out.name + ".data")
    if external.exists():
        validate_file(out)  # as written: external data inside the model's directory
        print(f"{out}: weights over 2 GiB, written beside it as external data ({external.name}, "
              f"{format_bytes(external.stat().st_size)}); splitup plan reads them from there")
    dims = next((p.value for p in model.metadata_props if p.key == DIM_MAX_KEY), "{}")
    state = read_state(model)
    print(f"{out}: {len(model.graph.node)} nodes, {format_bytes(out.stat().st_size)}, inputs "
          f"{', '.join(i.name for i in model.graph.input if i.name not in state)}"
          f"{f' + {len(state)} cache inputs (state)' if state else ''}; dim maxima {dims}; validated in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"next: splitup plan {out} --vram 8GiB --out plan/")
    return 0
