"""The node's frame port: hops as binary frames over kept-open TCP connections (:mod:`splitup.node.frames`).

The same hop as ``POST /execute``, with the same checks and typed errors (an ``error`` frame carries the
status, kind and hop the HTTP answer would have), minus HTTP: a route sent as frames is forwarded as
frames, node to node, and the reply comes back along the same connections. A node learns where the next
node takes frames from that node's ``/health`` (its ``frames`` port) once, then keeps connections open.
Each connection has a thread of its own that reads, computes and sends on (the HTTP path keeps the event
loop); a node serves at most ``MAX_LINKS`` connections at once and refuses more with a ``busy`` frame.

Direct answers (:mod:`splitup.node.frames`): a client's ``listen`` frame registers its connection under a
token; an ``exec`` frame whose reply address names a token registered here, at the route's last hop, has
its result written to that connection. Such a step is not answered upstream when it succeeds: each node
forwards it on a connection paired with the one it came in on and goes back to reading, and whatever
comes back on the pair (an error, a result the last node could not deliver directly, or the next node
going away) is relayed to the upstream connection with the step's reply id, for the client to match.
A listener that does not read is not written to: its results go back along the chain instead.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from splitup import jsonparse
from splitup.node.bounded import CONTROL_BYTES, bounded
from splitup.node.failures import HopFailed, failed
from splitup.node.frames import Frame, FrameError, FrameSocket, FrameTooLarge, frame_address
from splitup.node.node import Node
from splitup.node.threads import name_this_thread
from splitup.node.wire import Envelope, encode

log = logging.getLogger("splitup.node")
MAX_IDLE = 8
MAX_LISTENERS = 1024  # clients waiting for direct answers on one node
MAX_LINKS = 512  # frame connections served at once (a thread each)
REFUSAL_S = 5.0  # how long writing a refusal to a peer may take before the connection is dropped
WRITE_S = 30.0  # how long writing a frame to a peer that does not read may take, likewise
HOP_THREAD = "splitup-hop-link"  # the threads that serve hops ("splitup-hop": as the HTTP path's pool)


class FrameForwarder:
    """Kept-open frame connections to next hops, keyed by the hop's HTTP URL; shared by the link threads."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._addr: dict[str, tuple[str, int]] = {}
        self._idle: dict[tuple[str, int], list[FrameSocket]] = {}
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()
            if self._http is not None:
                self._http.close()

    def known(self, url: str) -> tuple[str, int] | None:
        """Where the node at ``url`` takes frames, if already asked."""
        return self._addr.get(url)

    def address(self, url: str, timeout: float) -> tuple[str, int]:
        """Where the node at ``url`` takes frames, asked from its ``/health`` within ``timeout`` seconds the
        first time; ``TimeoutError`` or ``ConnectionError``."""
        addr = self._addr.get(url)
        if addr is None:
            with self._lock:
                if self._http is None:
                    self._http = httpx.Client()
            try:
                r = bounded(self._http, "GET", url.rstrip("/") + "/health", timeout, max_bytes=CONTROL_BYTES)
                health = jsonparse.loads(r.content) if r.status_code == 200 else {}
            except httpx.TimeoutException:
                raise TimeoutError(f"{url} did not say where it takes frames within {timeout} s") from None
            except (httpx.HTTPError, ValueError) as exc:
                raise ConnectionError(f"cannot ask {url} for its frame port: {exc!r}") from None
            addr = frame_address(health if isinstance(health, dict) else {}, urlsplit(url).hostname or "")
            if addr is None:
                raise ConnectionError(f"{url} takes no frames")
            self._addr[url] = addr
        return addr

    def request(self, url: str, frame: Frame, timeout: float) -> Frame:
        """Send ``frame`` to the node at ``url``; ``TimeoutError`` or ``ConnectionError``."""
        deadline = time.monotonic() + timeout
        addr = self.address(url, timeout)
        while True:
            with self._lock:
                conns = self._idle.setdefault(addr, [])
                conn = conns.pop() if conns else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = connect(addr, deadline)
                reply = conn.request(frame, max(deadline - time.monotonic(), 0.0), self.max_payload)
            except TimeoutError:
                if conn is not None:
                    conn.close()  # timed out mid-reply: the stream is in an unknown state
                raise
            except (OSError, FrameError) as exc:
                if conn is not None:
                    conn.close()
                if reused and not isinstance(exc, FrameError):
                    continue  # an idle connection the peer had closed: open a fresh one
                raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
            with self._lock:
                if len(conns) < MAX_IDLE:
                    conns.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
            return reply


def connect(addr: tuple[str, int], deadline: float) -> FrameSocket:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"no time left to connect to {addr[0]}:{addr[1]}")
    return FrameSocket(addr[0], addr[1], left)


class Dispatch(Protocol):
    """What the frame server needs of the node's hop dispatcher (``splitup.node.app.HopDispatch``)."""

    def compute_here(self, env: Envelope, tensors: Mapping[str, Any], handoff: dict[str, Any] | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]: ...


class FrameServer:
    """Serves hop frames on a thread per connection: a hop is read with a blocking ``recv_into``, computed
    and sent on in that thread, with no event loop in between (an event loop's wake-up, callbacks and stream
    buffers cost more than the read itself when every hop runs with caches the engine just flushed).
    ``dispatch`` is the node's hop dispatcher (``compute_here``), shared with HTTP."""

    def __init__(self, node: Node, dispatch: Dispatch, forwarder: FrameForwarder) -> None:
        self.node, self.dispatch, self.forwarder = node, dispatch, forwarder
        self.listeners: dict[str, FrameSocket] = {}
        self._links: set[FrameSocket] = set()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        threading.Thread(target=self._accept, args=(self._sock,), name="splitup-frames", daemon=True).start()
        return self._sock.getsockname()[1]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            links = list(self._links)
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            except OSError:
                pass
            self._sock.close()
        for link in links:
            link.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, _ = server.accept()
            except OSError:
                return  # closed
            link = FrameSocket.over(sock)
            with self._lock:
                full = self._closed or len(self._links) >= MAX_LINKS
                if not full:
                    self._links.add(link)
            if full:
                self._refuse(link)
                continue
            threading.Thread(target=self._serve_link, args=(link,), name=HOP_THREAD, daemon=True).start()

    def _refuse(self, link: FrameSocket) -> None:
        """Answer ``busy`` and close, in the accepting thread and without waiting: a fresh connection's
        buffer takes the small frame at once, and a flood of connections must not cost a thread each."""
        try:
            link.send(_error(429, "busy", f"this node serves its maximum of {MAX_LINKS} frame connections",
                             None), 0, only_if_room=True)
        except OSError:
            pass
        finally:
            link.close()

    def _serve_link(self, link: FrameSocket) -> None:
        name_this_thread()
        limit = self.node.config.max_body_bytes
        tokens: list[str] = []  # listeners registered on this connection
        onward = _Onward(link, limit)
        try:
            while True:
                try:
                    frame = link.read(limit, max_tensor_bytes=limit)
                except FrameTooLarge as exc:
                    link.send(_error(413, "too_large", str(exc), None), REFUSAL_S)
                    return  # the payload was not read: the stream cannot be resynchronised
                except FrameError as exc:
                    link.send(_error(400, "bad_request", str(exc), None), REFUSAL_S)
                    return
                if frame is None:
                    return
                if frame.kind == "listen":
                    link.send(self._listen(frame, link, tokens), REFUSAL_S)
                    continue
                reply = self.serve(frame, onward)
                if reply is not None:
                    link.send(reply, WRITE_S)
        except OSError:
            pass  # the peer went away, or would not read; its hop (if any) is lost with it
        except Exception:  # a link's thread must end cleanly whatever happens in it
            log.exception("unexpected error on a frame connection")
        finally:
            onward.close()
            with self._lock:
                for token in tokens:
                    if self.listeners.get(token) is link:
                        del self.listeners[token]
                self._links.discard(link)
            link.close()

    def _listen(self, frame: Frame, link: FrameSocket, tokens: list[str]) -> Frame:
        """Register ``link`` for direct answers to the frame's token (a client's secret)."""
        token = (frame.reply or {}).get("to")
        if token is None:
            return _error(400, "bad_request", "a listen frame names its token in reply.to", None)
        with self._lock:
            if token not in self.listeners and len(self.listeners) >= MAX_LISTENERS:
                return _error(429, "busy", f"this node holds its maximum of {MAX_LISTENERS} listeners", None)
            self.listeners[token] = link
        tokens.append(token)
        return Frame("ok")

    def serve(self, frame: Frame, onward: _Onward | None = None) -> Frame | None:
        """The reply to ``frame``; None for a direct-answer step that went on (or to its client) well."""
        hop: int | None = None
        reply = frame.reply
        try:
            if frame.kind != "exec" or frame.envelope is None:
                raise FrameError(f"expected an 'exec' frame with an envelope, got {frame.kind!r}")
            env = Envelope.from_wire(frame.envelope)
            hop = env.hop
            if frame.via is not None and frame.via >= len(env.current.urls):
                raise FrameError(f"the frame says it came by URL {frame.via} of hop {hop}, which lists "
                                 f"{len(env.current.urls)}")
            out, record, signed = self.dispatch.compute_here(env, frame.tensors, frame.handoff)
            if hop + 1 == len(env.route):
                return None if self._direct(frame, out, record, signed) else self._final(env, out, record, frame,
                                                                                         signed)
            if reply is not None and onward is not None and "id" in reply:
                self._onward(onward, env, out, record, frame, reply["id"], signed)
                return None
            return self._forward(env.next(), out, record, signed)
        except Exception as exc:
            return _error_of(failed(exc, hop), (reply or {}).get("id"))

    def _direct(self, frame: Frame, out: dict[str, Any], record: dict[str, Any],
                signed: dict[str, Any] | None) -> bool:
        """Write the result to the client listening for it here; False if there is no such listener, or its
        socket takes nothing now (a listener that does not read): the result then goes back along the chain."""
        reply = frame.reply or {}
        listener = self.listeners.get(reply.get("to", ""))
        if listener is None or "id" not in reply:
            return False
        answer = Frame("ok", out, hops=[*frame.hops, record], reply={"id": reply["id"]}, handoff=signed)
        try:
            return listener.send(answer, WRITE_S, only_if_room=True)
        except OSError:
            listener.close()  # part of a frame went out and the rest could not: that listener is done
            return False

    def _final(self, env: Envelope, out: dict[str, Any], record: dict[str, Any], frame: Frame,
               signed: dict[str, Any] | None) -> Frame:
        # a direct-answer step's records came forward with it; its reply id lets the client match the answer
        hops = [*frame.hops, record] if frame.reply else [record]
        reply = {"id": frame.reply["id"]} if frame.reply and "id" in frame.reply else None
        size = sum(v.nbytes for v in out.values())
        if size > self.node.config.park_above_bytes:
            rid = self.node.shelf.put(encode(out))
            if rid is not None:
                # The address this node was reached at (a stand-in's is not the hop's first) is one the
                # route's client can use too.
                here = env.current.urls[frame.via or 0]
                return Frame("ok", hops=hops, reply=reply, parked=f"{here.rstrip('/')}/results/{rid}", handoff=signed)
        return Frame("ok", out, hops=hops, reply=reply, handoff=signed)

    def _onward(self, onward: _Onward, env: Envelope, out: dict[str, Any], record: dict[str, Any],
                frame: Frame, rid: str, signed: dict[str, Any] | None) -> None:
        """A direct-answer step goes on to the next hop's first URL (a session lives on one node) with the
        hop records so far; only failing to send it is an error here. Sent as its fields (no Frame and no
        next hop's Envelope built first): this runs at every hop of every generated token."""
        wire = env.to_wire()
        hop = wire[1] = env.hop + 1
        url = env.route[hop].urls[0]
        frame.hops.append(record)  # the records the frame brought, this node's last: the frame is not used again
        try:
            deadline = time.monotonic() + env.hop_timeout
            addr = self.forwarder.known(url) or self.forwarder.address(url, env.hop_timeout)
            onward.send(addr, out, wire, frame, signed, rid, hop, url, deadline)
        except TimeoutError:
            raise HopFailed.timed_out(hop, url, env.hop_timeout) from None
        except (OSError, FrameError) as exc:
            raise HopFailed.unreachable(hop, url, exc) from None

    def _forward(self, env: Envelope, out: dict[str, Any], record: dict[str, Any],
                 signed: dict[str, Any] | None) -> Frame:
        """Send to the next hop and relay its reply; stand-ins for a stateless hop that is down."""
        nxt = env.current
        timeout = env.hop_timeout * (len(env.route) - env.hop)  # deeper hops give up first
        urls = nxt.urls if nxt.session is None else nxt.urls[:1]  # a session lives on one node only
        request = Frame("exec", out, env, handoff=signed)
        failure = None
        for attempt, url in enumerate(urls):
            request.via = attempt
            try:
                reply = self.forwarder.request(url, request, timeout)
            except TimeoutError:
                failure = _error_of(HopFailed.timed_out(env.hop, url, timeout))
                continue
            except ConnectionError as exc:
                failure = _error_of(HopFailed.unreachable(env.hop, url, exc))
                continue
            error = reply.error or {}
            if (reply.kind == "error" and error.get("kind") == "not_here" and nxt.session is None
                    and attempt + 1 < len(urls)):
                continue
            reply.hops = [record | ({"failover": attempt} if attempt else {}), *reply.hops]
            return reply
        assert failure is not None
        failure.hops = [record]
        return failure


def _error(status: int, kind: str, message: str, hop: int | None, rid: str | None = None) -> Frame:
    return Frame("error", error={"status": status, "kind": kind, "error": message, "hop": hop},
                 reply=None if rid is None else {"id": rid})


def _error_of(failure: HopFailed, rid: str | None = None) -> Frame:
    return _error(failure.status, failure.kind, str(failure), failure.hop, rid)


class _Onward:
    """The connections a node's upstream connection sends its direct-answer steps on, one per next node,
    each with a thread relaying what comes back on it (errors, undelivered results) to the upstream; when
    the next node goes away, an ``unreachable`` error for the last step sent to it (a client that already
    has that step's result drops it)."""

    def __init__(self, upstream: FrameSocket, max_payload: int) -> None:
        self.upstream, self.max_payload = upstream, max_payload
        self.links: dict[tuple[str, int], FrameSocket] = {}
        self.last: dict[tuple[str, int], tuple[str, int, str]] = {}  # addr -> (reply id, hop, url)
        self._lock = threading.Lock()
        self.closed = False

    def send(self, addr: tuple[str, int], tensors: dict[str, Any], wire: list[Any], frame: Frame,
             handoff: dict[str, Any] | None, rid: str, hop: int, url: str, deadline: float) -> None:
        """Write the step on the link to ``addr`` (``FrameSocket.send_step``: ``tensors`` at ``wire``, with
        ``frame``'s reply address and records), opened (with its relay) if there is none yet."""
        link = self.links.get(addr)
        if link is None:
            link = connect(addr, deadline)
            with self._lock:
                if self.closed:
                    link.close()
                    raise ConnectionResetError("the upstream connection closed")
                self.links[addr] = link
            threading.Thread(target=self._relay, args=(addr, link), name="splitup-hop-relay", daemon=True).start()
        self.last[addr] = (rid, hop, url)
        try:
            link.send_step(tensors, wire, frame.reply, frame.hops, handoff, deadline)
        except OSError:
            link.close()  # part of a frame may be out: the link cannot carry another; its relay ends it
            raise

    def _relay(self, addr: tuple[str, int], link: FrameSocket) -> None:
        name_this_thread()
        try:
            while (frame := link.read(self.max_payload)) is not None:
                self.upstream.send(frame, WRITE_S)
        except (OSError, FrameError):
            pass
        finally:
            link.close()
            with self._lock:
                if self.links.get(addr) is link:
                    del self.links[addr]
                last = self.last.pop(addr, None)
                closed = self.closed
            if last is not None and not closed:
                rid, hop, url = last
                try:
                    self.upstream.send(_error_of(HopFailed.unreachable(hop, url, "it closed the connection"), rid),
                                       WRITE_S)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self.closed = True
            links = list(self.links.values())
            self.links.clear()
        for link in links:
            link.close()
