"""Peak resident memory of node processes holding SmolLM2-135M tasks in fp32, int8 and int4, against the plan.

    .venv/bin/python bench/node_memory.py [--tokens 16] [--smaller]

For each precision the model is split into 3 tasks and one ``splitup node start --bundle`` process is
started per task (what a seller runs); a greedy generation goes through them, then each node's peak
resident set (VmHWM) is read from /proc. A node started with no task gives the runtime constant (Python,
FastAPI, onnxruntime); the table shows each node's peak beside the plan's VRAM figure for its task and
the ratio (peak - constant) / plan, which must stay <= 1.0. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from splitup.demo.procs import free_port
from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.partition.task import task_dir
from splitup.units import format_bytes


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


class Node:
    def __init__(self, bundle: Path | None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "splitup", "node", "start", "--port", str(self.port), "--threads", "1",
                "--cache", str(log.parent / f"cache-{self.port}")]
        if bundle is not None:
            args += ["--bundle", str(bundle)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("node not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _model(dtype: str, smaller: bool):  # noqa: ANN202 - onnx.ModelProto
    if smaller:
        from splitup.graph import zoo

        return zoo.build("tiny-llama", seed=0, dtype=dtype)
    from splitup.models.real import load_real_model

    return load_real_model("smollm2-135m", max_seq=64, dtype=dtype).model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--smaller", action="store_true", help="tiny-llama instead of SmolLM2 (seconds)")
    ap.add_argument("--dtypes", default="fp32,int8,int4")
    ap.add_argument("--workspace", type=int, default=64 << 20,
                    help="workspace allowance per task in the plan, bytes (the demo's 64 MiB; 0 with --smaller)")
    args = ap.parse_args()
    from splitup.client.pipeline import PipelineClient
    from splitup.partition.task import Plan

    table = Table(title=f"Node peak memory vs plan ({'tiny-llama' if args.smaller else 'SmolLM2-135M'}, 3 tasks, "
                        f"load average {os.getloadavg()[0]:.1f})")
    for col in ("dtype", "task", "plan VRAM", "peak RSS", "peak - constant", "ratio"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory(prefix="splitup-nodemem-") as tmp:
        root = Path(tmp)
        idle = Node(None, root / "idle.log")
        constant = _peak_rss(idle.proc.pid)
        idle.stop()
        worst = 0.0
        for dtype in args.dtypes.split(","):
            model = _model(dtype, args.smaller)
            out = root / dtype
            ws = 0 if args.smaller else args.workspace
            budget = budget_for_tasks(analyze(model), 3, workspace_bytes=ws)
            make_plan(model, dtype, budget, workspace_bytes=ws, out_dir=out)
            plan = Plan.load(out)
            nodes = [Node(task_dir(out, t), root / f"{dtype}-{t.index}.log") for t in plan.tasks]
            try:
                with PipelineClient(plan, [n.url for n in nodes]) as client:
                    client.generate([1, 2, 3, 4, 5, 6, 7, 8], args.tokens)
                for t, n in zip(plan.tasks, nodes, strict=True):
                    peak = _peak_rss(n.proc.pid)
                    ratio = (peak - constant) / t.vram_bytes
                    worst = max(worst, ratio)
                    table.add_row(dtype, str(t.index), format_bytes(t.vram_bytes), format_bytes(peak),
                                  format_bytes(peak - constant), f"{ratio:.2f}")
            finally:
                for n in nodes:
                    n.stop()
    console = Console(width=120)
    console.print(table)
    console.print(f"runtime constant (an idle node's peak RSS): {format_bytes(constant)}; worst ratio {worst:.2f}")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
