"""Load on the local market (issue 21): bursts of 1 to 256 concurrent requests through the gateway, a
sustained rate for a while, and concurrent SDK clients, against ``splitup demo --smaller``'s market
(4 node processes, the tiny model).

Run: .venv/bin/python bench/load.py [--bursts 1,4,16,32,64,256] [--rate 2] [--seconds 60] [--sdk 8]

Per row: requests, served (200), refused (429: p50 and p99 of the time to the answer; refused before the
body is read when slots and queue are full, at arrival when the estimated start lies beyond the 20 s
queue deadline, or while waiting once it can no longer be met; "late" counts those refused at the
deadline itself), failed, wall time, throughput, p50/p95/p99 latency of the served ones, what the gateway
queued, and after the row (once the gateway settled it): jobs left open on chain and collateral locked.
Every row ends with one more request that must be served. The short form runs in CI
(tests/gateway/test_edges.py, a burst of 32, every refusal under a second).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from splitup.demo.burst import burst_in_process
from splitup.demo.chaos import start_gateway
from splitup.demo.flow import prepare
from splitup.demo.network import LocalMarket, local_market
from splitup.demo.procs import free_port
from splitup.market.connect import connect


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def _one(http: httpx.AsyncClient, url: str, i: int) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        r = await http.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": f"load {i}",
                                                           "max_tokens": 16, "temperature": 0})
        return r.status_code, time.monotonic() - t0
    except httpx.HTTPError:
        return -1, time.monotonic() - t0


def burst(url: str, n: int) -> list[tuple[int, float]]:
    """From a lean client in its own process: the time a refusal takes is the gateway's, not this one's."""
    return [(a.status, a.seconds) for a in burst_in_process(url, n)]


async def sustained(url: str, rate: float, seconds: float) -> list[tuple[int, float]]:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=512)) as http:
        tasks = []
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            tasks.append(asyncio.create_task(_one(http, url, i)))
            i += 1
            await asyncio.sleep(1.0 / rate)
        return list(await asyncio.gather(*tasks))


def sdk_clients(net: LocalMarket, n: int) -> list[tuple[int, float]]:
    import splitup
    from splitup.sdk.errors import MarketBusy

    out: list[tuple[int, float]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t0 = time.monotonic()
        code = 200
        try:
            with splitup.Client(net.rpc_url, net.wallet_path("client"), store_url=net.store_url,
                                queue_timeout=10) as c:
                c.generate("tiny-llama", f"sdk {i}", max_tokens=16)
        except MarketBusy:
            code = 429
        except Exception:
            code = -1
        with lock:
            out.append((code, time.monotonic() - t0))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def after(net: LocalMarket, gw_url: str, timeout: float = 120.0) -> tuple[int, int, float, bool]:
    """Jobs of the client still open and collateral locked once settled (up to ``timeout``), how long
    that took, and whether one more request is served."""
    m = connect(net.rpc_url, net.wallets["authority"])
    me = net.wallets["client"].pubkey()
    t0 = time.monotonic()
    while True:
        open_jobs = sum(info.header.client == me for _, info in m.jobs())
        locked = sum(n.locked for _, n in m.nodes())
        if (not open_jobs and not locked) or time.monotonic() - t0 > timeout:
            break
        time.sleep(0.5)
    settled = time.monotonic() - t0
    r = httpx.post(gw_url + "/v1/completions", json={"model": "tiny-llama", "prompt": "next", "max_tokens": 4},
                   timeout=120)
    return open_jobs, locked, settled, r.status_code == 200


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", default="1,4,16,32,64,256")
    ap.add_argument("--rate", type=float, default=2.0, help="sustained requests per second")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the sustained rate runs")
    ap.add_argument("--sdk", type=int, default=8, help="concurrent SDK clients (0: skip)")
    ap.add_argument("--max-running", type=int, default=4)
    a = ap.parse_args()
    console = Console(width=200)
    rows = []
    with tempfile.TemporaryDirectory(prefix="splitup-load-") as tmp:
        root = Path(tmp)
        prep = prepare(root, smaller=True, tasks=3, nodes=4, workspace=0, prompt="unused")
        with local_market(root, prep.model, prep.plan_dir, prep.budgets, verify_rate_bps=800) as net:
            gw = start_gateway(net, port=free_port(), queue_timeout=20, max_running=a.max_running,
                               task_timeout_slots=3000)
            plan: list[tuple[str, object]] = [(f"burst {n}", int(n)) for n in a.bursts.split(",") if n]
            if a.rate > 0:
                plan.append((f"{a.rate:g}/s for {a.seconds:.0f} s", None))
            if a.sdk:
                plan.append((f"SDK x{a.sdk}", "sdk"))
            for label, what in plan:
                console.print(f"[bold]{label}[/bold] ...")
                adm_before = httpx.get(gw.url + "/api/overview", timeout=10).json()["admission"]
                t0 = time.monotonic()
                if what == "sdk":
                    res = sdk_clients(net, a.sdk)
                elif what is None:
                    res = asyncio.run(sustained(gw.url, a.rate, a.seconds))
                else:
                    res = burst(gw.url, int(what))  # type: ignore[arg-type]
                # A burst's wall is its slowest answer (its requests start together in the client
                # process, whose own start is not the gateway's time).
                wall = max(s for _, s in res) if what not in ("sdk", None) else time.monotonic() - t0
                adm = httpx.get(gw.url + "/api/overview", timeout=10).json()["admission"]
                open_jobs, locked, settled, next_ok = after(net, gw.url)
                rows.append((label, res, wall, adm["queued"] - adm_before["queued"],
                             adm["timed_out"] - adm_before["timed_out"], open_jobs, locked, settled, next_ok))
            load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    t = Table(title=f"gateway under load (tiny model, 4 nodes, max {a.max_running} running; load average {load})")
    for c in ("load", "requests", "served", "429", "429 in p50 / p99 s", "late", "failed", "wall s", "req/s",
              "p50 s", "p95 s", "p99 s", "queued", "open after", "locked after", "settled in s", "next"):
        t.add_column(c, justify="right")
    for label, res, wall, queued, late, open_jobs, locked, settled, next_ok in rows:
        ok = [s for c, s in res if c == 200]
        busy = [s for c, s in res if c == 429]
        t.add_row(label, str(len(res)), str(len(ok)), str(len(busy)),
                  f"{statistics.median(busy):.2f} / {pct(busy, 0.99):.2f}" if busy else "-", str(late),
                  str(sum(c not in (200, 429) for c, _ in res)), f"{wall:.1f}", f"{len(ok) / wall:.2f}",
                  f"{statistics.median(ok):.2f}" if ok else "-", f"{pct(ok, 0.95):.2f}" if ok else "-",
                  f"{pct(ok, 0.99):.2f}" if ok else "-", str(queued), str(open_jobs), str(locked),
                  f"{settled:.0f}", "served" if next_ok else "FAILED")
    console.print(t)
    return 0 if all(r[5] == 0 and r[6] == 0 and r[8] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
