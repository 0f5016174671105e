"""The demo's child processes: started with their output in log files, stopped by their own pids only.

``Processes`` is a context manager: on leaving it (normally, on an error or on Ctrl-C) every process it
started gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from splitup.errors import SplitUpError


class ProcessError(SplitUpError):
    """A child process exited early or never became ready."""


_HANDED_OUT: set[int] = set()
# Ports handed out on this machine lately, by any process (test workers, two demos): ``port time`` lines
_RECENT = Path(tempfile.gettempdir()) / f"splitup-ports-{os.getuid()}"
_RECENT_S = 120.0  # long enough for a child to start and bind what it was given


def free_port() -> int:
    """A loopback port nobody listens on, never the same twice in this process nor, for two minutes, in
    another one on this machine, whose successor is free too.

    Between this call and the child binding the port, the kernel may hand the same free port out again
    (several daemons start within milliseconds, here or in a process beside this one): two children on one
    port, one of them dead, and a health check answered by the other. Remembering what was handed out
    closes that window. The next port is kept back as well: the local ledger serves its websocket on RPC
    port + 1, where Solana clients look for it.
    """
    with open(_RECENT, "a+") as book:
        fcntl.flock(book, fcntl.LOCK_EX)  # released when the file closes
        book.seek(0)
        now, recent = time.time(), {}
        for line in book.read().split("\n"):
            port_text, _, when = line.partition(" ")
            if port_text.isdigit() and when.replace(".", "", 1).isdigit() and now - float(when) < _RECENT_S:
                recent[int(port_text)] = float(when)
        taken = _HANDED_OUT | recent.keys()
        while True:
            port = _offered()
            if port in taken or port + 1 in taken or port + 1 > 65535:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            break
        _HANDED_OUT.update((port, port + 1))
        book.seek(0)
        book.truncate()
        recent.update({port: now, port + 1: now})
        book.write("".join(f"{p} {when}\n" for p, when in recent.items()))
    return port


def _offered() -> int:
    """The free loopback port the kernel offers now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    args: tuple[str, ...] = ()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ProcessError(f"{self.name} exited with code {self.proc.returncode}; its log ({self.log}):\n"
                               f"{self.tail()}")


class Processes:
    def __init__(self, log_dir: Path, *, threads: int = 1) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        # One compute thread per process: the demo's processes share a few cores, and spinning
        # thread pools would steal them from each other.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
                    "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def start(self, name: str, args: Sequence[str], url: str) -> Child:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        child = Child(name, proc, log, url, tuple(args))
        self.children.append(child)
        return child

    def kill(self, child: Child) -> None:
        """SIGKILL, as a crash would: no handler runs, nothing is flushed that was not already durable."""
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait(10)

    def restart(self, child: Child) -> Child:
        """The same process again (same arguments, port and log); ``child`` is updated in place."""
        if child.proc.poll() is None:
            raise ProcessError(f"{child.name} is still running")
        self.children.remove(child)
        fresh = self.start(child.name, child.args, child.url)
        child.proc = fresh.proc
        self.children[-1] = child
        return child

    def wait_http(self, child: Child, path: str = "/health", timeout: float = 60.0, *,
                  method: str = "GET", body: dict | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child.check_alive()
            try:
                r = httpx.request(method, child.url + path, json=body, timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ProcessError(f"{child.name} not ready after {timeout:.0f} s; its log:\n{child.tail()}")

    def stop_all(self, grace: float = 5.0) -> None:
        for c in reversed(self.children):
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in reversed(self.children):
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)
        self.children.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
