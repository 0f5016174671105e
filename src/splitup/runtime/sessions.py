"""Generation sessions: a task's KV cache kept between calls, bounded in count and idle time.

Steps are numbered by the client and idempotent: repeating the last step rolls the cache back to before
it and runs it again. A client that lost a reply (a later node died) can therefore resend a step to every
node of the route without knowing which of them had already run it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from splitup.errors import SplitUpError

State = dict[str, np.ndarray]


class SessionError(SplitUpError):
    """Unknown or expired session, or one used for another task."""


class SessionLimit(SessionError):
    """The node holds as many sessions as it allows."""


class StepConflict(SessionError):
    """A step number that is neither the next step nor a retry of the last one."""


@dataclass
class Session:
    id: str
    task_id: str
    last_used: float
    reserved_bytes: int = 0
    state: State = field(default_factory=dict)
    previous: State = field(default_factory=dict)
    next_step: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cache_shape(self) -> tuple[int, ...] | None:
        """The shape of the first cache tensor (None before the first step): sessions with equal ones can
        share an engine call."""
        first = next(iter(self.state.values()), None)
        return None if first is None else first.shape

    @property
    def state_bytes(self) -> int:
        return sum(v.nbytes for v in self.state.values()) + sum(v.nbytes for v in self.previous.values())

    def advance(self, step: int, compute: Callable[[State], State]) -> None:
        """Run ``compute(state) -> next state`` as step ``step`` (the next one, or the last one again)."""
        with self.lock:
            if step == self.next_step:
                base = self.state
            elif step == self.next_step - 1:
                base = self.previous
            else:
                raise StepConflict(f"session {self.id[:8]}: step {step} sent, expected {self.next_step} "
                                   f"(or {self.next_step - 1} again)")
            new = compute(base)
            self.previous, self.state, self.next_step = base, new, step + 1


class SessionStore:
    """Sessions by random id; at most ``max_sessions``, each dropped after ``idle_s`` seconds unused.

    Each session reserves the bytes its cache can grow to (``open(..., reserve_bytes=)``); with
    ``max_bytes`` the reservations together stay under that budget, so a client cannot open its way
    into exhausting the node's memory with caches that grow later.
    """

    def __init__(self, max_sessions: int = 64, idle_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, max_bytes: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, task_id: str, *, reserve_bytes: int = 0) -> Session:
        with self._lock:
            self._sweep_locked()
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimit(f"this node holds its maximum of {self.max_sessions} sessions; retry later")
            reserved = sum(s.reserved_bytes for s in self._sessions.values())
            if self.max_bytes is not None and reserved + reserve_bytes > self.max_bytes:
                raise SessionLimit(f"a new session needs {reserve_bytes} bytes of cache; {reserved} of this node's "
                                   f"{self.max_bytes} are reserved; retry later")
            sid = secrets.token_hex(16)  # unguessable: a session's cache is the client's private state
            session = Session(sid, task_id, self._clock(), reserve_bytes)
            self._sessions[sid] = session
            return session

    def get(self, session_id: str, task_id: str) -> Session:
        with self._lock:
            self._sweep_locked()
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionError(f"session {session_id[:8]} is unknown or expired")
            if session.task_id != task_id:
                raise SessionError(f"session {session_id[:8]} belongs to another task")
            session.last_used = self._clock()
            return session

    def peek(self, session_id: str) -> Session | None:
        """The session, without counting this as a use."""
        return self._sessions.get(session_id)

    def peers(self, session: Session, within_s: float = 1.0, *, same_cache: bool = True) -> int:
        """Sessions of ``session``'s task, itself included, used in the last ``within_s`` seconds (and with
        the same cache shape, with ``same_cache``): how many steps may arrive together and share one
        engine call."""
        cutoff, shape = self._clock() - within_s, session.cache_shape
        with self._lock:
            return sum(1 for s in self._sessions.values()
                       if s.task_id == session.task_id and s.last_used >= cutoff
                       and (not same_cache or s.cache_shape == shape))

    def close(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def sweep(self) -> int:
        with self._lock:
            return self._sweep_locked()

    def _sweep_locked(self) -> int:
        cutoff = self._clock() - self.idle_s
        stale = [sid for sid, s in self._sessions.items() if s.last_used < cutoff]
        for sid in stale:
            del self._sessions[sid]
        return len(stale)

    def state_bytes(self) -> int:
        with self._lock:
            return sum(s.state_bytes for s in self._sessions.values())
