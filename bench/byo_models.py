"""Bring your own model: the real-model corpus and ONNX's conformance cases through the SplitUp path.

Run: .venv/bin/python bench/byo_models.py [--no-conformance]
The corpus (tests/models/test_byo_corpus.py) at 2, 3 and 4 tasks: export, plan + write (every task
validated), LocalPipeline against onnxruntime at a small input and at the declared maxima. Then every
conformance node case the installed onnx generates (tests/graph/conformance.py). Prints the load average.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "graph"))

CORPUS = ["gpt2", "gpt2-mask-kv", "llama-mask", "llama-kv", "bert", "bert-mask", "t5", "cnn", "gpt2-full-vocab"]


def corpus(console: Console) -> None:
    from tests.models.test_byo_corpus import check_split, corpus_model

    from splitup.partition.partitioner import PartitionError

    table = Table(title="real models exported from torch / transformers: split, written, run, compared")
    for col in ("model", "nodes", "export s", "tasks", "plan+write+run s", "max |diff|"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name in CORPUS:
        t0 = time.perf_counter()
        model = corpus_model(name)
        exported = time.perf_counter() - t0
        for count in (2, 3, 4):
            t1 = time.perf_counter()
            try:
                diff = check_split(model, name, count, Path(tempfile.mkdtemp()))
                cells = (f"{time.perf_counter() - t1:.1f}", f"{diff:.1e}")
            except PartitionError as exc:
                cells = ("-", f"not {count}: {str(exc)[:40]}")
            table.add_row(name, str(len(model.graph.node)), f"{exported:.1f}", str(count), *cells)
    console.print(table)


def conformance(console: Console) -> None:
    from conformance import generate, run

    t0 = time.perf_counter()
    cases = generate()
    generated = time.perf_counter() - t0
    sweep = run(cases)
    table = Table(title=f"ONNX conformance node cases ({len(cases)} generated in {generated:.0f} s, "
                        f"swept in {time.perf_counter() - t0 - generated:.0f} s)")
    table.add_column("outcome")
    table.add_column("cases", justify="right")
    for key, n in sweep.outcomes.most_common():
        table.add_row(key, str(n))
    console.print(table)
    refusals = Table(title="refusals, by reason")
    refusals.add_column("error")
    refusals.add_column("reason")
    refusals.add_column("cases", justify="right")
    for (cls, why), n in sweep.rejected.most_common():
        refusals.add_row(cls, why, str(n))
    console.print(refusals)
    for name, why in sweep.failures:
        console.print(f"[red]FAIL[/red] {name}: {why}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--no-conformance", action="store_true")
    p.add_argument("--no-corpus", action="store_true")
    args = p.parse_args()
    console = Console()
    if not args.no_corpus:
        corpus(console)
    if not args.no_conformance:
        conformance(console)
    console.print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
