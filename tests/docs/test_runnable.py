"""Every command block the docs mark runnable runs as written, so a documented command cannot drift.

A block is marked by an HTML comment ``<!-- runnable -->`` on the line before its fence (```sh or
```bash); unmarked blocks are prose. Each marked block runs under ``bash -euo pipefail`` in a fresh
temporary directory with this tree's ``splitup`` and ``python`` first on PATH. Daemons a block starts
with ``&`` run in the block's own process group, which is ended when the block is done; the documented
ports are swapped for free ones so that parallel runs cannot collide.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from splitup.demo.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"```(sh|bash)\s*$")
PORT = re.compile(r"(?<=127\.0\.0\.1:)(\d{4,5})|(?<=--port )(\d{4,5})")
TIMEOUT_S = 240


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, code) of every marked block; a marker not followed by a shell fence is an error."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1].strip()):
            raise AssertionError(f"{path.name}:{i + 1}: {MARKER} must be followed by a ```sh fence")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{path.name}:{i + 2}: unclosed fence")
        out.append((i + 2, "\n".join(lines[i + 2 : end])))
    return out


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


BLOCKS = [(doc, line, code) for doc in documents() for line, code in runnable_blocks(doc)]


def test_the_key_readme_commands_are_marked():
    readme = "\n".join(code for doc, _, code in BLOCKS if doc.name == "README.md")
    for command in ("splitup plan smollm2-135m", "splitup node start", "splitup plan llama-70b", "splitup econ",
                    "splitup models generate"):
        assert command in readme, command


def with_free_ports(code: str) -> str:
    # free_port, not a bare bind to port 0: a block's ports are all picked before any is bound, and the
    # kernel hands the same free port out twice about once in 14,000 picks
    ports: dict[str, str] = {}
    return PORT.sub(lambda m: ports.get(m.group(0)) or ports.setdefault(m.group(0), str(free_port())), code)


@pytest.mark.parametrize(("doc", "line", "code"), BLOCKS,
                         ids=[f"{d.name}:{line}" for d, line, _ in BLOCKS])
def test_documented_block_runs(tmp_path, doc, line, code):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    log = tmp_path / "output.log"
    # A file, not a pipe: the daemons inherit it and would hold a pipe open after the block is done.
    with open(log, "w") as sink:
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", with_free_ports(code)], cwd=tmp_path, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        # The block's daemons share its process group: end them all, whatever happened.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
    assert proc.returncode == 0, f"{doc.name}:{line} failed:\n{_excerpt(log.read_text())}"


def _excerpt(text: str, keep: int = 3000) -> str:
    """The start (where a daemon says why it failed) and the end (where the block gave up) of a long log."""
    return text if len(text) <= 2 * keep else f"{text[:keep]}\n[...]\n{text[-keep:]}"


def test_marker_without_a_fence_is_refused(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text(f"{MARKER}\n    splitup econ\n")
    with pytest.raises(AssertionError, match="must be followed"):
        runnable_blocks(bad)
    good = tmp_path / "good.md"
    good.write_text(f"text\n{MARKER}\n```sh\necho hi\n```\n```sh\nunmarked\n```\n")
    assert runnable_blocks(good) == [(3, "echo hi")]
