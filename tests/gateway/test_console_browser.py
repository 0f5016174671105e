"""The web console in headless Chromium (Debian's chromium, driven by playwright): nodes, models and jobs
appear, a prompt typed into the console runs as a job, and its tasks show up settled and verified."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
