"""docs/node.md's seller walk-through, run as written: new wallet, config file, start, earn, report, top
up, unbond, drain and restart in the middle of a job stream, withdraw. Afterwards every job is closed, no
stake was lost, the restart downloaded nothing, and the node's page and /metrics answered."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from solders.keypair import Keypair

import splitup
from splitup.demo.models import byte_tokenizer_json
from splitup.demo.procs import Processes, free_port
from splitup.errors import SplitUpError
from splitup.market.connect import connect
from splitup.market.market import LAMPORTS_PER_SOL, MarketParams
from splitup.market.wallet import load_keypair, save_keypair
from splitup.partition.task import Plan

DOC = Path(__file__).parents[2] / "docs" / "node.md"
UNBONDING_SLOTS = 30  # 3 s at the test ledger's 100 ms slots


def walkthrough_steps() -> list[tuple[str, str]]:
    """The numbered steps of the doc's bash block, each with the block's export line in front."""
    text = DOC.read_text()
    block = re.search(r"## Selling compute: a walk-through.*?```bash\n(.*?)```", text, re.S)
    assert block, "docs/node.md lost its walk-through"
    lines = block.group(1).splitlines()
    export = lines[0]
    steps: list[tuple[str, str]] = []
    for line in lines[1:]:
        m = re.match(r"# (\d+)\. ", line)
        if m:
            steps.append((m.group(1), ""))
        elif steps:
            steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
    return [(n, f"set -e\n{export}\n{body}") for n, body in steps]


def test_doc_steps_are_numbered() -> None:
    assert [n for n, _ in walkthrough_steps()] == [str(i) for i in range(1, 8)]


def _run(step: str, script: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    # Output to a file, not a pipe: the node started with '&' outlives the step and keeps its stdout.
    with open(log, "a") as out:
        out.write(f"--- step {step}\n")
        out.flush()
        done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=240)
    return subprocess.CompletedProcess(done.args, done.returncode, log.read_text().rsplit(f"--- step {step}\n", 1)[1])


CHROMIUM = os.environ.get("SPLITUP_CHROMIUM", "/usr/bin/chromium")


def _page_in_browser(url: str, shots: Path) -> None:
    """The node's page as an operator sees it, in headless Chromium (skipped where there is none)."""
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        exe = None
    if exe is None:
        print("no Chromium/playwright: the node page is not browser-tested here")
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('[data-testid=task-row]').length === 3", timeout=20_000)
            assert page.locator("[data-testid=state]").inner_text() == "serving"
            page.wait_for_function("document.querySelector('[data-testid=market]').innerText.includes('tasks done')",
                                   timeout=20_000)
            market = page.locator("[data-testid=market]").inner_text()
            assert "3 / 0 / 0" in market and "SOL" in market, market
            assert "ms /" in page.locator("[data-testid=summary]").inner_text()  # latency percentiles
            page.screenshot(path=str(shots / "node-page.png"), full_page=True)
            assert (shots / "node-page.png").stat().st_size > 10_000
        finally:
            browser.close()


@contextmanager
def _stops_node(pid_file: Path) -> Iterator[None]:
    """The walk-through starts the node in the background: never leave it running after a failure."""
    try:
        yield
    finally:
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.timeout(600)
def test_seller_walkthrough(plan_dir: Path, tmp_path: Path) -> None:
    plan = Plan.load(plan_dir)
    work = tmp_path / "seller"
    work.mkdir()
    with Processes(tmp_path / "logs") as procs, _stops_node(work / "node.pid"):
        rpc_port, store_port, node_port = free_port(), free_port(), free_port()
        ledger = procs.start("ledger", ["-m", "splitup", "ledger", "start", "--dir", str(tmp_path / "ledger"),
                                        "--port", str(rpc_port), "--slot-ms", "100"], f"http://127.0.0.1:{rpc_port}")
        store = procs.start("store", ["-m", "splitup", "store", "serve", "--dir", str(tmp_path / "store"),
                                      "--port", str(store_port), "--writable"], f"http://127.0.0.1:{store_port}")
        procs.wait_http(ledger)
        procs.wait_http(store)
        authority, client = Keypair(), Keypair()
        save_keypair(authority, tmp_path / "authority.json")
        save_keypair(client, tmp_path / "client.json")
        market = connect(ledger.url, authority)
        for k in (authority, client):
            market.t.airdrop(k.pubkey(), 20 * LAMPORTS_PER_SOL)
        market.init_config(authority, MarketParams.flat(0, unbonding_slots=UNBONDING_SLOTS))  # one node: no validator
        tok = tmp_path / "tokenizer.json"
        tok.write_text(byte_tokenizer_json())
        published = subprocess.run([sys.executable, "-m", "splitup", "market", "publish", str(plan_dir), "--store",
                                    store.url, "--tokenizer", str(tok), "--eos-ids", "256", "--price", "0.001sol",
                                    "--keypair", str(tmp_path / "authority.json"), "--rpc-url", ledger.url],
                                   capture_output=True, text=True, timeout=120)
        assert published.returncode == 0, published.stderr

        env = {**os.environ, "STORE": store.url, "TASKS": ",".join(t.task_id for t in plan.tasks),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
        log = tmp_path / "walkthrough.log"
        steps = dict(walkthrough_steps())
        port_fix = lambda s: s.replace("127.0.0.1:8899", f"127.0.0.1:{rpc_port}").replace("8701", str(node_port))  # noqa: E731

        def step(n: str) -> subprocess.CompletedProcess[str]:
            done = _run(n, port_fix(steps[n]), work, env, log)
            assert done.returncode == 0, f"step {n} failed:\n{done.stdout}"
            return done

        step("1")
        step("2")
        step("3")
        node_url = f"http://127.0.0.1:{node_port}"
        seller = load_keypair(work / "seller.json").pubkey()

        def job(prompt: str) -> None:
            with splitup.Client(ledger.url, tmp_path / "client.json", store_url=store.url) as c:
                out = c.generate("tiny-llama", prompt, max_tokens=4, temperature=0)
                assert out.report is not None and out.report.closed

        job("earn")
        report = step("4").stdout
        assert "paid" in report and "tasks done 3" in report, report
        page = httpx.get(node_url + "/api/page", timeout=10).json()
        assert page["market"]["tasks_done"] == 3 and page["hops_done"] > 0
        metrics = httpx.get(node_url + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "splitup_node_hop_seconds_bucket" in metrics.text
        assert re.search(r"^splitup_market_tasks_done 3\.0$", metrics.text, re.M)
        # it scrapes: Prometheus' own parser reads every family
        families = {f.name for f in text_string_to_metric_families(metrics.text)}
        assert {"splitup_node_hops", "splitup_node_hop_seconds", "splitup_node_sessions",
                "splitup_market_stake"} <= families, families
        assert "<title>SplitUp node</title>" in httpx.get(node_url + "/", timeout=10).text
        _page_in_browser(node_url, tmp_path)

        five = step("5").stdout
        assert "added 1.000000000 SOL: stake 3.000000000 SOL" in five and "unbonding 0.500000000 SOL" in five, five

        # A client keeps sending jobs while the node drains and restarts: every job must end closed.
        errors: list[BaseException] = []
        stop_stream = threading.Event()

        def stream() -> None:
            i = 0
            while not stop_stream.is_set():
                try:
                    job(f"stream {i}")
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                i += 1

        streamer = threading.Thread(target=stream)
        streamer.start()
        time.sleep(1.0)
        bundles = work / "node-cache" / "tasks"  # the preloaded task bundles (announcements live beside them)
        cache_mtimes = {p: p.stat().st_mtime for p in bundles.rglob("*") if p.is_file()}
        six = step("6").stdout
        assert "stopped" in six and "ready" in six, six
        time.sleep(2.0)
        stop_stream.set()
        streamer.join(timeout=240)
        # A job caught between its node's accept and its first input is released by the drain (the node is
        # not slashed, the client is refunded that task) and fails with a typed error; nothing else may fail.
        assert all(isinstance(e, SplitUpError) for e in errors), errors
        # the restart loaded its tasks from the cache: nothing was written there again
        assert cache_mtimes and {p: p.stat().st_mtime for p in bundles.rglob("*") if p.is_file()} == cache_mtimes

        # withdraw is refused, naming the slot, until the unbonding period is over
        deadline = time.monotonic() + 60
        while True:
            done = _run("7", port_fix(steps["7"]), work, env, log)
            if done.returncode == 0:
                break
            assert "still unbonding until slot" in done.stdout, done.stdout
            assert time.monotonic() < deadline
            time.sleep(1.0)  # the node is still running: 'set -e' stopped the step before its stop
        assert "withdrew 0.500000000 SOL" in done.stdout and "stopped" in done.stdout, done.stdout

        n = market.node(seller)
        assert n.stake == 2 * LAMPORTS_PER_SOL + LAMPORTS_PER_SOL // 2  # 2 + 1 - 0.5: nothing slashed
        assert n.locked == 0 and n.failed == 0 and n.liveness_faults == 0
        deadline = time.monotonic() + 60
        while market.jobs() and time.monotonic() < deadline:  # failed jobs are wound up by their client
            time.sleep(0.5)
        assert market.jobs() == [], "every job is closed"
