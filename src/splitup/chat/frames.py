"""The frames a render worker and its parent exchange: a 4-byte big-endian length, then JSON. ASCII JSON, so
that text with lone surrogates (valid in JSON, not in UTF-8) gets across."""

from __future__ import annotations

import json
from typing import Any

HEADER_BYTES = 4


def frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode("ascii")
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def body_length(header: bytes) -> int:
    return int.from_bytes(header, "big")


def parse(body: bytes) -> Any:
    return json.loads(body)
