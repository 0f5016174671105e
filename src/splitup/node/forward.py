"""A minimal HTTP/1.1 client for node-to-node hops: one write per request, pooled keep-alive connections.

Every generated token crosses every hop, so the per-request cost of a general client (httpx builds
several objects and writes headers and body separately) is paid many times a second. This client does
only what a hop needs: ``POST`` with a body of known length to a plain ``http://`` URL, and a response
with ``Content-Length`` or chunked encoding, bounded in size.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 << 10


class ForwardError(Exception):
    """The next node could not be reached or broke the connection (not a timeout)."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    content: bytes


class HopClient:
    def __init__(self, *, max_reply_bytes: int = 1 << 30, max_idle: int = 8) -> None:
        self.max_reply_bytes = max_reply_bytes
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()

    async def post(self, url: str, body: bytes, content_type: str, timeout: float) -> Reply:
        """POST ``body``; raises ``TimeoutError`` after ``timeout`` seconds, :class:`ForwardError` otherwise."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ForwardError(f"only http:// URLs are forwarded by this client: {url}")
        key = (parts.hostname, parts.port or 80)
        host = f"{parts.hostname}:{key[1]}" if ":" not in parts.hostname else f"[{parts.hostname}]:{key[1]}"
        head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        async with asyncio.timeout(timeout):
            while True:
                reused, (reader, writer) = await self._connect(key)
                try:
                    writer.write(head + body)
                    await writer.drain()
                    reply, keep = await self._read_reply(reader)
                except (OSError, asyncio.IncompleteReadError, ForwardError) as exc:
                    writer.close()
                    # An idle pooled connection the peer has closed fails before any reply byte: try a new one.
                    if reused and not isinstance(exc, ForwardError):
                        continue
                    raise ForwardError(f"{type(exc).__name__}: {exc}") from None
                except BaseException:
                    writer.close()  # cancelled or timed out mid-reply: the connection is in an unknown state
                    raise
                self._release(key, reader, writer, keep)
                return reply

    async def _connect(self, key: tuple[str, int]) -> tuple[bool, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        conns = self._idle.get(key)
        while conns:
            reader, writer = conns.pop()
            if not writer.is_closing() and not reader.at_eof():
                return True, (reader, writer)
            writer.close()
        try:
            return False, await asyncio.open_connection(key[0], key[1], limit=MAX_HEADER_BYTES)
        except OSError as exc:
            raise ForwardError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from None

    def _release(self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 keep: bool) -> None:
        conns = self._idle.setdefault(key, [])
        if keep and len(conns) < self.max_idle:
            conns.append((reader, writer))
        else:
            writer.close()

    async def _read_reply(self, reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ForwardError("reply headers too large") from None
        lines = raw.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise ForwardError(f"not an HTTP/1.1 reply: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._read_chunked(reader)
        else:
            length = headers.get("content-length", "")
            if not length.isdigit() or int(length) > self.max_reply_bytes:
                raise ForwardError(f"reply without a usable Content-Length ({length[:20]!r})")
            content = await reader.readexactly(int(length))
        keep = headers.get("connection", "").lower() != "close" and status_line[0] == "HTTP/1.1"
        return Reply(int(status_line[1]), headers, content), keep

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            size_line = (await reader.readuntil(b"\r\n")).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ForwardError("malformed chunk size") from None
            if size == 0:
                await _skip_trailers(reader)
                return bytes(out)
            if len(out) + size > self.max_reply_bytes:
                raise ForwardError("reply exceeds the size limit")
            out += await reader.readexactly(size)
            await reader.readexactly(2)


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass
