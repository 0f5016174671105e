"""Single-process onnxruntime vs the same plan through N node processes on loopback, in one run.

Run: .venv/bin/python bench/pipeline.py [--model smollm2-135m] [--nodes 3] [--tokens 32] [--threads 1]

Measured side by side on one machine:
- greedy generation: prefill latency, median latency per new token, tokens/s (KV caches on the nodes);
- batch: time for a set of prompts, pipelined through the nodes (one request in flight per node);
- per hop: the nodes' own compute time vs the round trip, i.e. what the network path adds per hop.
The real SmolLM2-135M is used when ``splitup.models`` can load it; ``--model tiny-llama`` uses seeded weights.
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
from splitup.client.sampling import generate_tokens  # noqa: E402
from splitup.partition import analyze, budget_for_tasks  # noqa: E402
from splitup.partition.local import LocalPipeline  # noqa: E402
from splitup.partition.plan import make_plan  # noqa: E402
from splitup.runtime import get_engine  # noqa: E402
from splitup.storage import BlobStore, publish_plan  # noqa: E402


def load_model(name: str, max_seq: int):  # noqa: ANN201 - (onnx model, prompt ids, label)
    if name == "smollm2-135m":
        from splitup.models.real import load_real_model

        real = load_real_model(name, max_seq=max_seq)
        prompt = real.encode("The three primary colors are")
        return real.model, prompt, "SmolLM2-135M (real weights)"
    from splitup.graph import zoo

    return zoo.build(name, seed=0), [5, 17, 99, 3, 42, 7], f"{name} (seeded)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=12, help="prompts in the batch measurement")
    ap.add_argument("--seq", type=int, default=32, help="tokens per batch prompt")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads, per process and per node")
    ap.add_argument("--rounds", type=int, default=3, help="batch measurements (alternating), median reported")
    args = ap.parse_args()
    console = Console()
    model, prompt, label = load_model(args.model, max_seq=64)
    work = Path(tempfile.mkdtemp(prefix="splitup-bench-"))
    plan = make_plan(model, args.model, budget_for_tasks(analyze(model), args.nodes), workspace_bytes=0, out_dir=work / "plan").plan
    del model
    publish_plan(work / "plan", BlobStore(work / "store"))
    store = start_store("store", work / "store", work)
    nodes = []
    try:
        store.wait_ready()
        nodes = [start_node(f"n{i}", work, tasks=[t.task_id], store=store.url, extra=["--threads", str(args.threads)])
                 for i, t in enumerate(plan.tasks)]
        for d in nodes:
            d.wait_ready(timeout=300)
        local = LocalPipeline(work / "plan", engine=get_engine("onnxruntime", threads=args.threads))
        rng = np.random.default_rng(0)
        items = [{"input_ids": rng.integers(0, 500, (1, args.seq))} for _ in range(args.batch)]

        def local_step(ids: np.ndarray) -> np.ndarray:
            return local.run({"input_ids": ids})["logits"]

        with PipelineClient(plan, [d.url for d in nodes]) as client:
            # warm-up: first calls pay for allocations and connection set-up on both sides
            local.reset()
            generate_tokens(local_step, prompt, 2)
            client.generate(prompt, 2)
            # Lockstep: each token is computed by both, in alternating order, so that load from other
            # processes on this machine hits both measurements alike.
            local.reset()
            ref_times: list[float] = []
            pipe_times: list[float] = []
            hop_records: list[list[dict]] = []
            tokens: list[int] = []
            ref_tokens: list[int] = []
            with client.session() as gen:
                ids = np.asarray([prompt], np.int64)
                for i in range(args.tokens):
                    order = (0, 1) if i % 2 == 0 else (1, 0)
                    for which in order:
                        t0 = time.perf_counter()
                        if which == 0:
                            logits = local_step(ids)
                            ref_times.append(time.perf_counter() - t0)
                            ref_tokens.append(int(np.argmax(logits[0, -1])))
                        else:
                            logits = gen.step(ids)
                            pipe_times.append(time.perf_counter() - t0)
                            hop_records.append([*client.last_hops, {"rtt": pipe_times[-1]}])
                            tokens.append(int(np.argmax(logits[0, -1])))
                    assert tokens[-1] == ref_tokens[-1], "the pipeline's greedy token differs"
                    ids = np.asarray([[tokens[-1]]], np.int64)
            ref_prefill, prefill = ref_times[0], pipe_times[0]
            ref_tok, per_tok = ref_times[1:], pipe_times[1:]
            ref_rounds, pipe_rounds, seq_rounds = [], [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for item in items:
                    local.reset()
                    local.run(item)
                ref_rounds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                client.run_batch(items, outputs=["logits"])
                pipe_rounds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for item in items:
                    client.run(item, outputs=["logits"])
                seq_rounds.append(time.perf_counter() - t0)
            ref_batch, pipe_batch, seq_batch = (statistics.median(x) for x in (ref_rounds, pipe_rounds, seq_rounds))
    finally:
        for d in nodes:
            d.stop()
        store.stop()
        shutil.rmtree(work, ignore_errors=True)  # bundles, store and node caches: several copies of the weights

    decode = hop_records[1:]
    compute = [sum(h["ms"] for h in r[:-1]) / 1000 for r in decode]
    rtt = [r[-1]["rtt"] for r in decode]
    per_hop = [statistics.median(r[k]["ms"] for r in decode) for k in range(len(plan.tasks))]
    overhead = statistics.median(b - a for a, b in zip(compute, rtt, strict=True)) / len(plan.tasks)

    med_ref, med_pipe = statistics.median(ref_tok), statistics.median(per_tok)
    t = Table(title=f"{label}: {len(plan.tasks)} tasks, {args.threads} thread(s) per process, loopback")
    for col in ("measure", "single process", f"{len(plan.tasks)} nodes", "ratio", "goal"):
        t.add_column(col, justify="right" if col != "measure" else "left")
    t.add_row("prefill latency", f"{ref_prefill * 1000:.1f} ms", f"{prefill * 1000:.1f} ms", f"{prefill / ref_prefill:.2f}x", "")
    t.add_row("latency per token (median)", f"{med_ref * 1000:.2f} ms", f"{med_pipe * 1000:.2f} ms",
              f"{med_pipe / med_ref:.2f}x", "")
    t.add_row("greedy tokens/s", f"{1 / med_ref:.1f}", f"{1 / med_pipe:.1f}", f"{med_ref / med_pipe:.2f}x", ">= 0.85x")
    t.add_row(f"batch of {args.batch} x {args.seq} tokens, pipelined", f"{ref_batch:.3f} s", f"{pipe_batch:.3f} s",
              f"{pipe_batch / ref_batch:.2f}x time", "<= 1.10x")
    t.add_row("  same batch, one request at a time", f"{ref_batch:.3f} s", f"{seq_batch:.3f} s",
              f"{seq_batch / ref_batch:.2f}x time", "")
    console.print(t)
    h = Table(title="per hop during decoding (median)")
    h.add_column("hop")
    h.add_column("layers")
    h.add_column("node compute", justify="right")
    for k, task in enumerate(plan.tasks):
        h.add_row(str(k), ", ".join(task.layers[:3]) + (" ..." if len(task.layers) > 3 else ""), f"{per_hop[k]:.2f} ms")
    h.add_row("", "transport + HTTP + (de)serialisation, per hop", f"{overhead * 1000:.2f} ms")
    console.print(h)
    console.print(f"greedy tokens identical: {tokens == ref_tokens} ({len(tokens)} tokens); "
                  f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
