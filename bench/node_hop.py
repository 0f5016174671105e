"""A node's own part of a frame hop, apart from the pipeline: the real frame server against a bare relay.

Run: .venv/bin/python bench/node_hop.py [--steps 150] [--rounds 3] [--stream-mib 180] [--gap-ms 2] [--count-steps]
[--json]

One node process serves one frame connection, as the middle node of a 3-task route serves its upstream: an
upstream (this process) sends SmolLM2-sized decode steps (a 2,304-byte hidden state, direct answers), the node
"computes" by streaming ``--stream-mib`` of memory (as an engine streams a task's weights, so every hop runs
cold, as in ``bench/pipeline.py``) and sends the step on to a sink process. Per hop, the node thread's CPU time
between two engine calls: reading and checking the frame, admission, the hop record, sending it on. The same
with a bare relay (one ``recv_into``, one ``sendmsg``: ``bench/relay_floor.py``'s relay) in the same run,
alternating rounds, pinned to one core (upstream and sink on the other), so a change to the node's hop path
shows in seconds, with far less drift than the whole pipeline's figure. ``--count-steps`` also counts the
interpreter steps (bytecode instructions) a hop takes in the node: a figure that does not drift at all.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from splitup.node.frames import Frame, FrameSocket, pack
from splitup.node.wire import Envelope, Hop

HIDDEN = (1, 1, 576)
NEXT_URL = "http://127.0.0.1:9/"  # the route's next hop: the sink, whose frame port the node is told directly


class _Config:
    max_body_bytes = 1 << 30
    park_above_bytes = 1 << 30
    node_id = "bench"
    max_concurrent = 8


class StandInNode:
    """What the frame server needs of a ``Node``: a hop that streams the weights and returns a fresh hidden state."""

    config = _Config()
    hop_evidence = None
    shelf = None

    def __init__(self, stream_bytes: int, marks: list[int]) -> None:
        self.weights = np.ones(max(stream_bytes // 8, 1))
        self.marks = marks

    def expected_peers(self, env: Envelope) -> int:
        return 1

    def hop(self, env: Envelope, tensors: Any, handoff: Any) -> tuple[dict[str, np.ndarray], None]:
        self.marks.append(time.thread_time_ns())
        self.weights.sum()
        out = {"hidden_states": np.empty(HIDDEN, np.float32)}
        self.marks.append(time.thread_time_ns())
        return out, None


def _steps_counter() -> collections.Counter:
    """Interpreter steps of the threads started from now on (``sys.settrace`` with opcode events)."""
    count: collections.Counter = collections.Counter()

    def trace(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            count["steps"] += 1
        return trace

    threading.settrace(trace)
    return count


def node_process(mode: str, sink_port: int, stream_bytes: int, count: bool, steps: int, out: mp.Queue) -> None:
    os.sched_setaffinity(0, {os.cpu_count() - 1})
    marks: list[int] = []
    counter = _steps_counter() if count else None
    node = StandInNode(stream_bytes, marks)
    if mode == "node":
        from splitup.node.app import HopDispatch
        from splitup.node.stream import FrameForwarder, FrameServer

        forwarder = FrameForwarder(1 << 30)
        forwarder._addr[NEXT_URL] = ("127.0.0.1", sink_port)  # as if learnt from the next node's /health
        server = FrameServer(node, HopDispatch(node), forwarder)  # type: ignore[arg-type]
        out.put(server.start("127.0.0.1", 0))
    else:
        listen = socket.create_server(("127.0.0.1", 0))
        out.put(listen.getsockname()[1])
        threading.Thread(target=_bare_relay, args=(node, listen, sink_port), daemon=True).start()
    while len(marks) < 2 * steps:
        time.sleep(0.05)
    gaps = [marks[2 * k + 2] - marks[2 * k + 1] for k in range(steps - 1)]
    out.put({"gaps": gaps, "steps": None if counter is None else counter["steps"]})


def _bare_relay(node: StandInNode, listen: socket.socket, sink_port: int) -> None:
    up = listen.accept()[0]
    down = socket.create_connection(("127.0.0.1", sink_port))
    for s in (up, down):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 20)
    # a valid frame for the sink, made once: the relay sends the same bytes every hop
    head = b"".join(bytes(memoryview(b)) for b in pack(Frame("ok", {"h": np.zeros(HIDDEN, np.float32)}))[:3])
    while up.recv_into(buf):
        np.frombuffer(buf, np.uint8, 8)  # the received tensor, as a view
        out = node.hop(None, None, None)[0]["hidden_states"]  # type: ignore[arg-type]
        down.sendmsg([head, memoryview(out).cast("B")])


def sink_process(listen: socket.socket, steps: int, done: mp.Queue) -> None:
    os.sched_setaffinity(0, {0})
    conn = FrameSocket.over(listen.accept()[0])
    for i in range(steps):
        conn.read(1 << 30)
        done.put(i)


def one_round(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    sink_listen = socket.create_server(("127.0.0.1", 0))
    out: mp.Queue = ctx.Queue()
    done: mp.Queue = ctx.Queue()
    sink = ctx.Process(target=sink_process, args=(sink_listen, args.steps, done))
    node = ctx.Process(target=node_process, args=(mode, sink_listen.getsockname()[1], args.stream_mib << 20,
                                                  args.count_steps, args.steps, out))
    sink.start()
    node.start()
    os.sched_setaffinity(0, {0})
    route = [Hop([NEXT_URL if i == 2 else f"http://127.0.0.1:{7 + i}/"], os.urandom(32).hex(),
                 ["hidden_states"] if i < 2 else ["logits"], os.urandom(16).hex(), 0, [] if i < 2 else ["logits"])
             for i in range(3)]
    env = Envelope(os.urandom(8).hex(), 0, route, 30.0, {})
    record = {"hop": 0, "node": "n0", "task": route[0].task[:16], "ms": 15.123, "cpu_ms": 14.987}
    hidden = np.random.default_rng(0).standard_normal(HIDDEN).astype(np.float32)
    token = os.urandom(16).hex()
    up = FrameSocket("127.0.0.1", out.get(timeout=60), 10)
    try:
        for i in range(args.steps):
            # node 0's frame of step i to node 1 (the one measured), answered directly to the client
            step = env.at_steps([17 + i] * 3).next()
            up.send(Frame("exec", {"hidden_states": hidden}, step, hops=[dict(record)],
                          reply={"to": token, "id": f"{i:x}"}), 30)
            done.get(timeout=60)
            time.sleep(args.gap_ms / 1000)
        result = out.get(timeout=60)
    finally:
        up.close()
        for p in (node, sink):
            p.join(5)
            if p.is_alive():
                p.kill()
    gaps = result["gaps"][10:]  # past the first steps' allocations and connections
    return {"median_us": statistics.median(gaps) / 1e3, "mean_us": statistics.mean(gaps) / 1e3,
            "steps_per_hop": None if result["steps"] is None else result["steps"] / args.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stream-mib", type=int, default=180, help="memory streamed per hop (0: nothing)")
    ap.add_argument("--gap-ms", type=float, default=2.0,
                    help="pause between steps (0 with --stream-mib 0: caches as warm as they get)")
    ap.add_argument("--count-steps", action="store_true", help="also count interpreter steps (slows the hops)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 cores: the node on one, upstream and sink on the other")
    load = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {"node": [], "bare": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(one_round(mode, args))
    result: dict[str, Any] = {"stream_mib": args.stream_mib, "gap_ms": args.gap_ms, "steps": args.steps,
                              "rounds": args.rounds,
                              "loadavg_start": [round(x, 2) for x in load]}
    for mode, rounds in runs.items():
        result[f"{mode}_us_per_hop"] = round(statistics.mean(r["median_us"] for r in rounds), 1)
        result[f"{mode}_rounds_us"] = [round(r["median_us"]) for r in rounds]
        if args.count_steps:
            result[f"{mode}_steps_per_hop"] = round(statistics.mean(r["steps_per_hop"] for r in rounds))
    result["node_over_bare_us"] = round(result["node_us_per_hop"] - result["bare_us_per_hop"], 1)
    if args.json:
        print(json.dumps(result))
        return
    t = Table(title=f"a node's part of a hop, {args.stream_mib} MiB streamed per hop (medians of {args.rounds} "
                    f"rounds x {args.steps} hops)")
    for col in ("", "CPU per hop", "rounds", *(["interpreter steps per hop"] if args.count_steps else [])):
        t.add_column(col, justify="left" if not col else "right")
    for mode, label in (("node", "frame server (splitup.node.stream)"), ("bare", "bare relay")):
        t.add_row(label, f"{result[f'{mode}_us_per_hop']:.0f} us", " ".join(map(str, result[f"{mode}_rounds_us"])),
                  *([str(result[f"{mode}_steps_per_hop"])] if args.count_steps else []))
    t.add_row("the node's own part", f"{result['node_over_bare_us']:.0f} us", "", *([""] if args.count_steps else []))
    Console().print(t)
    print(f"load average at the start {result['loadavg_start']}")


if __name__ == "__main__":
    main()
