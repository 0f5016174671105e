"""The 3-node pipeline over an emulated WAN: each node and the client in its own network namespace, joined
by a bridge, every link shaped by ``tc netem`` (delay for 0, 5, 20 and 50 ms round trips, 100 Mbit/s).

Run: .venv/bin/python bench/wan.py [--model smollm2-135m] [--rtt 0,5,20,50] [--tokens 16] [--json]

tc netem needs root, iproute2 and the kernel's netem qdisc. Where any is missing the reason is printed
and the same links are emulated in userspace instead (``bench/delayline.py``: TCP relays on loopback
that delay and rate-limit each direction); ``--netem-only`` skips instead.

Printed per setting: measured greedy tokens/s beside the floor
    T = sum(stage compute) + messages x RTT/2 + sum(message bytes) / bandwidth + messages x overhead,
one term per one-way message a decode step needs. The client's steps are answered directly by the last
node (``PipelineClient``'s default): tasks + 1 messages (the token to the first node, the activations
node to node, the logits from the last node to the client). The floor of the same step answered back
along the chain (2 x tasks messages, the logits crossing every link) is printed beside it.
Addresses are private 10.x ones inside namespaces this script makes and deletes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

SUBNET = "10.214.0"
RATE_MBIT = 100


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _tc(ns: str, *args: str) -> None:
    r = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {ns}: {r.stderr.strip()}")


class Namespaces:
    """A hub namespace with a bridge; the client and each node in their own namespace on a veth pair."""

    def __init__(self, nodes: int) -> None:
        tag = f"sw{os.getpid() % 100000}"
        self.hub = f"{tag}hub"
        self.ends = [f"{tag}c", *(f"{tag}n{i}" for i in range(nodes))]  # client first
        self.addrs = [f"{SUBNET}.{10 + i}" for i in range(len(self.ends))]
        self.made: list[str] = []

    def __enter__(self) -> Namespaces:
        try:
            for ns in (self.hub, *self.ends):
                _ip("netns", "add", ns)
                self.made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i, ns in enumerate(self.ends):
                _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", f"p{i}")
                _ip("-n", self.hub, "link", "set", f"p{i}", "netns", ns)
                _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0")
                _ip("-n", self.hub, "link", "set", f"v{i}", "up")
                _ip("-n", ns, "addr", "add", f"{self.addrs[i]}/24", "dev", f"p{i}")
                _ip("-n", ns, "link", "set", f"p{i}", "up")
            self.shape(0.0)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def shape(self, rtt_ms: float) -> None:
        """Every packet crosses two shaped egresses (its sender's end, then the bridge port to its receiver),
        each delaying a quarter of the round trip and limited to the link rate."""
        delay = f"{rtt_ms / 4:.3f}ms"
        for i, ns in enumerate(self.ends):
            for where, dev in ((ns, f"p{i}"), (self.hub, f"v{i}")):
                _tc(where, "qdisc", "replace", "dev", dev, "root", "netem", "delay", delay, "rate", f"{RATE_MBIT}mbit",
                    "limit", "100000")

    def __exit__(self, *exc: object) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()


def why_not() -> str | None:
    """The reason this machine cannot run the emulation, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 ('ip' and 'tc') is not installed"
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    try:
        with Namespaces(0):
            pass
    except RuntimeError as exc:
        return f"cannot build shaped namespaces here: {exc}"
    return None


def _wait_log(d, text: str, timeout: float = 300) -> None:  # noqa: ANN001 - Daemon
    """Readiness from the log: this process cannot reach addresses inside the namespaces."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not d.alive():
            raise RuntimeError(f"{d.name} exited:\n{d.log.read_text()[-3000:]}")
        if text in d.log.read_text():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{d.name}: not ready after {timeout}s")


def message_bytes(plan, sends: list[list[str]], want: str = "logits") -> list[int]:  # noqa: ANN001
    """Bytes of each one-way message of a decode step (one token, batch 1) answered along the chain:
    requests forward, replies back (the direct answer's messages are the requests and one reply)."""
    specs = {s.name: s for t in plan.tasks for s in (*t.inputs, *t.outputs)}

    def size(names) -> int:  # noqa: ANN001
        total = 0
        for n in names:
            s = specs[n]
            total += int(np.prod([d if isinstance(d, int) else 1 for d in s.shape])) * np.dtype(s.dtype).itemsize
        return total

    forward = [size(["input_ids"])] + [size(s) for s in sends[:-1]]
    return forward + [size([want])] * len(plan.tasks)


def inner(args: argparse.Namespace) -> None:
    """Run inside the client namespace: one warm-up, then timed greedy tokens; prints one JSON line."""
    from splitup.client.pipeline import PipelineClient
    from splitup.partition.task import Plan

    plan = Plan.load(Path(args.plan_dir))
    with PipelineClient(plan, args.urls.split(","), hop_timeout=30) as client:
        prompt = [int(x) for x in args.prompt.split(",")]
        client.generate(prompt, 2)
        with client.session() as gen:
            times, compute, tokens, direct = [], [], [], []
            ids = np.asarray([prompt], np.int64)
            for _ in range(args.tokens):
                t0 = time.perf_counter()
                logits = gen.step(ids)
                times.append(time.perf_counter() - t0)
                compute.append(sum(h["ms"] for h in client.last_hops) / 1000)
                direct.append(client.last_direct)
                tokens.append(int(np.argmax(logits[0, -1])))
                ids = np.asarray([[tokens[-1]]], np.int64)
    print(json.dumps({"step_s": statistics.median(times[1:]), "compute_s": statistics.median(compute[1:]),
                      "tokens": tokens, "direct": all(direct)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rtt", default="0,5,20,50", help="round-trip times to emulate, ms")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--overhead-ms", type=float, default=0.5, help="software overhead per message in the floor")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--netem-only", action="store_true", help="skip (with the reason) where tc netem is unavailable "
                    "instead of falling back to the userspace delay line")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plan-dir", help=argparse.SUPPRESS)
    ap.add_argument("--urls", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args)
        return
    reason = why_not()
    if reason is not None and args.netem_only:
        print(json.dumps({"skipped": reason}) if args.json else f"skipped: {reason}")
        return
    from nodes import running_nodes, split_model

    from splitup.client.pipeline import plan_sends
    from splitup.client.sampling import generate_tokens
    from splitup.runtime.local import LocalPipeline

    load_start = os.getloadavg()
    rows = []
    with split_model(args.model, args.nodes) as split, ExitStack() as stack:
        plan = split.plan
        local = LocalPipeline(split.plan_dir)
        want = generate_tokens(lambda ids: local.run({"input_ids": ids})["logits"], split.prompt, args.tokens)
        sizes = message_bytes(plan, plan_sends(plan.tasks, ["logits"])[1])
        if reason is None:
            emulation = f"tc netem, {args.nodes} nodes and the client in network namespaces"
            ns = stack.enter_context(Namespaces(args.nodes))
            nodes = stack.enter_context(running_nodes(
                split, hosts=ns.addrs[1:], extra=["--log-level", "info"],
                prefixes=[["ip", "netns", "exec", n] for n in ns.ends[1:]],
                ready=lambda d: _wait_log(d, "Uvicorn running on")))
            client_prefix = ["ip", "netns", "exec", ns.ends[0]]
            urls = [d.url for d in nodes]
        else:
            emulation = f"userspace delay line (bench/delayline.py) on loopback; tc netem unavailable: {reason}"
            nodes = stack.enter_context(running_nodes(split))
            client_prefix, urls, links = [], [], []
            for i, d in enumerate(nodes):
                http_port = int(d.url.rsplit(":", 1)[1])
                frame_port = httpx.get(d.url + "/health", timeout=10).json()["frames"]
                host = f"127.0.1.{i + 1}"  # one loopback address per node: its relay takes both of its ports
                links += [f"{host}:{p}=127.0.0.1:{p}" for p in (http_port, frame_port)]
                urls.append(f"http://{host}:{http_port}")
        for rtt in [float(x) for x in args.rtt.split(",")]:
            if reason is None:
                ns.shape(rtt)
                line = None
            else:
                line = subprocess.Popen([sys.executable, str(Path(__file__).with_name("delayline.py")), "--delay-ms",
                                         str(rtt / 2), "--rate-mbit", str(RATE_MBIT), *links],
                                        stdout=subprocess.PIPE, text=True)
                assert line.stdout is not None and line.stdout.readline().strip() == "ready"
            try:
                r = subprocess.run([*client_prefix, sys.executable, __file__, "--inner", "--plan-dir",
                                    str(split.plan_dir), "--urls", ",".join(urls), "--prompt",
                                    ",".join(map(str, split.prompt)), "--tokens", str(args.tokens)],
                                   capture_output=True, text=True, timeout=1800, env={**os.environ})
            finally:
                if line is not None:
                    line.terminate()
                    line.wait(10)
            if r.returncode != 0:
                raise RuntimeError(f"client at {rtt} ms RTT failed:\n{r.stderr[-3000:]}")
            got = json.loads(r.stdout.strip().splitlines()[-1])
            direct_sizes = sizes[: len(plan.tasks)] + sizes[-1:]
            floor, chain = (got["compute_s"] + len(m) * (rtt / 2000 + args.overhead_ms / 1000)
                            + sum(m) * 8 / (RATE_MBIT * 1e6) for m in (direct_sizes, sizes))
            rows.append({"rtt_ms": rtt, "measured_ms": round(got["step_s"] * 1000, 2),
                         "floor_ms": round(floor * 1000, 2), "chain_floor_ms": round(chain * 1000, 2),
                         "direct": got["direct"], "compute_ms": round(got["compute_s"] * 1000, 2),
                         "over_floor": round(got["step_s"] / floor - 1, 3),
                         "identical": got["tokens"] == want, "loadavg": round(os.getloadavg()[0], 2)})
    result = {"model": split.label, "tasks": len(plan.tasks), "emulation": emulation, "rate_mbit": RATE_MBIT,
              "message_bytes": direct_sizes, "chain_message_bytes": sizes,
              "overhead_ms": args.overhead_ms, "rows": rows, "loadavg_start": [round(x, 2) for x in load_start],
              "loadavg_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(result))
        return
    t = Table(title=f"{split.label}: {len(plan.tasks)} nodes over emulated links of {RATE_MBIT} Mbit/s (tc netem)")
    for col in ("RTT", "measured / token", "tokens/s", "floor (direct answer)", "over floor",
                "floor (answer along the chain)", "stage compute", "tokens identical", "load avg"):
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(f"{row['rtt_ms']:.0f} ms", f"{row['measured_ms']:.1f} ms", f"{1000 / row['measured_ms']:.1f}",
                  f"{row['floor_ms']:.1f} ms", f"{100 * row['over_floor']:+.0f}%", f"{row['chain_floor_ms']:.1f} ms",
                  f"{row['compute_ms']:.1f} ms", str(row["identical"]), f"{row['loadavg']:.2f}")
    Console().print(t)
    Console().print(f"emulation: {emulation}")
    Console().print(f"message sizes per decode step (bytes): {direct_sizes}; load average {result['loadavg_start']} at the "
                    f"start, {result['loadavg_end']} at the end, on {result['cpus']} cores")


if __name__ == "__main__":
    main()
