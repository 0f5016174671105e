"""Lean hops: the frame codec's bounds, and a node's frame port answering bad frames with typed errors."""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time

import httpx
import numpy as np
import pytest

from splitup.client.pipeline import PipelineClient
from splitup.graph.meta import NUMPY_DTYPES
from splitup.node.frames import (
    MAGIC,
    PREFIX,
    Frame,
    FrameError,
    FrameSocket,
    FrameTooLarge,
    pack,
    read_prefix,
    unpack,
)
from splitup.node.wire import Envelope, Hop, WireError

from .procs import free_port


def _split(buffers) -> tuple[bytes, int, bytes]:
    raw = b"".join(bytes(memoryview(b)) for b in buffers)
    _, header_len, stable_len, _ = PREFIX.unpack(raw[: PREFIX.size])
    header = raw[PREFIX.size : PREFIX.size + header_len]
    return header, stable_len, raw[PREFIX.size + header_len :]


def _unpack(buffers, **kw) -> Frame:
    return unpack(*_split(buffers), **kw)[0]


NO_REST = [None, None, None, [], None, None, None]  # hop, steps, reply id, hop records, hand-off, error, parked


def _raw(stable: list, payload: bytes = b"", rest: list = NO_REST) -> bytes:
    """A frame as another sender might write it: json.dumps' spacing, no padding."""
    first, second = json.dumps(stable).encode(), json.dumps(rest).encode()
    return PREFIX.pack(MAGIC, len(first) + len(second), len(first), len(payload)) + first + second + payload


def test_round_trip_of_every_dtype_without_copying():
    # every type a task can carry, bfloat16 and float8 (ml_dtypes arrays) included
    tensors = {f"t.{name}": np.arange(6).astype(dtype).reshape(2, 3) for name, dtype in NUMPY_DTYPES.items()}
    tensors["scalar"] = np.array(7, np.int64)
    tensors["empty"] = np.zeros((0, 4), np.float32)
    env = Envelope("j", 1, [Hop(["http://a"], "t0", ["h"], "s0", 3), Hop(["http://b"], "t1", ["y"], "s1", 5)])
    frame = _unpack(pack(Frame("exec", tensors, env, hops=[{"hop": 0}])))
    assert frame.kind == "exec" and Envelope.from_wire(frame.envelope) == env and frame.hops == [{"hop": 0}]
    for name, value in tensors.items():
        got = frame.tensors[name]
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value)
        # a view of the received payload, aligned for the engine: nothing was copied on the way in
        assert got.base is not None and got.flags.aligned


def test_frames_read_in_one_buffer_keep_their_tensors_aligned():
    # both readers take header and payload in one read; pack pads the header so the payload stays aligned
    frame = Frame("ok", {"a": np.arange(5, dtype=np.float64)}, hops=[{"hop": 0, "node": "n"}])
    for raw in (b"".join(bytes(memoryview(b)) for b in pack(frame)), _raw(["ok", [["a", "float64", [5], 0]], None, None, None],
                                                              np.arange(5, dtype=np.float64).tobytes())):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(raw)
            conn = FrameSocket.over(b)
            got = conn.receive(5, 1 << 20)
        assert np.array_equal(got.tensors["a"], np.arange(5)) and got.tensors["a"].flags.aligned
        # a view into the one buffer read; a sender that does not pad (``_raw``'s 92-byte json.dumps header)
        # gets its payload copied rather than its tensors misaligned
        padded = PREFIX.unpack(raw[: PREFIX.size])[1] % 8 == 0
        base = got.tensors["a"].base  # the receive buffer itself, or the copy
        assert type(base) is (bytearray if padded else bytes)
    assert PREFIX.unpack(raw[: PREFIX.size])[1] % 8  # the unpadded case was tested


def test_a_connection_reads_back_to_back_frames_and_reuses_what_repeats():
    # several frames in one read (pipelined requests), and a stable part seen before taken again
    env = Envelope("j", 0, [Hop(["http://a"], "t0", ["h"], "s0", 3)])
    frames = [Frame("exec", {"x": np.full((1, 4), k, np.float32)}, env, reply={"to": "tok", "id": f"s{k}"})
              for k in range(3)]
    frames.append(Frame("exec", {"x": np.zeros((1, 9), np.float32)}, env))  # another layout, no reply address
    raw = b"".join(b"".join(bytes(memoryview(b)) for b in pack(f)) for f in frames)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(raw)
        conn = FrameSocket.over(b)
        got = [conn.receive(5, 1 << 20) for _ in frames]
        first = conn._seen
    assert [f.reply for f in got] == [{"to": "tok", "id": f"s{k}"} for k in range(3)] + [None]
    assert [int(f.tensors["x"][0, 0]) for f in got[:3]] == [0, 1, 2] and got[3].tensors["x"].shape == (1, 9)
    assert all(Envelope.from_wire(f.envelope) == env for f in got)
    assert first is not None and first.tensors[0][2] == (1, 9)
    # the sender keeps its last stable part too: the same layout and route give the same bytes, not a new encoding
    sent: list = [None, b""]
    one, two = pack(frames[0], sent), pack(frames[1], sent)
    assert one[1] is two[1] and bytes(one[2]) != bytes(two[2])


@pytest.mark.parametrize("deadline", [None, 10.0])
def test_a_frame_larger_than_the_socket_takes_goes_out_whole_across_partial_writes(deadline: float | None):
    # tensors of odd sizes (padding between them) and far larger than the socket's buffers: sendmsg takes
    # part of a frame at a time and the rest is written from where it stopped, in the middle of an array
    tensors = {"a": np.arange(300_001, dtype=np.float32), "b": np.arange(77, dtype=np.int8),
               "c": np.arange(200_003, dtype=np.float64)}
    a, b = socket.socketpair()
    with a, b:
        src, conn = FrameSocket.over(a), FrameSocket.over(b)
        src.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(conn.receive(10, 1 << 30) for _ in range(2)), daemon=True)
        reader.start()
        for _ in range(2):
            assert src.send(Frame("ok", tensors), deadline) is True
        reader.join(10)
    assert len(got) == 2
    for frame in got:
        assert all(np.array_equal(frame.tensors[k], v) for k, v in tensors.items())


def test_a_large_receive_buffer_is_read_into_again_only_once_nothing_views_it():
    a, b = socket.socketpair()
    with a, b:
        src, conn = FrameSocket.over(a), FrameSocket.over(b)

        def send() -> None:
            for k in range(6):
                src.send(Frame("ok", {"x": np.full(70_000, k, np.float32)}))  # 280 KB: a large buffer
        threading.Thread(target=send, daemon=True).start()
        held, buffers = [], []
        for k in range(6):
            x = conn.receive(5, 1 << 30).tensors["x"]  # the last step's x is still alive while this one is read
            assert (x == k).all()
            buffers.append(id(x.base))
            if k < 2:
                held.append(x)  # a caller keeping two steps' logits: their buffers are never read into again
    assert (held[0] == 0).all() and (held[1] == 1).all()
    # two held for good, then two taken in turn: each read while the other's array is still alive
    assert len(set(buffers)) == 4 and buffers[4:] == buffers[2:4]


def test_waiting_is_bounded_and_a_peer_that_does_not_read_is_not_written_to():
    a, b = socket.socketpair()
    with a, b:
        conn = FrameSocket.over(b)
        with pytest.raises(TimeoutError):
            conn.receive(0.2, 1 << 20)  # nothing comes
        a.setblocking(False)
        try:
            while True:
                a.send(bytes(1 << 16))  # nobody reads b: fill the pair until it takes nothing
        except BlockingIOError:
            pass
        sender = FrameSocket.over(a)
        assert sender.send(Frame("ok", {"x": np.zeros(4, np.float32)}), 1, only_if_room=True) is False
        with pytest.raises(TimeoutError):
            sender.send(Frame("ok"), 0.2)


def test_tcp_frame_connections_find_a_vanished_peer_and_hold_a_whole_frame():
    with socket.create_server(("127.0.0.1", 0)) as server:
        conn = FrameSocket("127.0.0.1", server.getsockname()[1], 5)
        accepted = FrameSocket.over(server.accept()[0])
        for c in (conn, accepted):
            assert c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
            assert c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 << 20
            c.close()


def test_a_node_refuses_frame_connections_beyond_its_maximum(monkeypatch):
    from types import SimpleNamespace

    from splitup.node import stream

    monkeypatch.setattr(stream, "MAX_LINKS", 2)
    node = SimpleNamespace(config=SimpleNamespace(max_body_bytes=1 << 20))
    server = stream.FrameServer(node, None, stream.FrameForwarder(1 << 20))  # type: ignore[arg-type]
    port = server.start("127.0.0.1", 0)
    held = []
    try:
        for k in range(2):
            conn = FrameSocket("127.0.0.1", port, 5)
            held.append(conn)
            assert conn.request(Frame("listen", reply={"to": f"t{k}"}), 5, 1 << 20).kind == "ok"
        extra = FrameSocket("127.0.0.1", port, 5)
        refused = extra.receive(5, 1 << 20)
        assert refused.kind == "error" and refused.error["status"] == 429 and "maximum of 2" in refused.error["error"]
        with pytest.raises(ConnectionError):
            extra.receive(5, 1 << 20)  # and closed
        extra.close()
        held.pop().close()  # a connection that ends frees its place
        for _ in range(50):
            again = FrameSocket("127.0.0.1", port, 5)
            try:
                if again.request(Frame("listen", reply={"to": "t9"}), 5, 1 << 20).kind == "ok":
                    break
            except (ConnectionError, OSError):
                pass
            finally:
                again.close()
            time.sleep(0.05)
        else:
            pytest.fail("the freed place was not given to a new connection")
    finally:
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize(("entry", "words"), [
    (["x", "complex128", [1], 0], "dtype 'complex128'"),
    (["x", "int4", [1], 0], "dtype 'int4'"),
    (["x", "float32", [1, 2, 3, 4, 5, 6, 7, 8, 9], 0], "at most 8 dims"),
    (["x", "float32", [-1], 0], "shape"),
    (["x", "float32", [1.5], 0], "shape"),
    (["x", "float32", [100], 0], "does not hold 400 bytes"),
    (["x", "float32", [1], 4], "offset 4"),  # not aligned
    (["x", "float32", [1]], "malformed tensor entry"),
    ([3, "float32", [1], 0], "malformed tensor entry"),
])
def test_malformed_tensor_entries_are_typed_errors(entry, words):
    with pytest.raises(FrameError, match=words.replace("(", r"\(").replace("[", r"\[")):
        _unpack([_raw(["exec", [entry], None, None, None], bytes(16))])


def test_overlapping_and_duplicate_tensors_are_refused():
    overlap = ["exec", [["a", "float32", [2], 0], ["b", "float32", [2], 0]], None, None, None]
    with pytest.raises(FrameError, match="offset 0"):
        _unpack([_raw(overlap, bytes(16))])
    twice = ["exec", [["a", "float32", [2], 0], ["a", "float32", [2], 8]], None, None, None]
    with pytest.raises(FrameError, match="twice"):
        _unpack([_raw(twice, bytes(16))])


def test_headers_and_sizes_are_bounded_before_anything_is_read():
    with pytest.raises(FrameError, match="magic"):
        read_prefix(PREFIX.pack(b"HTTP", 0, 0, 0), 1 << 20)
    with pytest.raises(FrameError, match="format SUF2 is not this node's"):  # an older node's frames
        read_prefix(PREFIX.pack(b"SUF2", 0, 0, 0), 1 << 20)
    with pytest.raises(FrameError, match="header of"):
        read_prefix(PREFIX.pack(MAGIC, 1 << 30, 0, 0), 1 << 20)
    with pytest.raises(FrameError, match="stable part"):
        read_prefix(PREFIX.pack(MAGIC, 10, 11, 0), 1 << 20)
    with pytest.raises(FrameTooLarge, match="exceeds the 1024-byte limit"):
        read_prefix(PREFIX.pack(MAGIC, 10, 0, 1025), 1024)
    with pytest.raises(FrameError, match="not JSON"):
        unpack(b"{nope", 5, b"")
    with pytest.raises(FrameError, match="kind"):
        unpack(b"[][]", 2, b"")
    with pytest.raises(FrameError, match="must end with"):
        unpack(b'["ok",[],null,null,null][]', 24, b"")
    with pytest.raises(FrameError, match="exceeds the 16-byte limit"):
        _unpack(pack(Frame("exec", {"x": np.zeros(8, np.float32)})), max_tensor_bytes=16)
    # a stable part seen before is checked against each frame's own payload and limit again
    seen = unpack(*_split(pack(Frame("exec", {"x": np.zeros(8, np.float32)}))))[1]
    header, stable_len, _ = _split(pack(Frame("exec", {"x": np.zeros(8, np.float32)})))
    with pytest.raises(FrameError, match="does not hold 32 bytes"):
        unpack(header, stable_len, bytes(16), known=seen)
    with pytest.raises(FrameError, match="exceeds the 16-byte limit"):
        unpack(header, stable_len, bytes(32), known=seen, max_tensor_bytes=16)
    assert issubclass(FrameError, WireError)  # the node answers every one of them as a bad request


# --- a node's frame port -----------------------------------------------------------------------------------
def _frame_port(url: str) -> tuple[str, int]:
    port = httpx.get(url + "/health", timeout=10).json()["frames"]
    assert isinstance(port, int)
    return "127.0.0.1", port


def _exec(plan, url: str, tensors, *, task: int = 0) -> Frame:
    env = Envelope("t", 0, [Hop([url], plan.tasks[task].task_id, [plan.tasks[task].outputs[0].name])])
    return Frame("exec", tensors, env)


def _ids(n: int = 3, dtype=np.int64) -> dict[str, np.ndarray]:
    return {"input_ids": np.arange(n, dtype=dtype).reshape(1, n)}


def test_a_node_answers_frames_and_keeps_the_connection(plan, cluster):
    conn = FrameSocket(*_frame_port(cluster.a.url), timeout=30)
    try:
        ok = conn.request(_exec(plan, cluster.a.url, _ids()), 30, 1 << 30)
        assert ok.kind == "ok" and ok.hops[0]["hop"] == 0
        assert set(ok.tensors) == {plan.tasks[0].outputs[0].name}
        # the same interface checks as POST /execute, as typed error frames, and the connection stays usable
        for tensors, words in ((_ids(dtype=np.float64), "dtype float64"), ({}, "missing input"),
                               ({**_ids(), "extra": np.zeros(2, np.float32)}, "no input 'extra'")):
            bad = conn.request(_exec(plan, cluster.a.url, tensors), 30, 1 << 30)
            assert bad.kind == "error" and bad.error["status"] == 422 and bad.error["kind"] == "bad_request"
            assert words in bad.error["error"] and bad.error["hop"] == 0
        # the hop lists one URL: a frame saying it came by its third is refused
        bad_via = _exec(plan, cluster.a.url, _ids())
        bad_via.via = 2
        refused = conn.request(bad_via, 30, 1 << 30)
        assert refused.error["status"] == 400 and refused.error["kind"] == "bad_request"
        assert "URL 2 of hop 0" in refused.error["error"]
        other = conn.request(_exec(plan, cluster.a.url, _ids(), task=1), 30, 1 << 30)
        assert other.error["status"] == 404 and other.error["kind"] == "not_here"
        assert conn.request(_exec(plan, cluster.a.url, _ids()), 30, 1 << 30).kind == "ok"
    finally:
        conn.close()


def _send_raw(addr, data: bytes, *, closes: bool = True) -> dict:
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(data)
        prefix = s.recv(PREFIX.size, socket.MSG_WAITALL)
        _, header_len, stable_len, payload_len = PREFIX.unpack(prefix)
        header = s.recv(header_len, socket.MSG_WAITALL)
        reply = unpack(header, stable_len, s.recv(payload_len, socket.MSG_WAITALL) if payload_len else b"")[0]
        if closes:  # after a frame it could not read, the node closes the connection
            assert s.recv(1) == b""
    assert reply.kind == "error"
    return reply.error


def test_garbage_oversize_and_malformed_frames_get_typed_errors(plan, cluster):
    addr = _frame_port(cluster.c.url)  # c takes at most 1 MiB
    assert _send_raw(addr, b"GET / HTTP/1.1\r\n\r\n")["status"] == 400
    too_big = _send_raw(addr, PREFIX.pack(MAGIC, 2, 0, 2 << 20) + b"{}")
    assert too_big["status"] == 413 and too_big["kind"] == "too_large"
    malformed = _send_raw(addr, _raw(["exec", [["x", "float32", [4], 0]], None, None, None], bytes(8)))
    assert malformed["status"] == 400 and "does not hold 16 bytes" in malformed["error"]
    # a well-formed frame with a bad request in it: refused, the connection stays usable
    no_env = _send_raw(addr, _raw(["exec", [], None, None, None]), closes=False)
    assert no_env["status"] == 400 and "envelope" in no_env["error"]
    bad_env = _send_raw(addr, _raw(["exec", [], '{"job":"j","route":[]}', None, None], rest=[5, [], *NO_REST[2:]]),
                       closes=False)
    assert bad_env["status"] == 400 and "route" in bad_env["error"]
    assert httpx.get(cluster.c.url + "/health", timeout=10).status_code == 200


def test_frames_and_http_give_identical_generations(plan, cluster):
    prompt = [3, 1, 4, 1, 5]
    outs = {}
    for transport in ("frames", "http"):
        with PipelineClient(plan, cluster.route, transport=transport) as client:
            outs[transport] = client.generate(prompt, 6)
            assert client.last_hops and [h["hop"] for h in client.last_hops] == [0, 1, 2]
    assert outs["frames"] == outs["http"]


def test_unknown_transport_is_refused(plan, cluster):
    from splitup.client.pipeline import PipelineError

    with pytest.raises(PipelineError, match="transport"):
        PipelineClient(plan, cluster.route, transport="carrier-pigeon")


def test_prefix_layout_is_fixed():
    assert PREFIX.size == 16 and struct.calcsize("<4sIII") == 16


# --- direct answers: the last node writes the result to the client's listening connection ----------------
def test_a_generation_is_answered_directly_and_matches_the_chain(plan, cluster):
    prompt = [2, 7, 1, 8]
    outs = {}
    for direct in (True, False):
        with PipelineClient(plan, cluster.route, direct=direct) as client:
            with client.session() as gen:
                outs[direct] = [int(np.argmax(gen.step(np.asarray(t)))) for t in (prompt, [5], [9], [5])]
                assert client.last_direct == direct
                # every hop's record comes with the result, in route order
                assert [h["hop"] for h in client.last_hops] == [0, 1, 2]
    assert outs[True] == outs[False]


def _listen(addr, token: str) -> FrameSocket:
    listener = FrameSocket(*addr, timeout=30)
    assert listener.request(Frame("listen", reply={"to": token}), 30, 1 << 30).kind == "ok"
    return listener


def test_the_last_node_answers_a_listener_or_else_along_the_chain(plan, cluster):
    addr = _frame_port(cluster.a.url)
    listener, conn = _listen(addr, "tok"), FrameSocket(*addr, timeout=30)
    out = plan.tasks[0].outputs[0].name
    try:
        request = _exec(plan, cluster.a.url, _ids())
        request.reply = {"to": "tok", "id": "step-1"}
        conn.send(request, 30)
        result = listener.receive(30, 1 << 30)
        assert result.kind == "ok" and result.reply == {"id": "step-1"} and result.hops[0]["hop"] == 0
        assert set(result.tensors) == {out}
        # a step answered directly is not answered along the chain as well
        assert not select.select([conn.sock], [], [], 0.3)[0]
        # a token nobody listens for here: the result comes back on the request's own connection, with its id
        request.reply = {"to": "nobody", "id": "step-2"}
        chained = conn.request(request, 30, 1 << 30)
        assert chained.kind == "ok" and chained.reply == {"id": "step-2"}
        assert np.array_equal(chained.tensors[out], result.tensors[out])
        # errors come back along the chain, with the step's id, never to the listener
        bad = _exec(plan, cluster.a.url, _ids(dtype=np.float64))
        bad.reply = {"to": "tok", "id": "step-3"}
        error = conn.request(bad, 30, 1 << 30)
        assert error.error["status"] == 422 and error.reply == {"id": "step-3"}
        assert not select.select([listener.sock], [], [], 0.3)[0]
    finally:
        listener.close()
        conn.close()


def test_a_direct_step_whose_next_node_is_gone_fails_fast_naming_that_hop(plan, cluster):
    # the route's second node is a closed port: node a cannot send the step on, and says which hop failed
    addr = _frame_port(cluster.a.url)
    dead = f"http://127.0.0.1:{free_port()}"
    env = Envelope("t", 0, [Hop([cluster.a.url], plan.tasks[0].task_id, [plan.tasks[0].outputs[0].name]),
                            Hop([dead], plan.tasks[1].task_id, ["logits"], "s", 0)])
    listener, conn = _listen(addr, "tok2"), FrameSocket(*addr, timeout=30)
    try:
        error = conn.request(Frame("exec", _ids(), env, reply={"to": "tok2", "id": "s1"}), 30, 1 << 30)
        assert error.kind == "error" and error.error["kind"] == "unreachable" and error.error["hop"] == 1
        assert error.reply == {"id": "s1"}
    finally:
        listener.close()
        conn.close()


@pytest.mark.parametrize(("to", "rid"), [
    (3, None),            # a token that is not a string
    ("x" * 65, None),     # longer than MAX_TOKEN
    (None, 7),            # a reply id that is not a string
    (None, ""),           # nor empty
    (None, "y" * 65),
])
def test_malformed_reply_addresses_are_typed_errors(to, rid):
    with pytest.raises(FrameError, match="reply address"):
        _unpack([_raw(["exec", [], None, to, None], rest=[None, None, rid, *NO_REST[3:]])])


@pytest.mark.parametrize("via", ["1", -1, 8, True, 1.5])
def test_a_via_that_is_not_a_url_index_is_a_typed_error(via):
    with pytest.raises(FrameError, match="via"):
        _unpack([_raw(["exec", [], None, None, via])])


def test_via_comes_through_with_the_stable_part():
    env = Envelope("j", 0, [Hop(["http://a", "http://b"], "t0", ["h"])])
    assert _unpack(pack(Frame("exec", {}, env, via=1))).via == 1
    assert _unpack(pack(Frame("exec", {}, env))).via is None
    sent: list = [None, b""]
    one, two = pack(Frame("exec", {}, env, via=0), sent), pack(Frame("exec", {}, env, via=1), sent)
    assert bytes(one[1]) != bytes(two[1])  # another URL of the hop: not the stable part kept for the first


def test_malformed_hop_records_and_envelopes_are_typed_errors():
    with pytest.raises(FrameError, match="hop records"):
        _unpack([_raw(["exec", [], None, None, None], rest=[None, None, None, [{}] * 65, None, None, None])])
    with pytest.raises(FrameError, match="hop records"):
        _unpack([_raw(["exec", [], None, None, None], rest=[None, None, None, {}, None, None, None])])
    # a route text without its hop index and steps
    with pytest.raises(FrameError, match="envelope"):
        _unpack([_raw(["exec", [], "{}", None, None])])
    with pytest.raises(FrameError, match="route text"):
        _unpack([_raw(["exec", [], 5, None, None], rest=[0, [], *NO_REST[2:]])])


def test_a_listen_frame_without_a_token_is_refused(cluster):
    assert _send_raw(_frame_port(cluster.a.url), _raw(["listen", [], None, None, None]), closes=False)["status"] == 400
