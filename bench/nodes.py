"""Shared by the pipeline benches: a model split into tasks and served by one node process per task."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.node.procs import Daemon, start_node  # noqa: E402

from splitup.partition import analyze, budget_for_tasks  # noqa: E402
from splitup.partition.plan import make_plan  # noqa: E402
from splitup.partition.task import Plan, load_task  # noqa: E402


@dataclass
class Split:
    plan: Plan
    plan_dir: Path
    prompt: list[int]
    label: str
    work: Path


@contextmanager
def split_model(name: str, tasks: int, *, batch: int = 1, max_seq: int = 64, context: int = 256) -> Iterator[Split]:
    """``name`` split into ``tasks`` tasks with bundles written; the real SmolLM2-135M when it is shipped."""
    from splitup.graph import zoo

    work = Path(tempfile.mkdtemp(prefix="splitup-bench-"))
    try:
        overrides = {"batch": batch, "max_seq": max_seq, "context": context}
        if name == "smollm2-135m":
            from splitup.models.real import build_real, load_real_model

            real = load_real_model(name, max_seq=8)  # only for the tokenizer
            prompt = real.encode("The three primary colors are")
            model, label = build_real(name, **overrides), "SmolLM2-135M (real weights)"
        else:
            model, prompt, label = zoo.build(name, seed=0, **overrides), [5, 17, 99, 3, 42, 7], f"{name} (seeded)"
        plan = make_plan(model, name, budget_for_tasks(analyze(model), tasks), workspace_bytes=0,
                         out_dir=work / "plan").plan
        del model
        yield Split(plan, work / "plan", prompt, label, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # bundles, store and node caches: several copies of the weights


@contextmanager
def running_nodes(split: Split, *, threads: int = 1, extra: Sequence[str] = (), hosts: Sequence[str] | None = None,
                  prefixes: Sequence[Sequence[str]] | None = None,
                  ready: Callable[[Daemon], None] | None = None) -> Iterator[list[Daemon]]:
    """One node process per task, loading its bundle from the plan directory (verified, as from a store);
    optionally each on its own address and under a command prefix (``ip netns exec NS``)."""
    bundles = {load_task(d, verify=False).task_id: d for d in (split.plan_dir / "tasks").iterdir()}
    nodes: list[Daemon] = []
    try:
        for i, t in enumerate(split.plan.tasks):
            kw: dict = {} if hosts is None else {"host": hosts[i]}
            if prefixes is not None:
                kw["prefix"] = prefixes[i]
            nodes.append(start_node(f"n{i}", split.work, extra=["--bundle", str(bundles[t.task_id]),
                                                                 "--threads", str(threads), *extra], **kw))
        for d in nodes:
            (ready or (lambda d: d.wait_ready(timeout=300)))(d)
        yield nodes
    finally:
        for d in nodes:
            d.stop()


def cpu_ns(pids: Sequence[int], *, serving: str | None = None) -> int:
    """CPU time used so far by threads of these processes, in ns (``/proc/PID/task/*/schedstat``): all of
    them, or with ``serving`` only those that serve that transport's hops, not background ones (heartbeat,
    uvicorn's ticks, status probes, HTTP control calls). ``http``: each node's main thread (its event loop
    takes the hops) and its compute pool; ``frames``: the threads a node names ``splitup-hop*`` in the OS
    (one per frame connection, which reads, computes and sends on; their relays; the compute pool), since
    the main thread's event loop takes no part in a frame's hop."""
    total = 0
    for pid in pids:
        task_dir = Path(f"/proc/{pid}/task")
        for tid in task_dir.iterdir():
            try:
                if serving is not None:
                    main = tid.name == str(pid)
                    hop = (tid / "comm").read_text().startswith("splitup-hop")
                    if not (hop or (main and serving == "http")):
                        continue
                total += int((tid / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended between listing and reading
    return total
