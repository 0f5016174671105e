"""The local ledger driven by @solana/web3.js 1.x and @solana/kit through node, at the default slot
time: every check of tests/market/js/compat.mjs must pass (`.ci/run` installs the packages with npm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_localnet import _wait_up

from splitup.demo.procs import free_port

JS = Path(__file__).parent / "js"
pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not (JS / "node_modules" / "@solana" / "kit").is_dir(),
                       reason="the JS clients are not installed: npm ci --prefix tests/market/js"),
]


def test_web3js_and_kit_against_the_local_ledger(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ledger = subprocess.Popen([sys.executable, "-m", "splitup", "ledger", "start", "--dir", str(tmp_path),
                               "--port", str(port)],  # the default 400 ms slot, as users run it
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        _wait_up(url, ledger)
        out = subprocess.run(["node", "compat.mjs", url, f"ws://127.0.0.1:{port + 1}"], cwd=JS, capture_output=True,
                             text=True, timeout=240)
    finally:
        ledger.kill()
        ledger.wait(timeout=10)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["client"] for r in results} == {"web3.js", "kit"}, out.stderr[-2000:]
    failed = [f"{r['client']} {r['method']}: {r['detail']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert len(results) >= 30
