"""``splitup import``: a local Hugging Face model directory, a ``.keras`` file or a TensorFlow SavedModel
directory as a validated ONNX file for ``splitup plan``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from splitup.errors import SplitUpError
from splitup.units import format_bytes

if TYPE_CHECKING:
    import onnx


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="turn a local Hugging Face model directory, a .keras file or a SavedModel into a validated ONNX file",
        description="A Hugging Face directory: reads config.json and *.safetensors (Llama, GPT-2 and BERT "
        "families), builds the graph, binds the weights, declares the maxima of the symbolic dims and validates "
        "the result (no network, no torch). A .keras file or a SavedModel directory (saved_model.pb) goes through "
        "splitup.models.tf_import (extra: splitup[tensorflow]); its dynamic dims are named batch, d1, d2... and "
        "need --dim-max. Then: splitup plan MODEL.onnx --vram 8GiB --out plan/",
    )
    p.add_argument("directory", help="the model: a directory (config.json + *.safetensors, or a SavedModel) "
                   "or a .keras file")
    p.add_argument("--out", required=True, help="the ONNX file to write (weights inside, or beside it in OUT.data "
                   "when they exceed 2 GiB)")
    p.add_argument("--max-seq", type=int, default=None,
                   help="maximum tokens per call (default: the family's, at most the model's context)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="maximum batch size (BERT; for Keras/TensorFlow the maximum of 'batch', default 1)")
    p.add_argument("--dim-max", default="", metavar="NAME=N,...",
                   help="Keras/TensorFlow: the maximum of each other dynamic dim, e.g. d1=128")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.set_defaults(func=run)


def is_tensorflow_source(path: Path) -> bool:
    """A .keras file or a SavedModel directory: the TensorFlow / Keras importer's, not the Hugging Face one's."""
    return path.suffix == ".keras" or (path / "saved_model.pb").is_file()


def dim_maxima(text: str, max_batch: int | None) -> dict[str, int]:
    from splitup.cli._declare import parse_dim_max

    return {"batch": max_batch or 1, **parse_dim_max([text])}


def _import_tensorflow(args: argparse.Namespace, path: Path) -> onnx.ModelProto:
    from splitup.models.tf_import import import_tensorflow

    if args.dtype != "float32" or args.max_seq is not None:
        raise SplitUpError("--dtype and --max-seq apply to Hugging Face directories; a Keras or TensorFlow "
                           "model keeps its dtypes, and its dynamic dims take --dim-max")
    return import_tensorflow(path, dim_max=dim_maxima(args.dim_max, args.max_batch))


def run(args: argparse.Namespace) -> int:
    from splitup.graph.meta import DIM_MAX_KEY, read_state
    from splitup.graph.validate import validate_file
    from splitup.models.hf_import import import_hf, save_imported

    t0 = time.perf_counter()
    source = Path(args.directory)
    if is_tensorflow_source(source):
        model = _import_tensorflow(args, source)
    elif args.dim_max:
        raise SplitUpError("--dim-max applies to a .keras file or a SavedModel directory")
    else:
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
