"""The web console in headless Chromium (Debian's chromium, driven by playwright): nodes, models and jobs
appear, a prompt typed into the console runs as a job, and its tasks show up settled and verified; a job
the gateway wound up after a SIGKILL shows up failed and refunded, with its refund."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("SPLITUP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(env, tmp_path_factory):
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium); the console is untested here")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    args=ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(env.url + "/")
            yield pg
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: $SPLITUP_SCREENSHOTS if set (to look at them), else a temporary directory."""
    where = os.environ.get("SPLITUP_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _shot(page, shots: Path, name: str) -> Path:
    target = shots / f"console-{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000  # a real rendering, not a blank page
    return target


def test_console_shows_nodes_models_and_tasks(env, page, shots) -> None:
    page.wait_for_selector("[data-testid=node-row]", timeout=20_000)
    page.wait_for_function("document.querySelectorAll('[data-testid=node-row]').length >= 4", timeout=20_000)
    names = page.locator("[data-testid=node-row] strong").all_inner_texts()
    assert set(env.net.node_names) <= set(names)
    page.wait_for_function("document.querySelectorAll('[data-testid=heartbeat].alive').length >= 4", timeout=20_000)
    # the on-chain heartbeat beside the polled one (each market node beat when it registered, at least)
    assert page.locator("[data-testid=chain-heartbeat].alive").count() >= 4
    llama = page.locator("[data-testid=model]", has_text="tiny-llama")
    assert llama.locator("[data-testid=task-row]").count() == 3
    assert "verification rate 100.0%" in page.locator("[data-testid=overview]").inner_text()
    _shot(page, shots, "market")


def test_a_prompt_becomes_a_settled_verified_job(env, page, shots) -> None:
    before = page.locator("[data-testid=job-row]").count()
    page.fill("#ask-prompt", "Hi")
    page.fill("#ask-max", "5")
    page.click("#ask-send")
    page.wait_for_selector("#ask-out[data-done='1']", timeout=60_000)
    assert page.locator("[data-testid=answer]").inner_text() != ""
    # The console polls: the job appears, then its tasks settle once validators have voted.
    page.wait_for_function(
        f"document.querySelectorAll('[data-testid=job-row]').length > {before}", timeout=30_000)
    page.wait_for_function(
        "[...document.querySelectorAll('[data-testid=job-row]')].some(r => r.dataset.state === 'closed' && "
        "r.querySelectorAll('[data-testid=task-status][data-status=SETTLED]').length === 3 && "
        "r.querySelectorAll('[data-testid=verdict].agree').length === 3)", timeout=60_000)
    # Heartbeats are live: the nodes that ran the job report the hops they computed.
    page.wait_for_function(
        "[...document.querySelectorAll('[data-testid=node-row]')].filter(r => /[1-9][0-9]* hops/.test(r.innerText))"
        ".length >= 2", timeout=20_000)
    shot = _shot(page, shots, "job")
    row = page.locator("[data-testid=job-row][data-state=closed]").first
    assert row.locator("[data-testid=task-status]").count() == 3
    assert shot.exists()


def test_a_job_of_a_killed_gateway_is_wound_up_and_the_console_shows_its_refund(env, page, shots) -> None:
    """SIGKILL the gateway while it streams: restarted, it winds the job up (committed work paid, the rest
    refunded, the draw secret it had written down revealed), and the console shows the job as failed and
    refunded, with the refund."""
    body = {"model": "tiny-llama", "prompt": "kill the gateway", "max_tokens": 48, "temperature": 0, "stream": True}
    with httpx.stream("POST", env.url + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break
        env.net.procs.kill(env.gateway)  # SIGKILL while it streams
    env.net.procs.restart(env.gateway)
    env.net.procs.wait_http(env.gateway)
    deadline = time.monotonic() + 180  # every task is verified in this market: validators replay it
    row: dict = {}
    while time.monotonic() < deadline:
        rows = [j for j in httpx.get(env.url + "/api/jobs", timeout=10).json() if j.get("prompt") == body["prompt"]]
        row = rows[0] if rows else {}
        if row.get("state") == "wound_up":
            break
        time.sleep(0.5)
    assert row.get("state") == "wound_up", row
    # Closed, its refund shown (the escrow less what the delivered work was paid: here every task had
    # computed its part before the kill, so the nodes committed it and were paid).
    assert row["closed"] is True and row["refund"] == row["deposit"] - row["paid"] >= 0
    assert "restarted" in row["error"]
    # The draw secret was written down with the job and revealed after the restart: the tasks were drawn
    # with it (a lost secret leaves the job unrevealed, and every task verified by the fail-safe).
    assert row["revealed"] is True and "secret" not in row
    db = sqlite3.connect(f"file:{env.net.root / 'gateway.sqlite'}?mode=ro", uri=True)
    try:
        (stored,) = db.execute("SELECT body FROM jobs WHERE address = ?", (row["address"],)).fetchone()
    finally:
        db.close()
    assert json.loads(stored)["secret"] == ""  # forgotten once the job is over
    # What the nodes computed before the kill was committed and paid; nobody was slashed.
    assert all(t["status"] in ("SETTLED", "RELEASED") and t["node_slashed"] == 0 for t in row["tasks"])
    # The console (still open from before the kill) shows it: failed, refunded, with the refund in SOL.
    sel = f"[data-testid=job-row][data-address='{row['address']}'][data-state=wound_up]"
    page.wait_for_selector(sel, timeout=30_000)
    shown = page.locator(sel)
    assert "failed, refunded" in shown.locator("[data-testid=job-state]").inner_text()
    assert float(shown.locator(":scope > td").last.inner_text()) == pytest.approx(row["refund"] / 1e9, abs=1e-6)
    _shot(page, shots, "wound-up")
