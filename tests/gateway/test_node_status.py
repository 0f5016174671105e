"""Admission reads every node's ``/status``: a node's word. One hostile node (a status of the wrong shape, an
endless body, an answer trickled a byte at a time) must not break the forecast, or make the other nodes'
heartbeats look stale, for the whole market."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest

from splitup.sdk.capacity import fetch_statuses, parse_status

TASK = "ab" * 32
GOOD = {"node": "n1", "time": 1.0, "uptime_s": 12.5, "tasks": [TASK], "sessions": 1, "hops_done": 7,
        "draining": False, "max_sessions": 4, "session_bytes_max": 1 << 30, "session_bytes_reserved": 0,
        "free_sessions": {TASK: 3}}


@pytest.mark.parametrize("raw", [
    [GOOD], "status", None,
    {**GOOD, "tasks": TASK}, {**GOOD, "tasks": [1]}, {**GOOD, "tasks": {TASK: 1}},
    {**GOOD, "free_sessions": [3]}, {**GOOD, "free_sessions": {TASK: "3"}}, {**GOOD, "free_sessions": {TASK: 3.5}},
    {**GOOD, "free_sessions": {TASK: -1}}, {**GOOD, "free_sessions": {TASK: 10**30}},
    {**GOOD, "free_sessions": {TASK: True}}, {**GOOD, "max_sessions": "4"}, {**GOOD, "sessions": None},
    {**GOOD, "hops_done": 1e9},
], ids=repr)
def test_a_status_of_the_wrong_shape_is_no_status(raw: object) -> None:
    assert parse_status(raw) is None


def test_a_status_keeps_what_admission_and_the_console_read() -> None:
    assert parse_status(GOOD) == {"tasks": [TASK], "free_sessions": {TASK: 3}, "sessions": 1, "max_sessions": 4,
                                  "hops_done": 7, "draining": False, "node": "n1", "uptime_s": 12.5}
    odd = parse_status({**GOOD, "node": "x" * 10_000, "uptime_s": "long", "draining": "yes", "extra": [1] * 100})
    assert odd is not None and len(odd["node"]) == 200 and odd["uptime_s"] is None and odd["draining"] is False
    assert "extra" not in odd
    assert parse_status({}) == {"tasks": [], "free_sessions": {}, "draining": False, "node": None, "uptime_s": None}


TRICKLE_S = 0.3
TIMEOUT = 1.0


class StatusServer(socketserver.ThreadingTCPServer):
    """Answers ``GET /status`` with ``body``: bytes at once, or ``"trickle"`` (a byte every 0.3 s for half a
    minute) or ``"endless"`` (64 KiB parts until the client stops reading)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, body: bytes | str) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.body = body
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        self.shutdown()
        self.server_close()


class _Answer(socketserver.BaseRequestHandler):
    server: StatusServer

    def handle(self) -> None:
        sock, body = self.request, self.server.body
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                part = sock.recv(65536)
                if not part:
                    return
                data += part
            if isinstance(body, bytes):
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                return
            length = 100 if body == "trickle" else 1 << 34
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % length)
            while not self.server.closed.is_set():
                if body == "trickle":
                    self.server.closed.wait(TRICKLE_S)
                    sock.sendall(b" ")
                else:
                    sock.sendall(b" " * 65536)
        except OSError:
            pass  # the client gave up on this answer: what the test wants


@pytest.fixture
def serve() -> Iterator[Callable[[bytes | str], str]]:
    with ExitStack() as made:
        yield lambda body: made.enter_context(StatusServer(body)).url


def test_one_hostile_node_leaves_the_others_statuses_whole(serve) -> None:
    good = serve(json.dumps(GOOD).encode())
    hostile = {
        "trickles": [serve("trickle") for _ in range(4)],
        "endless": [serve("endless")],
        "wrong shape": [serve(json.dumps({**GOOD, "free_sessions": {TASK: "all"}}).encode())],
        "nested": [serve(b"[" * 100_000 + b"]" * 100_000)],
        "not json": [serve(b"\xff{")],
    }
    urls = [good, *(u for us in hostile.values() for u in us)]
    with httpx.Client() as http:
        t0 = time.monotonic()
        statuses = fetch_statuses(urls, http, timeout=TIMEOUT)
        took = time.monotonic() - t0
    assert statuses[good] == parse_status(GOOD)
    assert all(statuses[u] is None for us in hostile.values() for u in us)
    # asked at once, each within the timeout in all: four tricklers cost one timeout, not four
    assert took < TIMEOUT + 2.0, took
