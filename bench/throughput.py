"""Throughput with concurrent users: 1, 4, 8 and 16 greedy streams through 3 node processes, and the same
streams in one process, as a table.

Run: .venv/bin/python bench/throughput.py [--model smollm2-135m] [--streams 1,4,8,16] [--tokens 16] [--json]

Each stream is one user's generation (its own sessions on every node). The plan is built with
``--batch`` = the largest stream count, so a node runs the decode steps of all its sessions that arrive
together in one engine call (``splitup.runtime.batching``). "One process" runs the same streams through
the same batched tasks in this process, without any transport. Every stream's tokens are checked against
the same prompt generated alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodes import running_nodes, split_model  # noqa: E402

from splitup.client.pipeline import PipelineClient, plan_sends  # noqa: E402
from splitup.node import Node, NodeConfig  # noqa: E402
from splitup.node.wire import Envelope, Hop  # noqa: E402
from splitup.partition.task import Plan  # noqa: E402


class LocalStream:
    """One stream through every task held by an in-process node: the same batched engine calls, no transport."""

    def __init__(self, node: Node, plan: Plan) -> None:
        self.node, self.plan = node, plan
        self.sessions = [node.open_session(t.task_id) for t in plan.tasks]
        self.sends = plan_sends(plan.tasks, ["logits"])[1]
        self.n = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        last = len(self.plan.tasks) - 1
        hops = [Hop(["http://local"], t.task_id, send, sid, self.n, ["logits"] if k == last else [])
                for k, (t, sid, send) in enumerate(zip(self.plan.tasks, self.sessions, self.sends, strict=True))]
        env = Envelope("local", 0, hops)
        tensors = {"input_ids": ids}
        for _ in hops:
            tensors = self.node.compute(env, tensors)
            env = env.next() if env.hop + 1 < len(hops) else env
        self.n += 1
        return tensors["logits"]

    def close(self) -> None:
        for sid in self.sessions:
            self.node.sessions.close(sid)


def run_streams(make_step, prompts: list[list[int]], tokens: int) -> dict:  # noqa: ANN001 - () -> (step, close)
    """All streams at once: prefill, then ``tokens`` greedy decode steps each; decode timings only."""
    n = len(prompts)
    barrier = threading.Barrier(n + 1)
    out: list[list[int]] = [[] for _ in range(n)]
    lat: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []
    done_at = [0.0] * n

    def stream(i: int) -> None:
        step, close = make_step()
        try:
            logits = step(np.asarray([prompts[i]], np.int64))
            out[i].append(int(np.argmax(logits[0, -1])))
            barrier.wait(timeout=600)
            for _ in range(tokens - 1):
                t0 = time.perf_counter()
                logits = step(np.asarray([[out[i][-1]]], np.int64))
                lat[i].append(time.perf_counter() - t0)
                out[i].append(int(np.argmax(logits[0, -1])))
            done_at[i] = time.perf_counter()
        except BaseException as exc:  # re-raised by the caller
            errors.append(exc)
            barrier.abort()
        finally:
            close()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=600)
    except threading.BrokenBarrierError:
        pass  # a stream failed: its error is raised below
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    wall = max(done_at) - start
    flat = sorted(x for s in lat for x in s)
    return {"tokens": out, "tok_s": n * (tokens - 1) / wall, "p50_ms": 1000 * statistics.median(flat),
            "p95_ms": 1000 * flat[min(len(flat) - 1, int(0.95 * len(flat)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=16, help="tokens generated per stream")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.streams.split(",")]
    load_start = os.getloadavg()
    rows = []
    with split_model(args.model, args.nodes, batch=max(counts), context=64 + args.tokens) as split:
        plan = split.plan
        prompts = [[*split.prompt[:-1], split.prompt[-1] + i] for i in range(max(counts))]
        local = Node(NodeConfig(threads=args.threads, frame_port=None, max_sessions=4 * max(counts) * len(plan.tasks)))
        for d in sorted((split.plan_dir / "tasks").iterdir()):
            local.load_bundle(d)

        def local_step():  # noqa: ANN202
            s = LocalStream(local, plan)
            return s.step, s.close

        alone = [run_streams(local_step, [p], args.tokens)["tokens"][0] for p in prompts]
        extra = ["--max-concurrent", str(2 * max(counts)), "--max-sessions", str(4 * max(counts))]
        with running_nodes(split, threads=args.threads, extra=extra) as nodes, \
                PipelineClient(plan, [d.url for d in nodes]) as client:
            client.generate(split.prompt, 2)  # warm-up: connections and allocations

            def pipe_step():  # noqa: ANN202
                g = client.session()
                return g.step, g.close

            for n in counts:
                one = run_streams(local_step, prompts[:n], args.tokens)
                pipe = run_streams(pipe_step, prompts[:n], args.tokens)
                rows.append({"streams": n, "pipeline": {k: v for k, v in pipe.items() if k != "tokens"},
                             "one_process": {k: v for k, v in one.items() if k != "tokens"},
                             "identical": pipe["tokens"] == one["tokens"] == alone[:n],
                             "loadavg": round(os.getloadavg()[0], 2)})
    base = rows[0]["pipeline"]["tok_s"]
    for r in rows:
        r["scaling_vs_one_stream"] = round(r["pipeline"]["tok_s"] / base, 2)
    result = {"model": split.label, "tasks": len(plan.tasks), "tokens": args.tokens, "rows": rows,
              "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "cpus": os.cpu_count(), "identical": all(r["identical"] for r in rows)}
    if args.json:
        print(json.dumps(result))
    else:
        _table(result)
    if not result["identical"]:
        sys.exit("a stream's tokens differ from generating it alone")


def _table(r: dict) -> None:
    t = Table(title=f"{r['model']}: concurrent greedy streams, {r['tasks']} nodes vs one process, "
                    f"{r['tokens']} tokens each")
    for col in ("streams", "3 nodes tok/s", "x one stream", "p50 / p95 per token", "one process tok/s",
                "p50 / p95 per token ", "nodes / one process", "tokens identical", "load avg"):
        t.add_column(col, justify="right")
    for row in r["rows"]:
        p, o = row["pipeline"], row["one_process"]
        t.add_row(str(row["streams"]), f"{p['tok_s']:.1f}", f"{row['scaling_vs_one_stream']:.2f}x",
                  f"{p['p50_ms']:.0f} / {p['p95_ms']:.0f} ms", f"{o['tok_s']:.1f}",
                  f"{o['p50_ms']:.0f} / {o['p95_ms']:.0f} ms", f"{p['tok_s'] / o['tok_s']:.2f}x",
                  str(row["identical"]), f"{row['loadavg']:.2f}")
    Console().print(t)
    Console().print(f"load average {r['loadavg_start']} at the start, {r['loadavg_end']} at the end, on {r['cpus']} cores")


if __name__ == "__main__":
    main()
