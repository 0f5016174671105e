"""The demo's child processes: started with their output in log files, stopped by their own pids only.

``Processes`` is a context manager: on leaving it (normally, on an error or on Ctrl-C) every process it
started gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from splitup.errors import SplitUpError


class ProcessError(SplitUpError):
    """A child process exited early or never became ready."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on, never the same twice in this process, whose successor is free too.

    Between this call and the child binding the port, the kernel may hand the same free port out again
    (several daemons start within milliseconds): two children on one port, one of them dead, and a
    health check answered by the other. Remembering what was handed out closes that window here. The
    next port is kept back as well: the local ledger serves its websocket on RPC port + 1, where Solana
    clients look for it.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in _HANDED_OUT or port + 1 in _HANDED_OUT or port + 1 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        _HANDED_OUT.update((port, port + 1))
        return port


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str

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
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        child = Child(name, proc, log, url)
        self.children.append(child)
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
