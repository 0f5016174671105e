"""A node run by a stranger answers with whatever it likes: the client turns every such answer into its typed
error (``NodeFailure`` naming the hop, or ``PipelineError``) and moves the task to an honest stand-in, never a
raw exception, a hang beyond the hop timeout, or a result that does not fit the plan handed to the caller.

The hostile node is real: a frame port and an HTTP service in threads of this process. Where it needs honest
answers to spoil, it relays the request to an honest node of the cluster and changes what comes back."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitup.client.pipeline import REROUTABLE, NodeFailure, PipelineClient, PipelineError
from splitup.node.app import HOPS_HEADER, PARKED_HEADER
from splitup.node.frames import MAGIC, Frame, FrameError, FrameSocket, pack
from splitup.node.wire import decode, encode

from .procs import free_port

FEEDS = {"input_ids": np.arange(5, dtype=np.int64).reshape(1, 5)}
PROMPT, TOKENS = [7, 3, 9, 2], 3
RELAYED = ("content-type", HOPS_HEADER, PARKED_HEADER, "x-splitup-handoff")

Reply = tuple[int, dict[str, str], bytes]


class Hostile:
    """A stranger's node: a frame port and HTTP, each answer chosen by the test. ``upstream``: an honest
    node it relays requests to (``relay``, ``relay_http``), to spoil what comes back."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.hits: list[str] = []
        self.listeners: dict[str, FrameSocket] = {}
        # what it does with an exec frame (default: relay it and answer as an honest last node would)
        self.on_frame: Callable[[Hostile, FrameSocket, Frame], None] = lambda node, link, f: node.answer(
            link, f, node.relay(f))
        self.on_health: Callable[[Hostile], Reply] = lambda node: _json(200, {"status": "ok", "frames": node.port})
        self.on_execute: Callable[[Hostile, bytes], Reply] = lambda node, body: node.relay_http("POST", "/execute",
                                                                                               body)
        self.on_sessions: Callable[[Hostile, bytes], Reply] = lambda node, body: node.relay_http("POST", "/sessions",
                                                                                                body)
        self.on_results: Callable[[Hostile, str], Reply] = lambda node, path: node.relay_http("GET", path)
        self._links: list[FrameSocket] = []
        self._frames = socket.create_server(("127.0.0.1", 0))
        self.port = self._frames.getsockname()[1]
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        try:
            self._frames.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        except OSError:
            pass
        self._frames.close()
        for link in list(self._links):
            link.close()

    # --- honest behaviour, to spoil --------------------------------------------------------------------
    def relay(self, frame: Frame) -> Frame:
        """The honest upstream node's answer to ``frame`` (a last hop without our listener: along the chain)."""
        assert self.upstream is not None
        port = httpx.get(self.upstream + "/health", timeout=10).json()["frames"]
        conn = FrameSocket("127.0.0.1", port, 10)
        try:
            return conn.request(frame, 30, 1 << 30)
        finally:
            conn.close()

    def answer(self, link: FrameSocket, frame: Frame, answer: Frame) -> None:
        """Send ``answer`` as an honest last node would: to the client listening here if the step names one."""
        listener = self.listeners.get((frame.reply or {}).get("to", ""))
        (listener or link).send(answer, 10)

    def relay_http(self, method: str, path: str, body: bytes = b"") -> Reply:
        assert self.upstream is not None
        r = httpx.request(method, self.upstream + path, content=body, timeout=30,
                          headers={"content-type": "application/octet-stream" if path == "/execute"
                                   else "application/json"})
        return r.status_code, {k: v for k, v in r.headers.items() if k.lower() in RELAYED}, r.content

    # --- the frame port --------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._frames.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(FrameSocket.over(sock),), daemon=True).start()

    def _serve(self, link: FrameSocket) -> None:
        self._links.append(link)
        try:
            while (frame := link.read(1 << 30)) is not None:
                if frame.kind == "listen":
                    self.listeners[(frame.reply or {})["to"]] = link
                    link.send(Frame("ok"), 10)
                    continue
                self.hits.append("frame")
                self.on_frame(self, link, frame)
        except (OSError, FrameError):
            pass
        finally:
            link.close()


def _json(status: int, value: Any) -> Reply:
    return status, {"content-type": "application/json"}, json.dumps(value).encode()


def _handler(node: Hostile) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, reply: Reply) -> None:
            status, headers, body = reply
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            node.hits.append(self.path)
            self._reply(node.on_health(node) if self.path == "/health" else node.on_results(node, self.path))

        def do_POST(self) -> None:
            node.hits.append(self.path)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            self._reply(node.on_sessions(node, body) if self.path == "/sessions" else node.on_execute(node, body))

        def do_DELETE(self) -> None:
            self._reply(node.relay_http("DELETE", self.path) if node.upstream else _json(200, {}))

    return Handler


@pytest.fixture
def hostile() -> Iterator[Callable[..., Hostile]]:
    made: list[Hostile] = []

    def make(upstream: str | None = None) -> Hostile:
        made.append(Hostile(upstream))
        return made[-1]

    try:
        yield make
    finally:
        for node in made:
            node.close()


@pytest.fixture(scope="module")
def honest(plan, cluster) -> dict[str, np.ndarray]:
    with PipelineClient(plan, cluster.route) as client:
        return {k: np.array(v) for k, v in client.run(FEEDS).items()}


@pytest.fixture(scope="module")
def honest_tokens(plan, cluster) -> list[int]:
    with PipelineClient(plan, cluster.route) as client:
        return client.generate(PROMPT, TOKENS)


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return set(got) == set(want) and all(np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want)


def _spoiled(frame: Frame, change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Frame:
    return replace(frame, tensors=change({k: np.array(v) for k, v in frame.tensors.items()}))


def _spoiled_body(body: bytes, change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> bytes:
    return encode(change(decode(body)[0]))


# --- error reports with odd fields -------------------------------------------------------------------------
ODD_REPORTS = {
    "hop-as-text": {"error": "x", "kind": "internal", "hop": "0", "status": 500},
    "hop-past-the-route": {"error": "x", "kind": "internal", "hop": 7, "status": 500},
    "negative-hop": {"error": "x", "kind": "internal", "hop": -1, "status": 500},
    "hop-as-bool": {"error": "x", "kind": "internal", "hop": True, "status": 500},
    "kind-not-text": {"error": "x", "kind": ["internal"], "hop": 0, "status": 500},
    "status-as-text": {"error": "x", "kind": "unreachable", "hop": 0, "status": "502"},
}


@pytest.mark.parametrize("transport", ["frames", "http"])
@pytest.mark.parametrize("report", list(ODD_REPORTS))
def test_an_error_report_with_odd_fields_moves_the_task_to_a_stand_in(plan, cluster, honest, hostile, transport,
                                                                     report):
    node = hostile()
    error = ODD_REPORTS[report]
    node.on_frame = lambda _n, link, _f: link.send(Frame("error", error=error), 10)
    node.on_execute = lambda _n, _body: _json(int(error["status"]), error)
    route = [[node.url, cluster.a.url], cluster.b.url, cluster.c.url]
    with PipelineClient(plan, route, transport=transport) as client:
        assert _same(client.run(FEEDS), honest)
        assert client.candidates[0][0] == cluster.a.url  # the node that lied is the one passed over
    assert node.hits


def test_an_error_frame_without_a_report_is_the_node_failing(plan, cluster, honest, hostile):
    node = hostile()
    node.on_frame = lambda _n, link, _f: link.send(Frame("error"), 10)
    with PipelineClient(plan, [[node.url, cluster.a.url], cluster.b.url, cluster.c.url]) as client:
        assert _same(client.run(FEEDS), honest)


# --- hop records that are not records ----------------------------------------------------------------------
ODD_RECORDS = {
    "hop-as-text": [{"hop": "x", "failover": 1}],
    "failover-as-text": [{"hop": 0, "failover": "2"}],
    "failover-as-list": [{"hop": None, "failover": [1]}],
    "not-dicts": [7, "x", None, [1, [2]], {"receipt": 5, "index": "0"}],
    "huge-failover": [{"hop": 0, "failover": 10**30}, {"hop": 10**30, "failover": 1}],
}


@pytest.mark.parametrize("transport", ["frames", "http"])
@pytest.mark.parametrize("records", list(ODD_RECORDS))
def test_hop_records_that_are_not_records_are_ignored(plan, cluster, honest, hostile, transport, records):
    node = hostile(cluster.a.url)
    odd = ODD_RECORDS[records]
    node.on_frame = lambda n, link, f: link.send(replace(n.relay(f), hops=odd), 10)

    def execute(n: Hostile, body: bytes) -> Reply:
        status, headers, content = n.relay_http("POST", "/execute", body)
        return status, {**headers, HOPS_HEADER: json.dumps(odd)}, content

    node.on_execute = execute
    with PipelineClient(plan, [node.url, cluster.b.url, cluster.c.url], transport=transport) as client:
        assert _same(client.run(FEEDS), honest)
        assert client.last_hops == odd


@pytest.mark.parametrize("header", ["{", "5", '{"hop": 0}'])
def test_a_hop_records_header_that_is_not_a_list_moves_the_task(plan, cluster, honest, hostile, header):
    node = hostile(cluster.a.url)
    node.on_execute = lambda n, body: (*n.relay_http("POST", "/execute", body)[:1], {HOPS_HEADER: header}, b"")
    with PipelineClient(plan, [[node.url, cluster.a.url], cluster.b.url, cluster.c.url], transport="http") as client:
        assert _same(client.run(FEEDS), honest)


# --- results that do not fit the declared outputs ----------------------------------------------------------
def _nan(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    t["logits"][..., 3] = np.nan
    return t


SPOILS: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "renamed": lambda t: {("scores" if k == "logits" else k): v for k, v in t.items()},
    "missing": lambda t: {k: v for k, v in t.items() if k != "logits"},
    "extra": lambda t: {**t, "extra": np.zeros(3, np.float32)},
    "float64": lambda t: {**t, "logits": t["logits"].astype(np.float64)},
    "int32": lambda t: {**t, "logits": t["logits"].astype(np.int32)},
    "other-vocabulary": lambda t: {**t, "logits": np.ascontiguousarray(t["logits"][..., :-1])},
    "extra-axis": lambda t: {**t, "logits": t["logits"][None]},
    "too-long": lambda t: {**t, "logits": np.concatenate([t["logits"]] * 400, axis=1)},
    "nan": _nan,
}


@pytest.mark.parametrize("transport", ["frames", "http"])
@pytest.mark.parametrize("spoil", list(SPOILS))
def test_a_result_that_does_not_fit_the_outputs_is_refused_and_the_task_moves(plan, cluster, honest, hostile,
                                                                               transport, spoil):
    node = hostile(cluster.spare.url)  # the last hop, relaying to the honest spare and spoiling its answer
    change = SPOILS[spoil]
    node.on_frame = lambda n, link, f: link.send(_spoiled(n.relay(f), change), 10)

    def execute(n: Hostile, body: bytes) -> Reply:
        status, headers, content = n.relay_http("POST", "/execute", body)
        return status, headers, _spoiled_body(content, change)

    node.on_execute = execute
    route = [cluster.a.url, cluster.b.url, [node.url, cluster.spare.url]]
    with PipelineClient(plan, route, transport=transport) as client:
        assert _same(client.run(FEEDS), honest)
        assert client.candidates[2][0] == cluster.spare.url
    assert node.hits


def test_an_http_result_that_is_not_a_message_is_refused(plan, cluster, honest, hostile):
    node = hostile(cluster.spare.url)
    node.on_execute = lambda n, body: (200, n.relay_http("POST", "/execute", body)[1], b"\x08" + bytes(20))
    route = [cluster.a.url, cluster.b.url, [node.url, cluster.spare.url]]
    with PipelineClient(plan, route, transport="http") as client:
        assert _same(client.run(FEEDS), honest)


@pytest.mark.parametrize("spoil", ["nan", "other-vocabulary", "missing", "float64"])
def test_a_direct_answer_that_does_not_fit_moves_the_generation(plan, cluster, honest_tokens, hostile, spoil):
    node = hostile(cluster.spare.url)  # the last node: the client listens to it for each step's logits
    change = SPOILS[spoil]
    node.on_frame = lambda n, link, f: n.answer(link, f, _spoiled(n.relay(f), change))
    with PipelineClient(plan, [cluster.a.url, cluster.b.url, [node.url, cluster.spare.url]]) as client, \
            client.session() as gen:
        assert gen.places[2][0] == node.url
        assert [int(t) for t in _generate(gen, PROMPT, TOKENS)] == honest_tokens
        assert gen.places[2][0] == cluster.spare.url and gen.recoveries == 1
    assert node.listeners  # the spoiled logits came straight from it


def _generate(gen, prompt: list[int], n: int) -> list[int]:
    out, ids = [], np.asarray(prompt)
    for _ in range(n):
        token = int(np.argmax(gen.step(ids)[0, -1]))
        out.append(token)
        ids = np.asarray([token])
    return out


# --- answers to another request, answers that never come, connections cut mid-frame --------------------------
def test_a_direct_answer_to_another_step_is_dropped_and_the_step_goes_along_the_chain(plan, cluster, honest_tokens,
                                                                                      hostile):
    node = hostile(cluster.spare.url)

    def misaddressed(n: Hostile, link: FrameSocket, f: Frame) -> None:
        answer = n.relay(f)
        if answer.reply:  # a direct step: answered as if it were another
            answer.reply = {"id": "not-" + answer.reply["id"]}
        n.answer(link, f, answer)

    node.on_frame = misaddressed
    t0 = time.monotonic()
    with PipelineClient(plan, [cluster.a.url, cluster.b.url, node.url], hop_timeout=0.5) as client, \
            client.session() as gen:
        assert _generate(gen, PROMPT, 2) == honest_tokens[:2]
    # each step waits out the route's timeout (4 x 0.5 s) for its direct answer, then goes along the chain
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("transport", ["frames", "http"])
def test_a_node_that_never_answers_times_out_and_its_task_moves(plan, cluster, honest, hostile, transport):
    node = hostile()
    release = threading.Event()
    node.on_frame = lambda _n, _link, _f: release.wait(30)

    def silent(_n: Hostile, _body: bytes) -> Reply:
        release.wait(30)
        return _json(500, {})

    node.on_execute = silent
    t0 = time.monotonic()
    try:
        with PipelineClient(plan, [[node.url, cluster.a.url], cluster.b.url, cluster.c.url], hop_timeout=0.5,
                            transport=transport) as client:
            assert _same(client.run(FEEDS), honest)
        assert time.monotonic() - t0 < 8  # the route's 4 x 0.5 s, and the honest run
    finally:
        release.set()


def _half(frame: Frame) -> bytes:
    raw = b"".join(bytes(memoryview(b)) for b in pack(frame))
    return raw[: len(raw) // 2]


@pytest.mark.parametrize("cut", ["inside-the-prefix", "inside-the-frame"])
def test_a_connection_closed_mid_frame_moves_the_task(plan, cluster, honest, hostile, cut):
    node = hostile(cluster.a.url)

    def cut_short(n: Hostile, link: FrameSocket, f: Frame) -> None:
        raw = MAGIC + b"\x00" if cut == "inside-the-prefix" else _half(n.relay(f))
        link.sock.sendall(raw)
        link.close()

    node.on_frame = cut_short
    with PipelineClient(plan, [[node.url, cluster.a.url], cluster.b.url, cluster.c.url]) as client:
        assert _same(client.run(FEEDS), honest)
        assert client.candidates[0][0] == cluster.a.url


def test_a_direct_answer_cut_mid_frame_is_had_along_the_chain(plan, cluster, honest_tokens, hostile):
    node = hostile(cluster.spare.url)

    def cut_short(n: Hostile, link: FrameSocket, f: Frame) -> None:
        answer = n.relay(f)
        listener = n.listeners.pop((f.reply or {}).get("to", ""), None)
        if listener is None:
            link.send(answer, 10)
            return
        listener.sock.sendall(_half(answer))
        listener.close()

    node.on_frame = cut_short
    with PipelineClient(plan, [cluster.a.url, cluster.b.url, node.url]) as client, client.session() as gen:
        assert _generate(gen, PROMPT, TOKENS) == honest_tokens


# --- /health, sessions and parked results ------------------------------------------------------------------
def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


HEALTHS: dict[str, Callable[[Hostile], Reply]] = {
    "not-json": lambda _n: (200, {}, b"<html>ok</html>"),
    "a-list": lambda _n: _json(200, [1, 2]),
    "an-error": lambda _n: _json(500, {"frames": 1}),
    "port-as-text": lambda n: _json(200, {"frames": str(n.port)}),
    "port-out-of-range": lambda _n: _json(200, {"frames": 70000}),
    "port-where-nothing-listens": lambda _n: _json(200, {"frames": _closed_port()}),
    "port-that-speaks-http": lambda n: _json(200, {"frames": int(n.url.rsplit(":", 1)[1])}),
}


@pytest.mark.parametrize("health", list(HEALTHS))
def test_a_garbled_health_report_is_survived(plan, cluster, honest, hostile, health):
    node = hostile(cluster.a.url)  # whatever its health says, its hops are honest (HTTP relays them)
    node.on_health = HEALTHS[health]
    # an HTTP server sent a frame waits for the rest of its request line: the route's timeout (4 x 1 s) ends it
    with PipelineClient(plan, [[node.url, cluster.a.url], cluster.b.url, cluster.c.url], hop_timeout=1) as client:
        assert _same(client.run(FEEDS), honest)


def test_a_last_node_whose_frame_port_is_dead_is_replaced_in_a_generation(plan, cluster, honest_tokens, hostile):
    node = hostile(cluster.spare.url)
    node.on_health = lambda _n: _json(200, {"frames": _closed_port()})
    with PipelineClient(plan, [cluster.a.url, cluster.b.url, [node.url, cluster.spare.url]]) as client, \
            client.session() as gen:
        assert _generate(gen, PROMPT, TOKENS) == honest_tokens
        assert gen.places[2][0] == cluster.spare.url


SESSIONS = {
    "not-json": (201, {}, b"session!"),
    "a-list": _json(201, ["s"]),
    "no-session": _json(201, {"task_id": "t"}),
    "session-not-text": _json(201, {"session": {"id": 1}}),
}


@pytest.mark.parametrize("answer", list(SESSIONS))
def test_a_garbled_session_answer_passes_the_node_over(plan, cluster, honest_tokens, hostile, answer):
    node = hostile(cluster.spare.url)
    node.on_sessions = lambda _n, _body: SESSIONS[answer]
    with PipelineClient(plan, [cluster.a.url, cluster.b.url, [node.url, cluster.spare.url]]) as client, \
            client.session() as gen:
        assert gen.places[2][0] == cluster.spare.url
        assert _generate(gen, PROMPT, TOKENS) == honest_tokens


@pytest.mark.parametrize("transport", ["frames", "http"])
@pytest.mark.parametrize("where", ["another-node", "not-a-url", "unclosed-bracket", "another-scheme"])
def test_a_result_parked_elsewhere_is_not_fetched(plan, cluster, honest, hostile, transport, where):
    decoy = hostile()
    decoy.on_results = lambda _n, _path: (200, {}, encode({k: np.zeros_like(v) for k, v in honest.items()}))
    node = hostile(cluster.spare.url)
    parked = {"another-node": f"{decoy.url}/results/r1", "not-a-url": "results/r1",
              "unclosed-bracket": "http://[::1/results/r1", "another-scheme": node.url.replace("http", "ftp")}[where]
    node.on_frame = lambda n, link, f: link.send(replace(n.relay(f), tensors={}, parked=parked), 10)

    def execute(n: Hostile, body: bytes) -> Reply:
        status, headers, _ = n.relay_http("POST", "/execute", body)
        return status, {**headers, PARKED_HEADER: parked}, b""

    node.on_execute = execute
    route = [cluster.a.url, cluster.b.url, [node.url, cluster.spare.url]]
    with PipelineClient(plan, route, transport=transport) as client:
        assert _same(client.run(FEEDS), honest)
        assert client.candidates[2][0] == cluster.spare.url
    assert decoy.hits == []


# --- any spoiled reply frame -------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["hop", "kind", "status", "error",
                                                                                "failover", "index", "receipt"]),
                                                                inner, max_size=5),
    max_leaves=12,
)
error_reports = st.fixed_dictionaries({}, optional={"hop": json_values | st.integers(-3, 5),
                                                    "kind": json_values | st.sampled_from(REROUTABLE),
                                                    "status": json_values | st.sampled_from([404, 429, 500]),
                                                    "error": json_values})
spoils = st.one_of(
    st.builds(lambda e: ("error", e), st.none() | error_reports),
    st.builds(lambda h: ("hops", h), st.lists(json_values, max_size=4)),
    st.builds(lambda k: ("kind", k), st.sampled_from(["exec", "listen", "", "OK"])),
    st.builds(lambda s: ("tensors", s), st.sampled_from(list(SPOILS))),
    st.builds(lambda p: ("parked", p), st.text(max_size=30)),
)


def test_any_spoiled_reply_frame_gives_the_honest_result_or_a_typed_error(plan, cluster, honest):
    # one hostile node for every example (hypothesis runs them inside one test call), relaying to the honest
    # last node and spoiling its answer as drawn; the client has no stand-in, so a refusal ends in its error
    node = Hostile(cluster.spare.url)
    route = [cluster.a.url, cluster.b.url, node.url]
    try:
        # a report of status 429 has the client wait for room: briefly here
        with PipelineClient(plan, route, max_failovers=1, busy_wait_s=0.2) as client:
            @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(spoils)
            def check(spoil: tuple[str, Any]) -> None:
                what, value = spoil

                def spoiled(n: Hostile, link: FrameSocket, f: Frame) -> None:
                    answer = n.relay(f)
                    if what == "tensors":
                        answer = _spoiled(answer, SPOILS[value])
                    elif what == "error":
                        answer = replace(answer, kind="error", tensors={}, error=value)
                    else:
                        answer = replace(answer, **{what: value})
                    link.send(answer, 10)

                node.on_frame = spoiled
                try:
                    got = client.run(FEEDS)
                except PipelineError as exc:
                    assert not isinstance(exc, NodeFailure) or exc.hop is None or 0 <= exc.hop < len(route)
                    return
                assert what == "hops" and _same(got, honest)

            check()
    finally:
        node.close()
