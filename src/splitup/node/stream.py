"""The node's frame port: hops as binary frames over kept-open TCP connections (:mod:`splitup.node.frames`).

The same hop as ``POST /execute``, with the same checks and typed errors (an ``error`` frame carries the
status, kind and hop the HTTP answer would have), minus HTTP: a route sent as frames is forwarded as
frames, node to node, and the reply comes back along the same connections. A node learns where the next
node takes frames from that node's ``/health`` (its ``frames`` port) once, then keeps connections open.

Direct answers (:mod:`splitup.node.frames`): a client's ``listen`` frame registers its connection under a
token; an ``exec`` frame whose reply address names a token registered here, at the route's last hop, has
its result written to that connection. Such a step is not answered upstream when it succeeds: each node
forwards it on a connection paired with the one it came in on and goes back to reading, and whatever
comes back on the pair (an error, a result the last node could not deliver directly, or the next node
going away) is relayed to the upstream connection with the step's reply id, for the client to match.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from splitup.node.frames import (
    Frame,
    FrameError,
    FrameTooLarge,
    frame_address,
    pack,
    read_frame,
    write_frame,
)
from splitup.node.node import Node
from splitup.node.wire import Envelope, encode

log = logging.getLogger("splitup.node")
MAX_IDLE = 8
MAX_LISTENERS = 1024  # clients waiting for direct answers on one node
# Stream buffer size: a decode step's logits (SmolLM2: 192 KiB) arrive in one read instead of several
# pause/resume cycles of the default 64 KiB.
STREAM_LIMIT = 4 << 20


class FrameForwarder:
    """Kept-open frame connections to next hops, keyed by the hop's HTTP URL."""

    def __init__(self, http: httpx.AsyncClient, max_payload: int) -> None:
        self.http, self.max_payload = http, max_payload
        self._addr: dict[str, tuple[str, int]] = {}
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()

    def known(self, url: str) -> tuple[str, int] | None:
        """Where the node at ``url`` takes frames, if already asked."""
        return self._addr.get(url)

    async def address(self, url: str, timeout: float) -> tuple[str, int]:
        addr = self._addr.get(url)
        if addr is None:
            try:
                r = await self.http.get(url.rstrip("/") + "/health", timeout=timeout)
                health = r.json() if r.status_code == 200 else {}
            except (httpx.HTTPError, ValueError) as exc:
                raise ConnectionError(f"cannot ask {url} for its frame port: {exc!r}") from None
            addr = frame_address(health if isinstance(health, dict) else {}, urlsplit(url).hostname or "")
            if addr is None:
                raise ConnectionError(f"{url} takes no frames")
            self._addr[url] = addr
        return addr

    async def request(self, url: str, frame: Frame, timeout: float) -> Frame:
        """Send ``frame`` to the node at ``url``; ``TimeoutError`` or ``ConnectionError``/``FrameError``."""
        async with asyncio.timeout(timeout):
            addr = await self.address(url, timeout)
            while True:
                conns = self._idle.setdefault(addr, [])
                reused = bool(conns)
                if reused:
                    reader, writer = conns.pop()
                else:
                    reader, writer = await asyncio.open_connection(*addr, limit=STREAM_LIMIT)
                try:
                    await write_frame(writer, frame)
                    reply = await read_frame(reader, self.max_payload)
                    if reply is None:
                        raise ConnectionError("the next node closed the connection")
                except (OSError, asyncio.IncompleteReadError, FrameError) as exc:
                    writer.close()
                    if reused and not isinstance(exc, FrameError):
                        continue  # an idle connection the peer had closed: open a fresh one
                    raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
                except BaseException:
                    writer.close()  # timed out or cancelled mid-reply: the stream is in an unknown state
                    raise
                if len(conns) < MAX_IDLE:
                    conns.append((reader, writer))
                else:
                    writer.close()
                return reply


class FrameServer:
    """Serves hop frames; ``compute(env, tensors)`` is the node's shared hop dispatcher."""

    def __init__(self, node: Node, compute: Callable[..., Any], forwarder: FrameForwarder,
                 admit: Callable[[], Any], failed: Callable[[Exception, int | None], Any]) -> None:
        self.node, self.compute, self.forwarder = node, compute, forwarder
        self.admit, self.failed = admit, failed
        self.listeners: dict[str, asyncio.StreamWriter] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limit = self.node.config.max_body_bytes
        tokens: list[str] = []  # listeners registered on this connection
        onward = _Onward(writer, limit)
        try:
            while True:
                try:
                    frame = await read_frame(reader, limit, max_tensor_bytes=limit)
                except FrameTooLarge as exc:
                    await write_frame(writer, _error(413, "too_large", str(exc), None))
                    return  # the payload was not read: the stream cannot be resynchronised
                except FrameError as exc:
                    await write_frame(writer, _error(400, "bad_request", str(exc), None))
                    return
                if frame is None:
                    return
                if frame.kind == "listen":
                    await write_frame(writer, self._listen(frame, writer, tokens))
                    continue
                reply = await self.serve(frame, onward)
                if reply is not None:
                    await write_frame(writer, reply)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the peer went away; its hop (if any) is lost with it
        finally:
            onward.close()
            for token in tokens:
                if self.listeners.get(token) is writer:
                    del self.listeners[token]
            writer.close()

    def _listen(self, frame: Frame, writer: asyncio.StreamWriter, tokens: list[str]) -> Frame:
        """Register ``writer`` for direct answers to the frame's token (a client's secret)."""
        token = (frame.reply or {}).get("to")
        if token is None:
            return _error(400, "bad_request", "a listen frame names its token in reply.to", None)
        if token not in self.listeners and len(self.listeners) >= MAX_LISTENERS:
            return _error(429, "busy", f"this node holds its maximum of {MAX_LISTENERS} listeners", None)
        self.listeners[token] = writer
        tokens.append(token)
        return Frame("ok")

    async def serve(self, frame: Frame, onward: _Onward | None = None) -> Frame | None:
        """The reply to ``frame``; None for a direct-answer step that went on (or to its client) well."""
        hop: int | None = None
        release = None
        try:
            release = self.admit()
            if frame.kind != "exec" or frame.envelope is None:
                raise FrameError(f"expected an 'exec' frame with an envelope, got {frame.kind!r}")
            env = Envelope.from_wire(frame.envelope)
            hop = env.hop
            out, record, signed = await self.compute(env, frame.tensors, frame.handoff)
            rid = (frame.reply or {}).get("id")
            if hop + 1 == len(env.route):
                return None if self._direct(frame, out, record, signed) else self._final(env, out, record, frame,
                                                                                         signed)
            if rid is not None and onward is not None:
                await self._onward(onward, env.next(), out, record, frame, rid, signed)
                return None
            return await self._forward(env.next(), out, record, signed)
        except _Failed as exc:
            return _error(exc.status, exc.kind, str(exc), exc.hop, (frame.reply or {}).get("id"))
        except Exception as exc:
            failure = self.failed(exc, hop)
            return _error(failure.status, failure.kind, str(failure), failure.hop, (frame.reply or {}).get("id"))
        finally:
            if release is not None:
                release()

    def _direct(self, frame: Frame, out: dict[str, Any], record: dict[str, Any],
                signed: dict[str, Any] | None) -> bool:
        """Write the result to the client listening for it here; False if there is no such listener (the
        result then goes back along the chain)."""
        reply = frame.reply or {}
        writer = self.listeners.get(reply.get("to", ""))
        if writer is None or writer.is_closing() or "id" not in reply:
            return False
        if writer.transport.get_write_buffer_size() > self.node.config.max_body_bytes:
            return False  # a listener that does not read: the chain's replies wait for their reader instead
        # one write call: results for several steps on one listener never interleave
        writer.writelines(pack(Frame("ok", out, hops=[*frame.hops, record], reply={"id": reply["id"]},
                                     handoff=signed)))
        return True

    def _final(self, env: Envelope, out: dict[str, Any], record: dict[str, Any], frame: Frame,
               signed: dict[str, Any] | None) -> Frame:
        # a direct-answer step's records came forward with it; its reply id lets the client match the answer
        hops = [*frame.hops, record] if frame.reply else [record]
        reply = {"id": frame.reply["id"]} if frame.reply and "id" in frame.reply else None
        size = sum(v.nbytes for v in out.values())
        if size > self.node.config.park_above_bytes:
            rid = self.node.shelf.put(encode(out))
            if rid is not None:
                # The address this node was reached at is one the route's client can use too.
                return Frame("ok", hops=hops, reply=reply,
                             parked=f"{env.current.urls[0].rstrip('/')}/results/{rid}", handoff=signed)
        return Frame("ok", out, hops=hops, reply=reply, handoff=signed)

    async def _onward(self, onward: _Onward, env: Envelope, out: dict[str, Any], record: dict[str, Any],
                      frame: Frame, rid: str, signed: dict[str, Any] | None) -> None:
        """A direct-answer step goes on to the next hop's first URL (a session lives on one node) with the
        hop records so far; only failing to send it is an error here."""
        url = env.current.urls[0]
        request = Frame("exec", out, env, hops=[*frame.hops, record], reply=frame.reply, handoff=signed)
        # the usual step: the next node's connection is open and takes the frame at once (no timer to set)
        addr = self.forwarder.known(url)
        link = None if addr is None else onward.post(addr, request, rid, env.hop, url)
        if link is not None and not link.transport.get_write_buffer_size() and not link.is_closing():
            return
        try:
            async with asyncio.timeout(env.hop_timeout):
                if link is not None:
                    await link.drain()
                else:
                    await onward.send(await self.forwarder.address(url, env.hop_timeout), request, rid, env.hop, url)
        except TimeoutError:
            raise _Failed(504, "timeout", f"hop {env.hop} at {url} timed out after {env.hop_timeout} s", env.hop) from None
        except (OSError, ConnectionError) as exc:
            raise _Failed(502, "unreachable", f"hop {env.hop} at {url} unreachable: {exc}", env.hop) from None

    async def _forward(self, env: Envelope, out: dict[str, Any], record: dict[str, Any],
                       signed: dict[str, Any] | None) -> Frame:
        """Send to the next hop and relay its reply; stand-ins for a stateless hop that is down."""
        nxt = env.current
        timeout = env.hop_timeout * (len(env.route) - env.hop)  # deeper hops give up first
        urls = nxt.urls if nxt.session is None else nxt.urls[:1]  # a session lives on one node only
        request = Frame("exec", out, env, handoff=signed)
        failure = None
        for attempt, url in enumerate(urls):
            try:
                reply = await self.forwarder.request(url, request, timeout)
            except TimeoutError:
                failure = _error(504, "timeout", f"hop {env.hop} at {url} timed out after {timeout} s", env.hop)
                continue
            except ConnectionError as exc:
                failure = _error(502, "unreachable", f"hop {env.hop} at {url} unreachable: {exc}", env.hop)
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


class _Failed(Exception):
    """A hop that could not go on, as the error frame's status, kind and hop."""

    def __init__(self, status: int, kind: str, message: str, hop: int) -> None:
        super().__init__(message)
        self.status, self.kind, self.hop = status, kind, hop


class _Onward:
    """The connections a node's upstream connection sends its direct-answer steps on, one per next node,
    each with a task relaying what comes back on it (errors, undelivered results) to the upstream; when
    the next node goes away, an ``unreachable`` error for the last step sent to it (a client that already
    has that step's result drops it)."""

    def __init__(self, upstream: asyncio.StreamWriter, max_payload: int) -> None:
        self.upstream, self.max_payload = upstream, max_payload
        self.links: dict[tuple[str, int], tuple[asyncio.StreamWriter, asyncio.Task[None]]] = {}
        self.last: dict[tuple[str, int], tuple[str, int, str]] = {}  # addr -> (reply id, hop, url)
        self.closed = False

    async def send(self, addr: tuple[str, int], frame: Frame, rid: str, hop: int, url: str) -> None:
        link = self.post(addr, frame, rid, hop, url)
        if link is None:
            reader, writer = await asyncio.open_connection(*addr, limit=STREAM_LIMIT)
            self.links[addr] = (writer, asyncio.create_task(self._relay(addr, reader, writer)))
            link = self.post(addr, frame, rid, hop, url)
            if link is None:
                raise ConnectionResetError(f"the connection to {addr[0]}:{addr[1]} closed as it opened")
        if link.transport.get_write_buffer_size() or link.is_closing():
            await link.drain()

    def post(self, addr: tuple[str, int], frame: Frame, rid: str, hop: int, url: str) -> asyncio.StreamWriter | None:
        """Write ``frame`` on the open link to ``addr`` (not waiting for it to drain); None: no open link."""
        link = self.links.get(addr)
        if link is None or link[0].is_closing():
            return None
        self.last[addr] = (rid, hop, url)
        link[0].writelines(pack(frame))
        return link[0]

    async def _relay(self, addr: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (frame := await read_frame(reader, self.max_payload)) is not None:
                await write_frame(self.upstream, frame)
        except (OSError, asyncio.IncompleteReadError, FrameError):
            pass
        finally:
            writer.close()
            if self.links.get(addr, (None,))[0] is writer:
                del self.links[addr]
            last = self.last.pop(addr, None)
            if last is not None and not self.closed and not self.upstream.is_closing():
                rid, hop, url = last
                self.upstream.writelines(pack(_error(502, "unreachable", f"hop {hop} at {url} closed the connection",
                                                     hop, rid)))

    def close(self) -> None:
        self.closed = True
        for writer, task in self.links.values():
            task.cancel()
            writer.close()
        self.links.clear()
