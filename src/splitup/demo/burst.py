"""A burst of concurrent completion requests from a lean client, for the load bench and its CI short form.

Each request is its own connection with a minimal HTTP/1.1 request written and read on asyncio streams,
timed from the connect to the last byte of the answer: what the gateway makes a client wait, without the
cost of a full HTTP client library (hundreds of those at once on a busy 2-core machine measure the
client, not the server). ``burst_in_process`` runs it in a fresh process, away from the threads of the
caller (a local market's arbiter, say) that would otherwise share its interpreter lock.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Answer:
    status: int  # -1: no answer (connection failed or cut)
    seconds: float
    retry_after: str | None


async def _one(host: str, port: int, body: bytes, timeout: float) -> Answer:
    t0 = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    except (TimeoutError, OSError):
        return Answer(-1, time.monotonic() - t0, None)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.monotonic() - t0
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return Answer(-1, seconds, None)
    retry = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("retry-after:")), None)
    return Answer(status, seconds, retry)


async def burst(url: str, n: int, *, model: str = "tiny-llama", max_tokens: int = 16,
                timeout: float = 300.0) -> list[Answer]:
    """``n`` requests at once (greedy completions of ``max_tokens`` tokens, prompts "burst 0".. "burst n-1")."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    bodies = [json.dumps({"model": model, "prompt": f"burst {i}", "max_tokens": max_tokens,
                          "temperature": 0}).encode() for i in range(n)]
    return list(await asyncio.gather(*(_one(host, port, b, timeout) for b in bodies)))


def _run(url: str, n: int, max_tokens: int) -> list[tuple[int, float, str | None]]:
    return [(a.status, a.seconds, a.retry_after) for a in asyncio.run(burst(url, n, max_tokens=max_tokens))]


def burst_in_process(url: str, n: int, *, max_tokens: int = 16) -> list[Answer]:
    """:func:`burst` in a fresh (spawned) process."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return [Answer(*a) for a in pool.apply(_run, (url, n, max_tokens))]
