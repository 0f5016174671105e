"""HTTP exchanges with a deadline over the whole of them, through a blocking httpx client.

httpx's ``timeout`` bounds each connect, write and read on its own, so a peer that trickles its answer (a
byte a second) holds an exchange for as long as it likes. Nodes are strangers: a hop, a health probe or a
parked result's fetch must end at its timeout. (The async side bounds its exchanges with ``asyncio.timeout``;
a blocking call has no such wall clock, so the body is read as it comes and the deadline checked between
its parts.)
"""

from __future__ import annotations

import time
from typing import Any

import httpx

# A peer's answers about itself or a job (health, sessions, announcements): small whatever the model.
CONTROL_BYTES = 1 << 20


class AnswerTooLarge(httpx.HTTPError):
    """A peer's answer longer than the caller takes: read no further (a stranger could send without end)."""


def bounded(http: httpx.Client, method: str, url: str, timeout: float, *, max_bytes: int = 1 << 30,
            **kwargs: Any) -> httpx.Response:
    """``http.request(method, url, **kwargs)`` within ``timeout`` seconds in all; past them, ``httpx.ReadTimeout``
    as for a read that timed out, and an answer past ``max_bytes`` of body is ``AnswerTooLarge``. Each read
    is still bounded by ``timeout`` (a peer that says nothing ends as before); the deadline is checked as
    each part of the body arrives, so a headers part sent a byte at a time is bounded per read only, up to
    httpcore's 100 KiB of headers."""
    deadline = time.monotonic() + timeout
    with http.stream(method, url, timeout=timeout, **kwargs) as r:
        body = bytearray()
        for part in r.iter_raw():
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(f"no whole answer within {timeout} s", request=r.request)
            body += part
            if len(body) > max_bytes:
                raise AnswerTooLarge(f"{url} answered with more than {max_bytes} bytes")
    # the raw body, as read: the new response decodes it as ``r`` would have (its headers say how)
    return httpx.Response(r.status_code, headers=r.headers, content=bytes(body), request=r.request)
