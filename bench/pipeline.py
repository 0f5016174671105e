"""Single-process onnxruntime vs the same plan through N node processes on loopback, in one run.

Run: .venv/bin/python bench/pipeline.py [--model smollm2-135m] [--nodes 3] [--tokens 32] [--threads 1] [--json]

Measured side by side on one machine, each token computed by all three in rotating order (so load from
other processes hits them alike):
- greedy generation: prefill latency, median latency per new token, tokens/s (KV caches on the nodes),
  through the nodes with hops as binary frames on kept-open connections (the last node answering the
  client directly, the default, and with the answer back along the chain) and over HTTP;
- per hop (per task of the route): the CPU time the client and the nodes' hop-serving threads spend on a
  step beyond the engines' compute (for frames also apart: the client's per step, the nodes' per hop),
  and the round trip minus compute;
- batch: time for a set of prompts, pipelined through the nodes (one request in flight per node).
``--json`` prints one JSON object instead of the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodes import cpu_ns, running_nodes, split_model  # noqa: E402

from splitup.client.pipeline import PipelineClient  # noqa: E402
from splitup.client.sampling import generate_tokens  # noqa: E402
from splitup.runtime import get_engine  # noqa: E402
from splitup.runtime.local import LocalPipeline  # noqa: E402

# name -> (transport, direct answer); "frames" is the default client
TRANSPORTS = {"frames": ("frames", True), "chain": ("frames", False), "http": ("http", False)}


def wall_ms_per_hop(records: list[list[dict]], hops: int) -> float:
    """Median over decode steps of (round trip - the nodes' compute) per hop, in ms: the software's work
    plus, on a busy machine, the time each process waits for a core."""
    gaps = [(r[-1]["rtt"] - sum(h["ms"] for h in r[:-1]) / 1000) / hops for r in records]
    return statistics.median(gaps) * 1000


def cpu_ms_per_hop(records: list[list[dict]], hops: int) -> float:
    """Mean over decode steps of the CPU time the client's thread and the nodes' hop-serving threads spent
    on a step beyond the engine's compute, per hop, in ms: the transport's software overhead, whatever the
    load (the nodes' background threads, heartbeat and the like, are not the hop's work: not counted)."""
    extra = [(r[-1]["cpu"] - sum(h["cpu_ms"] for h in r[:-1]) / 1000) / hops for r in records]
    return statistics.mean(extra) * 1000


def split_ms(records: list[list[dict]], hops: int) -> tuple[float, float]:
    """The frames figure's two parts, in ms: the client's CPU per step (sending the tokens, taking the
    logits, its own bookkeeping) and the nodes' CPU beyond compute per hop."""
    client = [r[-1]["client_cpu"] for r in records]
    nodes = [(r[-1]["cpu"] - r[-1]["client_cpu"] - sum(h["cpu_ms"] for h in r[:-1]) / 1000) / hops for r in records]
    return statistics.mean(client) * 1000, statistics.mean(nodes) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=12, help="prompts in the batch measurement")
    ap.add_argument("--seq", type=int, default=32, help="tokens per batch prompt")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads, per process and per node")
    ap.add_argument("--rounds", type=int, default=3, help="batch measurements (alternating), median reported")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    load_start = os.getloadavg()
    with split_model(args.model, args.nodes) as split, running_nodes(split, threads=args.threads) as nodes:
        plan, prompt = split.plan, split.prompt
        local = LocalPipeline(split.plan_dir, engine=get_engine("onnxruntime", threads=args.threads))
        rng = np.random.default_rng(0)
        items = [{"input_ids": rng.integers(0, 500, (1, args.seq))} for _ in range(args.batch)]

        def local_step(ids: np.ndarray) -> np.ndarray:
            return local.run({"input_ids": ids})["logits"]

        pids = [d.proc.pid for d in nodes]
        clients = {t: PipelineClient(plan, [d.url for d in nodes], transport=tr, direct=direct)
                   for t, (tr, direct) in TRANSPORTS.items()}
        try:
            local.reset()
            generate_tokens(local_step, prompt, 2)  # warm-up: allocations and connections on every side
            for c in clients.values():
                c.generate(prompt, 2)
            local.reset()
            times: dict[str, list[float]] = {"local": [], **{t: [] for t in TRANSPORTS}}
            tokens: dict[str, list[int]] = {k: [] for k in times}
            records: dict[str, list[list[dict]]] = {t: [] for t in TRANSPORTS}
            gens = {t: c.session() for t, c in clients.items()}
            order = ["local", *TRANSPORTS]
            ids = {k: np.asarray([prompt], np.int64) for k in times}
            for i in range(args.tokens):
                for which in order[i % len(order):] + order[: i % len(order)]:
                    # the nodes' counters are read outside the client's own CPU window: reading them is the
                    # bench's work, not the transport's
                    serving = None if which == "local" else TRANSPORTS[which][0]
                    n0 = cpu_ns(pids, serving=serving)
                    c0, t0 = time.thread_time_ns(), time.perf_counter()
                    logits = local_step(ids[which]) if which == "local" else gens[which].step(ids[which])
                    times[which].append(time.perf_counter() - t0)
                    c1 = time.thread_time_ns()
                    cpu = (c1 - c0 + cpu_ns(pids, serving=serving) - n0) / 1e9
                    if which != "local":
                        records[which].append([*clients[which].last_hops, {"rtt": times[which][-1], "cpu": cpu,
                                                                           "client_cpu": (c1 - c0) / 1e9}])
                    tokens[which].append(int(np.argmax(logits[0, -1])))
                    ids[which] = np.asarray([[tokens[which][-1]]], np.int64)
            for g in gens.values():
                g.close()
            ref_rounds, pipe_rounds, seq_rounds = [], [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for item in items:
                    local.reset()
                    local.run(item)
                ref_rounds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                clients["frames"].run_batch(items, outputs=["logits"])
                pipe_rounds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for item in items:
                    clients["frames"].run(item, outputs=["logits"])
                seq_rounds.append(time.perf_counter() - t0)
        finally:
            for c in clients.values():
                c.close()
    ref_batch, pipe_batch, seq_batch = (statistics.median(x) for x in (ref_rounds, pipe_rounds, seq_rounds))
    hops = len(plan.tasks)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    per_hop = {t: cpu_ms_per_hop(records[t][1:], hops) for t in TRANSPORTS}
    wall = {t: wall_ms_per_hop(records[t][1:], hops) for t in TRANSPORTS}
    compute = [statistics.median(r[k]["ms"] for r in records["frames"][1:]) for k in range(hops)]
    client_step, node_hop = split_ms(records["frames"][1:], hops)
    identical = all(tokens[t] == tokens["local"] for t in TRANSPORTS)
    result = {
        "model": split.label, "tasks": hops, "tokens": args.tokens, "threads": args.threads,
        "tokens_per_s_ratio": round(med["local"] / med["frames"], 3),
        "chain_tokens_per_s_ratio": round(med["local"] / med["chain"], 3),
        "http_tokens_per_s_ratio": round(med["local"] / med["http"], 3),
        "batch_time_ratio": round(pipe_batch / ref_batch, 3),
        "sequential_batch_time_ratio": round(seq_batch / ref_batch, 3),
        "transport_ms_per_hop": round(per_hop["frames"], 3),
        "chain_ms_per_hop": round(per_hop["chain"], 3),
        "http_ms_per_hop": round(per_hop["http"], 3),
        # the figure that drifts least with this VM's speed: both transports measured in the same run
        "frames_to_http": round(per_hop["frames"] / per_hop["http"], 3),
        "transport_wall_ms_per_hop": round(wall["frames"], 3),
        "client_ms_per_step": round(client_step, 3), "node_ms_per_hop": round(node_hop, 3),
        "chain_wall_ms_per_hop": round(wall["chain"], 3),
        "http_wall_ms_per_hop": round(wall["http"], 3),
        "ms_per_token": {k: round(v * 1000, 2) for k, v in med.items()},
        "prefill_ms": {k: round(v[0] * 1000, 2) for k, v in times.items()},
        "node_compute_ms": [round(c, 2) for c in compute],
        "tokens_identical": identical,
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        _tables(result, args, ref_batch, pipe_batch, seq_batch)
    if not identical:
        sys.exit("the pipeline's greedy tokens differ from the single process's")


def _tables(r: dict, args: argparse.Namespace, ref_batch: float, pipe_batch: float, seq_batch: float) -> None:
    console = Console()
    ms = r["ms_per_token"]
    t = Table(title=f"{r['model']}: {r['tasks']} tasks, {args.threads} thread(s) per process, loopback")
    cols = {"frames": "frames, direct answer", "chain": "frames, answer along the chain", "http": "HTTP"}
    for col in ("measure", "single process", *(f"{r['tasks']} nodes, {c}" for c in cols.values()), "goal"):
        t.add_column(col, justify="right" if col != "measure" else "left")
    pre = r["prefill_ms"]
    ratio = {"frames": r["tokens_per_s_ratio"], "chain": r["chain_tokens_per_s_ratio"], "http": r["http_tokens_per_s_ratio"]}
    cpu = {"frames": r["transport_ms_per_hop"], "chain": r["chain_ms_per_hop"], "http": r["http_ms_per_hop"]}
    wall = {"frames": r["transport_wall_ms_per_hop"], "chain": r["chain_wall_ms_per_hop"], "http": r["http_wall_ms_per_hop"]}
    t.add_row("prefill latency", f"{pre['local']:.1f} ms", *(f"{pre[c]:.1f} ms" for c in cols), "")
    t.add_row("latency per token (median)", f"{ms['local']:.2f} ms", *(f"{ms[c]:.2f} ms" for c in cols), "")
    t.add_row("greedy tokens/s (ratio to one process)", f"{1000 / ms['local']:.1f}",
              *(f"{1000 / ms[c]:.1f} ({ratio[c]:.2f}x)" for c in cols), ">= 0.85x")
    t.add_row("transport per hop: CPU time beyond compute", "", *(f"{cpu[c]:.2f} ms" for c in cols), "<= 0.5 ms")
    t.add_row("transport per hop: wall time (round trip - compute)", "", *(f"{wall[c]:.2f} ms" for c in cols), "")
    t.add_row(f"batch of {args.batch} x {args.seq} tokens, pipelined", f"{ref_batch:.3f} s", f"{pipe_batch:.3f} s", "",
              "", f"{r['batch_time_ratio']:.2f}x time")
    t.add_row("  same batch, one request at a time", f"{ref_batch:.3f} s", f"{seq_batch:.3f} s", "", "",
              f"{r['sequential_batch_time_ratio']:.2f}x time")
    console.print(t)
    console.print(f"frames cost {r['frames_to_http']:.2f} of HTTP per hop in this run")
    console.print(f"node compute per hop (median, ms): {r['node_compute_ms']}; the frames figure is the client's "
                  f"{r['client_ms_per_step']:.2f} ms a step spread over {r['tasks']} hops plus the nodes' "
                  f"{r['node_ms_per_hop']:.2f} ms a hop")
    console.print(f"greedy tokens identical (one process, frames direct and chained, HTTP): {r['tokens_identical']} ({args.tokens} tokens); "
                  f"load average {r['loadavg_start']} at the start, {r['loadavg_end']} at the end, on {r['cpus']} cores")


if __name__ == "__main__":
    main()
