"""Starting and stopping real daemon processes for the node tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from splitup.demo.procs import free_port

__all__ = ["free_port", "Daemon", "serving"]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An ASGI app served by uvicorn in a thread of this process on a free loopback port: its URL. On
    leaving, the server stops and the port answers nobody."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)




class Daemon:
    """A ``python -m splitup ...`` subprocess with its output in a log file; stopped by its own pid only."""

    def __init__(self, name: str, args: Sequence[str], url: str, log_dir: Path, prefix: Sequence[str] = ()) -> None:
        self.name, self.url = name, url
        self.log = log_dir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "splitup", *args], stdout=out,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def __enter__(self) -> Daemon:
        """The daemon once ready; stopped (and the error raised) if it never is."""
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def start_node(name: str, log_dir: Path, *, host: str = "127.0.0.1", tasks: Sequence[str] = (),
               store: str | None = None, extra: Sequence[str] = (), prefix: Sequence[str] = (),
               port: int | None = None) -> Daemon:
    port = port or free_port()
    args = ["node", "start", "--host", host, "--port", str(port), "--threads", "1", "--node-id", name,
            "--cache", str(log_dir / f"cache-{name}")]
    if tasks:
        args += ["--tasks", ",".join(tasks)]
    if store:
        args += ["--store", store]
    return Daemon(name, [*args, *extra], f"http://{host}:{port}", log_dir, prefix)


def start_store(name: str, directory: Path, log_dir: Path, *, host: str = "127.0.0.1",
                prefix: Sequence[str] = (), port: int | None = None, writable: bool = False) -> Daemon:
    port = port or free_port()
    return Daemon(name, ["store", "serve", "--dir", str(directory), "--host", host, "--port", str(port),
                         "--log-level", "info", *(["--writable"] if writable else [])], f"http://{host}:{port}",
                  log_dir, prefix)
