"""The floor under ``bench/pipeline.py``'s frames figure: a bare Python relay with the same topology.

Run: .venv/bin/python bench/relay_floor.py [--steps 60] [--stream-mib 180] [--json]

Three relay processes in a chain and a client on loopback, as the pipeline's direct answers go: the
client sends 8 bytes to the first, each relay reads a frame with one ``recv_into``, "computes" by
streaming ``--stream-mib`` of memory (as an engine streams a SmolLM2 task's weights: the caches are cold
at every hop), and sends SmolLM2's hidden state (2,304 bytes) on with one ``sendmsg``; the last sends
the logits (196,608 bytes) to the client. No framing, routing, checks or records: what is left is the
operating system's part of a hop and the least Python can do. Per hop, CPU time beyond the "compute",
in the relays (each its own thread) and in the client, as the pipeline bench counts it; ``--stream-mib
0`` gives the same with warm caches.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import time

import numpy as np

HIDDEN = 576 * 4
LOGITS = 49152 * 4
STOP = b"\xff"


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def relay(index: int, listen: socket.socket, nxt: int, stream_bytes: int, out: mp.Queue) -> None:
    weights = np.ones(max(stream_bytes // 8, 1))
    up = _nodelay(listen.accept()[0])
    down = _nodelay(socket.create_connection(("127.0.0.1", nxt)))
    buf = bytearray(1 << 20)
    send = np.zeros((LOGITS if index == 2 else HIDDEN) // 4, np.float32)
    overheads: list[int] = []
    last = engine = None
    while True:
        n = up.recv_into(buf)
        now = time.thread_time_ns()
        if last is not None:
            overheads.append(now - last - engine)
        if n == 0 or buf[:1] == STOP:
            out.put(overheads)
            return
        np.frombuffer(buf, np.uint8, 8)  # the received tensor, as a view
        e0 = time.thread_time_ns()
        weights.sum()
        engine = time.thread_time_ns() - e0
        down.sendmsg([struct.pack("<I", send.nbytes), memoryview(send).cast("B")])
        last = now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--stream-mib", type=int, default=180, help="memory each relay streams per hop (0: warm caches)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(4)]
    ports = [s.getsockname()[1] for s in listeners]
    relays = [ctx.Process(target=relay, args=(i, listeners[i], ports[i + 1], args.stream_mib << 20, out))
              for i in range(3)]
    for p in relays:
        p.start()
    first = _nodelay(socket.create_connection(("127.0.0.1", ports[0])))
    back = _nodelay(listeners[3].accept()[0])
    buf = bytearray(LOGITS + 64)
    client: list[int] = []
    for _ in range(args.steps):
        c0 = time.thread_time_ns()
        first.sendmsg([struct.pack("<I", 4), b"\0\0\0\0"])
        got = 0
        while got < LOGITS + 4:
            got += back.recv_into(memoryview(buf)[got:])
        client.append(time.thread_time_ns() - c0)
    first.sendall(STOP)
    per_relay = [statistics.median(out.get(timeout=30)[5:]) / 1e3 for _ in relays]
    for p in relays:
        p.join(10)
    client_us = statistics.median(client[5:]) / 1e3
    result = {"stream_mib": args.stream_mib, "relay_us_per_hop": [round(x) for x in sorted(per_relay)],
              "client_us_per_step": round(client_us), "floor_ms_per_hop": round((sum(per_relay) + client_us) / 3e3, 3),
              "loadavg_start": [round(x, 2) for x in load], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bare Python relay, 3 hops + client, {args.stream_mib} MiB streamed per hop: relays "
              f"{result['relay_us_per_hop']} us a hop, client {result['client_us_per_step']} us a step, "
              f"{result['floor_ms_per_hop']} ms a hop (load {result['loadavg_start']})")


if __name__ == "__main__":
    main()
