"""The lean node-to-node HTTP client against small asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio

import pytest

from splitup.node.forward import ForwardError, HopClient

from .procs import free_port


async def _serve(handler):  # noqa: ANN001, ANN202
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/execute"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


def test_keep_alive_chunked_replies_and_a_stale_pooled_connection():
    async def main() -> None:
        served = []

        async def handler(reader, writer):  # noqa: ANN001
            body = await _read_request(reader)
            served.append(body)
            if len(served) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Splitup-Hops: []\r\n\r\nhello")
                await writer.drain()
                body = await _read_request(reader)  # same connection: keep-alive works
                served.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                await writer.drain()
                writer.close()  # now idle in the client's pool, but dead
                return
            writer.write(b"HTTP/1.1 422 Unprocessable\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            await writer.drain()
            writer.close()

        server, url = await _serve(handler)
        client = HopClient()
        try:
            r = await client.post(url, b"one", "application/x", 5)
            assert (r.status, r.content, r.headers["x-splitup-hops"]) == (200, b"hello", "[]")
            r = await client.post(url, b"two", "application/x", 5)
            assert (r.status, r.content) == (200, b"abcde")
            await asyncio.sleep(0.05)
            r = await client.post(url, b"three", "application/x", 5)  # the stale connection is replaced
            assert r.status == 422
            assert served == [b"one", b"two", b"three"]
        finally:
            await client.aclose()
            server.close()

    asyncio.run(main())


def test_unreachable_silent_and_oversized_peers():
    async def main() -> None:
        client = HopClient(max_reply_bytes=10)
        with pytest.raises(ForwardError, match="cannot connect"):
            await client.post(f"http://127.0.0.1:{free_port()}/execute", b"x", "a/b", 5)

        async def silent(reader, writer):  # noqa: ANN001
            await _read_request(reader)
            await asyncio.sleep(10)

        async def huge(reader, writer):  # noqa: ANN001
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            await writer.drain()

        async def garbage(reader, writer):  # noqa: ANN001
            await _read_request(reader)
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            await writer.drain()

        for handler, error, match in ((silent, TimeoutError, None), (huge, ForwardError, "Content-Length"),
                                      (garbage, ForwardError, "not an HTTP")):
            server, url = await _serve(handler)
            try:
                with pytest.raises(error, match=match):
                    await client.post(url, b"x", "a/b", 0.3)
            finally:
                server.close()
        with pytest.raises(ForwardError, match="only http://"):
            await client.post("https://example.invalid/execute", b"x", "a/b", 1)
        await client.aclose()

    asyncio.run(main())
