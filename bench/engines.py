"""Engines and KV-cache forms side by side: load, prefill and per-step decode on one task, and a pipeline
with a tinygrad node, in one run.

Run: .venv/bin/python bench/engines.py [--model smollm2-135m] [--context 512] [--tokens 32] [--threads 1]

Per (engine, form) on the plan's first task (SmolLM2: embedding + 10 layers): load time, prefill of the
prompt, then the median decode step after warm-up steps (tinygrad compiles each shape once; its kernels
also go to its disk cache). Then ``--tokens`` greedy tokens through 3 node processes on loopback, all on
onnxruntime and again with the middle node on tinygrad: tokens/s and whether the tokens are identical.
The device each engine ran on is printed; on CPU everything shares this machine's cores with other work,
so ratios measured in the same run are what to compare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.node.procs import start_node, start_store  # noqa: E402

from splitup.client.pipeline import PipelineClient  # noqa: E402
from splitup.partition import analyze, budget_for_tasks  # noqa: E402
from splitup.partition.plan import make_plan  # noqa: E402
from splitup.partition.task import task_dir  # noqa: E402
from splitup.runtime import available_engines, get_engine, run_stateful  # noqa: E402
from splitup.storage import BlobStore, publish_plan  # noqa: E402


def load_model(name: str, context: int | None):  # noqa: ANN201 - (onnx model, prompt ids, label)
    if name == "smollm2-135m":
        from splitup.models.real import load_real_model

        real = load_real_model(name, max_seq=64, context=context)
        return real.model, real.encode("The three primary colors are"), "SmolLM2-135M (real weights)"
    from splitup.graph import zoo

    return zoo.build(name, seed=0, **({"context": context} if context else {})), [5, 17, 99, 3, 42, 7], name


def measure_task(plan_dir: Path, task, engine: str, form: str, prompt: list[int], warmup: int, steps: int,
                 threads: int) -> dict:
    t0 = time.perf_counter()
    runner = get_engine(engine, threads=threads).load(task_dir(plan_dir, task))
    load = time.perf_counter() - t0
    runner.kv_form = form
    ids = np.asarray([prompt], np.int64)
    t0 = time.perf_counter()
    outs, state = run_stateful(runner, {"input_ids": ids}, None)
    first_prefill = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        outs, state = run_stateful(runner, {"input_ids": np.asarray([[7 + i]], np.int64)}, state)
        times.append(time.perf_counter() - t0)
    # A second session on the same runner: its prefill reuses what the first one compiled.
    t0 = time.perf_counter()
    run_stateful(runner, {"input_ids": ids}, None)
    prefill = time.perf_counter() - t0
    return {"engine": engine, "form": form, "device": runner.device, "load": load, "first_prefill": first_prefill,
            "prefill": prefill, "warm_decode": sum(times[:warmup]), "decode": statistics.median(times[warmup:])}


def pipeline_tokens(plan, work: Path, engines: list[str], prompt: list[int], tokens: int, threads: int):
    """Greedy tokens through one node process per task (``engines[k]`` runs task k); (tokens, tokens/s
    after a warm-up generation, warm-up seconds)."""
    store = start_store("store", work / "store", work)
    nodes = []
    try:
        store.wait_ready()
        for k, (task, engine) in enumerate(zip(plan.tasks, engines, strict=True)):
            extra = ["--threads", str(threads)] + (["--engine", engine] if engine != "onnxruntime" else [])
            nodes.append(start_node(f"{engine[:4]}{k}", work, tasks=[task.task_id], store=store.url, extra=extra))
        for d in nodes:
            d.wait_ready(timeout=600)
        with PipelineClient(plan, [d.url for d in nodes], hop_timeout=600) as client:
            t0 = time.perf_counter()
            client.generate(prompt, tokens)  # warm-up: tinygrad captures its shapes (prefill, decode) here
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = client.generate(prompt, tokens)
            return out, tokens / (time.perf_counter() - t0), warm
    finally:
        for d in nodes:
            d.stop()
        store.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=512, help="the plan's maximum context (KV-cache capacity)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3, help="decode steps before timing")
    ap.add_argument("--steps", type=int, default=10, help="decode steps timed")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    ap.add_argument("--no-pipeline", action="store_true")
    args = ap.parse_args()
    console = Console(width=200)
    tiny_ok = available_engines().get("tinygrad") == "ok"
    model, prompt, label = load_model(args.model, args.context)
    work = Path(tempfile.mkdtemp(prefix="splitup-bench-engines-"))
    try:
        plan = make_plan(model, args.model, budget_for_tasks(analyze(model), 3), workspace_bytes=0,
                         out_dir=work / "plan").plan
        del model
        task = plan.tasks[0]
        cases = [("onnxruntime", "growing"), ("onnxruntime", "fixed")] + ([("tinygrad", "fixed")] if tiny_ok else [])
        rows = [measure_task(work / "plan", task, e, f, prompt, args.warmup, args.steps, args.threads)
                for e, f in cases]
        base = rows[0]["decode"]
        t = Table(title=f"{label}, task 0 ({', '.join(task.layers[:2])} ... {task.layers[-1]}), "
                        f"context {args.context}, prompt {len(prompt)} tokens")
        for col in ("engine", "form", "device", "load", "first prefill", "prefill (warm)", "warm-up steps",
                    "decode step", "vs onnxruntime growing"):
            t.add_column(col, justify="left" if col in ("engine", "form", "device") else "right")
        for r in rows:
            t.add_row(r["engine"], r["form"], r["device"], f"{r['load']:.2f} s", f"{r['first_prefill']:.2f} s",
                      f"{r['prefill'] * 1000:.1f} ms", f"{r['warm_decode']:.2f} s", f"{r['decode'] * 1000:.2f} ms",
                      f"{r['decode'] / base:.2f}x")
        console.print(t)
        if not tiny_ok:
            console.print(f"tinygrad not measured: {available_engines().get('tinygrad')}")
        if not args.no_pipeline:
            publish_plan(work / "plan", BlobStore(work / "store"))
            p = Table(title=f"{args.tokens} greedy tokens through 3 node processes (loopback)")
            for col in ("engines per task", "tokens/s (warm)", "first generation", "tokens identical"):
                p.add_column(col)
            ref, ref_rate, ref_warm = pipeline_tokens(plan, work, ["onnxruntime"] * 3, prompt, args.tokens, args.threads)
            p.add_row("onnxruntime x3", f"{ref_rate:.1f}", f"{ref_warm:.1f} s", "reference")
            if tiny_ok:
                engines = ["onnxruntime", "tinygrad", "onnxruntime"]
                got, rate, warm = pipeline_tokens(plan, work, engines, prompt, args.tokens, args.threads)
                p.add_row(" + ".join(engines), f"{rate:.1f}", f"{warm:.1f} s", str(got == ref))
            console.print(p)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
