"""A chaos run with the books checked (issue 13): the whole local market as processes (ledger, store,
four market nodes, the gateway) serving a stream of requests, some malformed or over-long, while nodes,
the gateway and the ledger are killed with SIGKILL at random moments and started again.

Afterwards every job must be closed, no collateral locked, no stake lost by a node that was never
killed, the client's spending must equal what it paid for delivered work plus transaction fees, the
lamports of all accounts together must have changed by exactly the fees, and each time the ledger was
killed its SQLite state after the kill must equal what its RPC reported just before.

``bench/chaos.py`` runs it in full and prints the table; ``tests/gateway/test_chaos.py`` runs a short form.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from solders.pubkey import Pubkey

from splitup.demo.network import LocalMarket
from splitup.demo.procs import Child, ProcessError
from splitup.market.transport import DEFAULT_PROGRAM_ID

FINAL = ("closed", "wound_up")


@dataclass
class ChaosReport:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # served / refused_400 / busy_429 / failed
    kills: Counter[str] = field(default_factory=Counter)  # node / gateway / ledger
    killed_nodes: set[str] = field(default_factory=set)
    jobs_posted: int = 0
    jobs_closed: int = 0  # served and settled
    jobs_wound_up: int = 0  # failed, wound up, refunded
    jobs_open_after: int = 0  # on chain, of the client, after the run
    locked_after: int = 0  # collateral still locked, all nodes
    lamports_before: int = 0
    lamports_after: int = 0
    transactions: int = 0
    fees: int = 0  # what the transactions paid, as the ledger recorded each (base and priority fees)
    client_fees: int = 0  # of them, paid by the client
    client_before: int = 0
    client_after: int = 0
    client_paid: int = 0  # for delivered work: nodes, validators, protocol fee (from the job reports)
    refunded: int = 0
    honest_stake_lost: int = 0
    killed_stake_lost: int = 0
    # Per node (by name): liveness faults and lost verdicts the chain counted during the run, and for a
    # killed node the tasks it held (accepted, or taken up to validate) at its kills: the most liveness
    # faults its kills can explain (None: the chain could not be read just before a kill).
    liveness_faults: Counter[str] = field(default_factory=Counter)
    verdicts_lost: Counter[str] = field(default_factory=Counter)
    held_at_kills: dict[str, int | None] = field(default_factory=dict)
    ledger_checks: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    load_avg: str = ""
    notes: list[str] = field(default_factory=list)


    def problems(self) -> list[str]:
        """Every book that does not balance, in words; empty when the run is clean."""
        out = []
        if self.jobs_open_after:
            out.append(f"{self.jobs_open_after} job(s) still open on chain")
        if self.locked_after:
            out.append(f"{self.locked_after} lamports of collateral still locked")
        if self.honest_stake_lost:
            out.append(f"nodes never killed lost {self.honest_stake_lost} lamports of stake")
        # Stake is lost only through these counters. Nobody cheats here, so no verdict may go against a
        # node; a liveness fault is explained only by a kill that found the node holding that many tasks.
        for name, n in sorted(self.verdicts_lost.items()):
            if n:
                out.append(f"{name} lost {n} verdict(s), yet no node cheats in this run")
        for name, n in sorted(self.liveness_faults.items()):
            held = self.held_at_kills.get(name, 0)
            if n and held is not None and n > held:
                out.append(f"{name} has {n} liveness fault(s); its kills found it holding {held} task(s)")
        if self.lamports_before - self.lamports_after != self.fees:
            out.append(f"lamports changed by {self.lamports_before - self.lamports_after}, fees were {self.fees}")
        if self.client_before - self.client_after != self.client_paid + self.client_fees:
            out.append(f"client spent {self.client_before - self.client_after}: not the {self.client_paid} paid "
                       f"for delivered work plus its {self.client_fees} of fees")
        if not all(self.ledger_checks):
            out.append(f"ledger state after a kill differed from RPC before it ({self.ledger_checks})")
        if self.jobs_closed + self.jobs_wound_up != self.jobs_posted:
            out.append(f"{self.jobs_posted} jobs posted, {self.jobs_closed} closed + {self.jobs_wound_up} wound up")
        return out


# --- books ------------------------------------------------------------------------------------------------------
def sqlite_accounts(path: Path) -> dict[str, tuple[int, bytes]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {k: (int(lam), bytes(data)) for k, lam, data in db.execute("SELECT pubkey, lamports, data FROM accounts")}
    finally:
        db.close()


def sqlite_last_seq(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT coalesce(max(seq), 0) FROM transactions").fetchone()[0])
    finally:
        db.close()


def sqlite_fees(path: Path, after_seq: int) -> tuple[int, int, dict[str, int]]:
    """Transactions recorded after ``after_seq``: their count, the fees they paid, and the fees by payer."""
    from solders.transaction import VersionedTransaction

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT tx, meta FROM transactions WHERE seq > ?", (after_seq,)).fetchall()
    finally:
        db.close()
    by_payer: dict[str, int] = {}
    total = 0
    for tx, meta in rows:
        fee = int(json.loads(meta).get("fee") or 0)
        payer = str(VersionedTransaction.from_bytes(bytes(tx)).message.account_keys[0])
        by_payer[payer] = by_payer.get(payer, 0) + fee
        total += fee
    return len(rows), total, by_payer


def rpc_accounts(net: LocalMarket, keys: list[Pubkey]) -> dict[str, tuple[int, bytes]]:
    from splitup.market.connect import connect

    t = connect(net.rpc_url, net.wallets["authority"]).t
    out = {str(k): (a.lamports, bytes(a.data)) for k, a in t.program_accounts(DEFAULT_PROGRAM_ID)}
    for k, a in zip(keys, t.get_accounts(keys), strict=True):
        if a is not None:
            out[str(k)] = (a.lamports, bytes(a.data))
    return out


# --- the run ----------------------------------------------------------------------------------------------------
class Chaos:
    def __init__(self, net: LocalMarket, gateway: Child, report: ChaosReport, *, seed: int,
                 say: Callable[[str], None]) -> None:
        self.net, self.gateway, self.report, self.say = net, gateway, report, say
        self.rng = random.Random(seed)
        self.ledger_db = net.root / "ledger" / "ledger.sqlite3"
        self.lock = threading.Lock()  # one kill at a time; requests go on meanwhile

    def wallet_keys(self) -> list[Pubkey]:
        return [kp.pubkey() for kp in self.net.wallets.values()]

    def kill_one(self, victim: str) -> None:
        with self.lock:
            if victim == "node":
                self._kill_node()
            elif victim == "gateway":
                self._kill_gateway()
            else:
                self._kill_ledger()
            self.report.kills[victim] += 1

    def _kill_node(self) -> None:
        # Restarted, not waited for: it loads while the next kill comes (the gateway's, say); only the
        # ledger waits for it (a node that starts while the ledger is down gives up), and ``revive`` sees
        # every process up again before the books are read.
        child = self.rng.choice(self.net.nodes)
        held = self._held(child)
        self.say(f"   SIGKILL {child.name} (holding {held} task(s))")
        self.net.procs.kill(child)
        self.report.killed_nodes.add(child.name)
        so_far = self.report.held_at_kills.get(child.name, 0)
        self.report.held_at_kills[child.name] = None if held is None or so_far is None else so_far + held
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.net.procs.restart(child)

    def _held(self, child: Child) -> int | None:
        """Stop the node, then count the tasks it holds on chain (accepted, or validating): what its kill
        may cost it by the liveness rule. Stopped first, so it takes nothing more between count and kill."""
        from splitup.market.connect import connect
        from splitup.market.constants import TaskStatus

        if child.proc.poll() is not None:
            return 0
        os.kill(child.proc.pid, signal.SIGSTOP)
        time.sleep(0.3)  # its transactions already sent land
        try:
            m = connect(self.net.rpc_url, self.net.wallets["authority"])
            me = m.node_address(self.net.wallets[child.name].pubkey())
            return sum((t.status == TaskStatus.ACCEPTED and t.node == me)
                       or (t.status == TaskStatus.VALIDATING and t.validator == me)
                       for _, info in m.jobs() for t in info.tasks)
        except Exception as exc:  # the ledger is slow or away: this kill explains any fault
            self.report.notes.append(f"tasks held by {child.name} at its kill unknown: {type(exc).__name__}")
            return None

    def _kill_gateway(self) -> None:
        self.say("   SIGKILL gateway")
        self.net.procs.kill(self.gateway)
        time.sleep(self.rng.uniform(0.2, 1.5))
        self.net.procs.restart(self.gateway)
        self.net.procs.wait_http(self.gateway)  # a gateway killed again while it starts would serve nothing

    def revive(self) -> None:
        """Every node and the gateway up and ready; one that died while starting (the ledger was down as
        it checked its stake) is started again, as an operator's supervisor would."""
        for child in (*self.net.nodes, self.gateway):
            for attempt in range(3):
                if child.proc.poll() is not None:
                    self.net.procs.restart(child)
                try:
                    if child is self.gateway:
                        self.net.procs.wait_http(child)
                    else:
                        wait_node(self.net, child)
                    break
                except (ProcessError, TimeoutError):
                    if attempt == 2:
                        raise

    def _kill_ledger(self) -> None:
        """Freeze every other process, read the ledger by RPC, SIGKILL it, read its SQLite file, compare."""
        self.revive()
        others = [c for c in (*self.net.nodes, self.gateway) if c.proc.poll() is None]
        for c in others:
            os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            # Requests already inside the ledger finish: on a loaded machine one sent just before the
            # freeze can land after a first read, so read until two reads agree (an acknowledged change
            # missing from the file after the kill is still caught: it shows in both reads).
            before = rpc_accounts(self.net, self.wallet_keys())
            for _ in range(10):
                time.sleep(0.3)
                again = rpc_accounts(self.net, self.wallet_keys())
                if again == before:
                    break
                before = again
            self.say("   SIGKILL ledger")
            self.net.procs.kill(self.net.ledger)
            after = sqlite_accounts(self.ledger_db)
            same = all(after.get(k) == v for k, v in before.items())
            self.report.ledger_checks.append(same)
            if not same:
                diff = [k for k, v in before.items() if after.get(k) != v]
                self.report.notes.append(f"ledger kill: {len(diff)} account(s) differ, e.g. {diff[:3]}")
        finally:
            for c in others:
                os.kill(c.proc.pid, signal.SIGCONT)
        time.sleep(self.rng.uniform(0.2, 1.0))
        self.net.procs.restart(self.net.ledger)
        self.net.procs.wait_http(self.net.ledger)


def wait_node(net: LocalMarket, child: Child, timeout: float = 120.0) -> None:
    net.procs.wait_http(child, timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            if httpx.get(child.url + "/market/startup", timeout=5).json().get("phase") == "ready":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{child.name} not ready after a restart; its log:\n{child.tail()}")


def _request(url: str, kind: str, i: int, context: int, why: list[str]) -> str:
    """One request of the stream; the gateway may be down for a while: try until it answers."""
    if kind == "malformed":
        body: Any = [{"model": "tiny-llama", "prompt": "x", "max_tokens": -1},
                     {"model": "tiny-llama", "prompt": 7},
                     {"model": "tiny-llama", "messages": "not a list"},
                     {"model": "tiny-llama", "prompt": "x", "temperature": "hot"}][i % 4]
    elif kind == "overlong":
        body = {"model": "tiny-llama", "prompt": "z" * (context * 4), "max_tokens": 4}
    else:
        body = {"model": "tiny-llama", "prompt": f"chaos {i}", "max_tokens": 4, "temperature": 0,
                "stream": bool(i % 2)}
    deadline = time.monotonic() + 120
    retries = 3  # on 5xx, as the openai client does
    while time.monotonic() < deadline:
        try:
            r = httpx.post(url + "/v1/completions", json=body, timeout=90)
        except httpx.HTTPError:
            time.sleep(0.5)  # the gateway is being restarted
            continue
        if r.status_code == 200:
            if body.get("stream") and "[DONE]" not in r.text:
                why.append(f"stream cut: {r.text[-200:]}")
                return "failed"  # the stream broke off (the gateway died mid-answer, or an error event)
            return "served"
        if r.status_code == 429:
            time.sleep(float(r.headers.get("retry-after", "1")))
            continue
        if r.status_code in (400, 413):
            return "refused_400"
        if r.status_code >= 500 and retries > 0:
            retries -= 1
            time.sleep(float(r.headers.get("retry-after", "1")))
            continue
        if r.status_code == 503:
            return "unavailable"  # the market (the ledger) was down: said so, with Retry-After
        why.append(f"{r.status_code}: {r.text[:200]}")
        return "failed"
    why.append("no answer within 120 s")
    return "failed"


def run_chaos(net: LocalMarket, gateway: Child, *, requests: int = 30, concurrency: int = 3, seed: int = 0,
              gap: tuple[float, float] = (2.0, 6.0), settle_timeout: float = 300.0,
              say: Callable[[str], None] = lambda _t: None) -> ChaosReport:
    """Drive ``requests`` through ``gateway`` while killing processes of ``net``; check the books after."""
    from splitup.market.connect import connect
    from splitup.sdk.limits import context_length

    report = ChaosReport(requests=requests)
    chaos = Chaos(net, gateway, report, seed=seed, say=say)
    m = connect(net.rpc_url, net.wallets["authority"])
    client = net.wallets["client"].pubkey()
    names = {str(m.node_address(net.wallets[c.name].pubkey())): c.name for c in net.nodes}
    before = {names[str(a)]: n for a, n in m.nodes() if str(a) in names}
    stakes_before = {name: n.stake for name, n in before.items()}
    report.client_before = m.t.balance(client)
    report.lamports_before = sum(v[0] for v in sqlite_accounts(chaos.ledger_db).values())
    seq_before = sqlite_last_seq(chaos.ledger_db)
    ctx = context_length(net.plan) or 128
    # The market may have served before (the tests share one): only the jobs of this run are its books.
    earlier = {j["address"] for j in httpx.get(gateway.url + "/api/jobs", timeout=30).json()}

    rng = random.Random(seed)
    kinds = ["normal"] * requests
    for i in rng.sample(range(requests), max(2, requests // 5)):
        kinds[i] = rng.choice(["malformed", "overlong"])
    t0 = time.monotonic()
    done = threading.Event()

    def killer() -> None:
        victims = ["node", "gateway", "ledger"]
        rng.shuffle(victims)
        k = 0
        while not done.wait(rng.uniform(*gap)):
            chaos.kill_one(victims[k % len(victims)])
            k += 1

    kt = threading.Thread(target=killer, name="chaos-killer", daemon=True)
    kt.start()
    with ThreadPoolExecutor(concurrency) as pool:
        why: list[str] = []
        outcomes = list(pool.map(lambda ik: _request(gateway.url, ik[1], ik[0], ctx, why), enumerate(kinds)))
    report.notes.extend(f"request failed: {w}" for w in why[:5])
    done.set()
    kt.join(timeout=180)
    for victim in ("node", "gateway", "ledger"):  # every kind killed at least once, even in a short run
        if not report.kills[victim]:
            chaos.kill_one(victim)
    chaos.revive()
    report.outcomes.update(outcomes)
    say(f"   {requests} requests done in {time.monotonic() - t0:.0f} s: {dict(report.outcomes)}; "
        f"kills {dict(report.kills)}")

    # Afterwards: the gateway winds up what is left; wait for every job closed and nothing locked.
    deadline = time.monotonic() + settle_timeout
    rows: list[dict[str, Any]] = []
    while True:
        try:
            rows = [j for j in httpx.get(gateway.url + "/api/jobs", timeout=10).json()
                    if j.get("source") == "gateway" and j["address"] not in earlier]
            open_chain = [a for a, info in m.jobs() if info.header.client == client]
            locked = sum(n.locked for _, n in m.nodes())
        except (httpx.HTTPError, ValueError):
            rows, open_chain, locked = [], ["?"], -1
        if not open_chain and locked == 0 and all(j["state"] in FINAL for j in rows):
            break
        if time.monotonic() > deadline:
            report.notes.append("not settled in time: " + json.dumps(
                [(j["address"][:8], j["state"], j.get("error", "")[:80]) for j in rows if j["state"] not in FINAL]))
            break
        time.sleep(1.0)
    report.seconds = time.monotonic() - t0
    report.jobs_posted = len(rows)
    report.jobs_closed = sum(j["state"] == "closed" for j in rows)
    report.jobs_wound_up = sum(j["state"] == "wound_up" for j in rows)
    report.client_paid = sum(int(j.get("paid") or 0) for j in rows if j.get("closed"))
    report.refunded = sum(int(j.get("refund") or 0) for j in rows if j.get("closed"))
    report.jobs_open_after = sum(info.header.client == client for _, info in m.jobs())
    nodes_after = {names[str(a)]: n for a, n in m.nodes() if str(a) in names}
    report.locked_after = sum(n.locked for n in nodes_after.values())
    for name, staked in stakes_before.items():
        lost = max(0, staked - nodes_after[name].stake)
        if name in report.killed_nodes:
            report.killed_stake_lost += lost
        else:
            report.honest_stake_lost += lost
        report.liveness_faults[name] = nodes_after[name].liveness_faults - before[name].liveness_faults
        report.verdicts_lost[name] = nodes_after[name].failed - before[name].failed
    report.client_after = m.t.balance(client)
    # Read the file the ledger keeps: the books as they would survive another crash.
    report.lamports_after = sum(v[0] for v in sqlite_accounts(chaos.ledger_db).values())
    report.transactions, report.fees, by_payer = sqlite_fees(chaos.ledger_db, seq_before)
    report.client_fees = by_payer.get(str(client), 0)
    report.load_avg = open("/proc/loadavg").read().split(" ")[0] if os.path.exists("/proc/loadavg") else "?"
    return report


def start_gateway(net: LocalMarket, *, port: int, queue_timeout: float = 10.0, max_running: int = 3,
                  task_timeout_slots: int = 1200) -> Child:
    """The gateway process, with short task windows (2 min at the local ledger's 100 ms slots): a node
    killed after receipting its input is expired, with the liveness penalty, within the run."""
    gw = net.procs.start("gateway", ["-m", "splitup", "gateway", "start", "--rpc-url", net.rpc_url,
                                     "--store", net.store_url, "--keypair", str(net.wallet_path("client")),
                                     "--port", str(port), "--db", str(net.root / "gateway.sqlite"),
                                     "--queue-timeout", str(queue_timeout), "--max-running", str(max_running),
                                     "--task-timeout-slots", str(task_timeout_slots),
                                     "--deadline-slots", str(4 * task_timeout_slots)],
                         f"http://127.0.0.1:{port}")
    net.procs.wait_http(gw)
    return gw
