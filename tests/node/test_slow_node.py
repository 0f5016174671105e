"""A node that trickles its answers (headers at once, then a byte every 0.3 s) holds an HTTP exchange no longer
than that exchange's timeout. Each of its reads returns in time, so only a deadline over the whole exchange ends
it; the client and a node forwarding to it report the typed timeout naming the hop, as for a silent node.

The trickling node is a socket server in a thread of this process, plain or TLS (a node forwards ``https://``
hops through httpx, ``http://`` ones through its own hop client)."""

from __future__ import annotations

import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from splitup.client.pipeline import NodeFailure, PipelineClient, PipelineError, plan_sends
from splitup.node.app import HOPS_HEADER, PARKED_HEADER
from splitup.node.wire import Hop

from .procs import Daemon, start_node

FEEDS = {"input_ids": np.arange(5, dtype=np.int64).reshape(1, 5)}
TRICKLE_S = 0.3
BODY = 100  # bytes, one per TRICKLE_S: half a minute, far past every timeout here
LIMIT = 1.0  # the timeout of each exchange under test
MARGIN = 1.0  # for the last byte past the deadline and a busy machine


class Trickler(socketserver.ThreadingTCPServer):
    """Answers every request with a 200 whose body comes a byte at a time. ``parks``: ``POST /execute`` is
    answered at once, as a last node that parked its result here (whose fetch then trickles)."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None, parks: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Trickle)
        self.tls, self.parks = tls, parks
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server_address[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def __exit__(self, *exc: object) -> None:
        self.closed.set()  # ends every trickle within one pause
        self.shutdown()
        self.server_close()


class _Trickle(socketserver.BaseRequestHandler):
    server: Trickler

    def handle(self) -> None:
        server, sock = self.server, self.request
        try:
            if server.tls is not None:
                sock = server.tls.wrap_socket(sock, server_side=True)
            head = _request(sock)
            if server.parks and head.startswith(b"POST /execute"):
                sock.sendall(f"HTTP/1.1 200 OK\r\n{HOPS_HEADER}: []\r\n{PARKED_HEADER}: {server.url}/results/r\r\n"
                             "content-length: 0\r\nconnection: close\r\n\r\n".encode())
                return
            sock.sendall(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {BODY}\r\n\r\n"
                         .encode())
            for _ in range(BODY):
                if server.closed.wait(TRICKLE_S):
                    return
                sock.sendall(b" ")
        except OSError:
            pass
        finally:
            sock.close()


def _request(sock: socket.socket) -> bytes:
    """A request's head, its body read past (a node's reply to an unread body could be cut by a reset)."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            raise ConnectionResetError("the request ended early")
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return head


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> Path:
    """A self-signed certificate for 127.0.0.1 (``cert.pem``, ``key.pem``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl makes the test's certificate")
    where = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem")], check=True,
                   capture_output=True)
    return where


@pytest.fixture
def trickler(request) -> Iterator[Callable[..., Trickler]]:
    """Makes trickling nodes (``tls``: speaking https), closed after the test."""
    with ExitStack() as made:
        def make(*, tls: bool = False, parks: bool = False) -> Trickler:
            context = None
            if tls:
                where = request.getfixturevalue("cert")
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(where / "cert.pem", where / "key.pem")
            return made.enter_context(Trickler(context, parks))

        yield make


@pytest.fixture(scope="module")
def tls_node(plan, store_url, logs, cert) -> Iterator[Daemon]:
    """A node for task 0 that trusts the test's certificate (httpx reads SSL_CERT_FILE): it forwards over https."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SSL_CERT_FILE", str(cert / "cert.pem"))
        node = start_node("tls", logs, tasks=[plan.tasks[0].task_id], store=store_url)
    with node:
        yield node


def _failure(client: PipelineClient, route: list[str]) -> tuple[NodeFailure, float]:
    """The failure of one trip along ``route`` (one URL a hop), and how long it took."""
    _, sends = plan_sends(client.plan.tasks, ["logits"])
    hops = [Hop([url], task.task_id, send) for url, task, send in zip(route, client.plan.tasks, sends, strict=True)]
    t0 = time.monotonic()
    with pytest.raises(NodeFailure) as caught:
        client.call(hops, FEEDS, "slow")
    return caught.value, time.monotonic() - t0


@pytest.mark.parametrize("exchange", ["execute", "health", "parked"])
def test_the_client_gives_up_on_a_trickling_answer_at_the_exchange_s_timeout(plan, cluster, trickler, exchange):
    slow = trickler(parks=exchange == "parked")
    if exchange == "parked":
        # the last node parks its result on itself, then trickles it: fetched within hop_timeout
        route, hop, hop_timeout, transport = [cluster.a.url, cluster.b.url, slow.url], 2, LIMIT, "http"
    else:
        # the first node's answer over HTTP, or the health report asked before frames, trickles: the client's
        # exchange with the first node has hop_timeout x (hops + 1)
        route, hop, hop_timeout = [slow.url, cluster.b.url, cluster.c.url], 0, LIMIT / 4
        transport = "http" if exchange == "execute" else "frames"
    with PipelineClient(plan, route, hop_timeout=hop_timeout, transport=transport) as client:
        failure, took = _failure(client, route)
    assert (failure.kind, failure.hop) == ("timeout", hop), failure
    assert took < LIMIT + MARGIN


def test_opening_and_closing_a_session_on_a_trickling_node_end_at_the_hop_timeout(plan, cluster, trickler):
    slow = trickler()
    with PipelineClient(plan, [slow.url, cluster.b.url, cluster.c.url], hop_timeout=LIMIT) as client:
        t0 = time.monotonic()
        with pytest.raises(PipelineError, match="accepts a session"):
            client.open_session(0)
        t1 = time.monotonic()
        client.close_session(slow.url, "s1")
        t2 = time.monotonic()
    assert t1 - t0 < LIMIT + MARGIN and t2 - t1 < LIMIT + MARGIN


@pytest.mark.parametrize(("transport", "scheme"), [("frames", "http"), ("http", "http"), ("http", "https")])
def test_a_node_forwarding_to_a_trickling_node_gives_up_at_its_share_of_the_timeout(plan, cluster, trickler,
                                                                                   request, transport, scheme):
    """Over frames the node first asks the next node's /health for its frame port; over HTTP it posts the hop."""
    slow = trickler(tls=scheme == "https")
    first = request.getfixturevalue("tls_node").url if scheme == "https" else cluster.a.url
    route = [first, slow.url, cluster.c.url]
    # the first node gives hop 1 hop_timeout x 2 (LIMIT); the client's own timeout, 2 x LIMIT, would name hop 0
    with PipelineClient(plan, route, hop_timeout=LIMIT / 2, transport=transport) as client:
        failure, took = _failure(client, route)
    assert (failure.kind, failure.hop, failure.status) == ("timeout", 1, 504), failure
    assert took < LIMIT + MARGIN
