"""A hop that could not go on, as both transports report it: an HTTP status, the kind a client acts on
(re-route, wait, give up) and the route position that failed. ``splitup.node.app`` answers it as JSON,
``splitup.node.stream`` as an error frame."""

from __future__ import annotations

import logging

from splitup.node.node import Draining, NotHere
from splitup.node.wire import WireError
from splitup.runtime import (
    ContextLimit,
    EngineError,
    InterfaceError,
    SessionError,
    SessionLimit,
    StepConflict,
)

log = logging.getLogger("splitup.node")


class HopFailed(Exception):
    def __init__(self, status: int, kind: str, message: str, hop: int | None) -> None:
        super().__init__(message)
        self.status, self.kind, self.hop = status, kind, hop

    @classmethod
    def timed_out(cls, hop: int, url: str, seconds: float) -> HopFailed:
        return cls(504, "timeout", f"hop {hop} at {url} timed out after {seconds} s", hop)

    @classmethod
    def unreachable(cls, hop: int, url: str, why: object) -> HopFailed:
        return cls(502, "unreachable", f"hop {hop} at {url} unreachable: {why}", hop)


def classify(exc: Exception, hop: int | None) -> HopFailed:
    """The node's typed errors as the answers a client acts on; anything else is an internal error, logged."""
    for kind, status, types in (
        ("draining", 503, (Draining,)),
        ("not_here", 404, (NotHere,)),
        ("busy", 429, (SessionLimit,)),
        ("step_conflict", 409, (StepConflict,)),
        ("session", 404, (SessionError,)),
        ("bad_request", 400, (WireError,)),
        ("context_limit", 400, (ContextLimit,)),
        ("bad_request", 422, (InterfaceError,)),
        ("engine", 422, (EngineError,)),
    ):
        if isinstance(exc, types):
            return HopFailed(status, kind, str(exc), hop)
    log.exception("unexpected error in a hop")
    return HopFailed(500, "internal", f"internal error: {type(exc).__name__}", hop)


def failed(exc: Exception, hop: int | None) -> HopFailed:
    """``exc`` as a failure of ``hop`` (one raised without a hop is given it)."""
    if isinstance(exc, HopFailed):
        if exc.hop is None:
            exc.hop = hop
        return exc
    return classify(exc, hop)
