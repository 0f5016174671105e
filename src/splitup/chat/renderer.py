"""Chat templates rendered in worker processes, each render bounded in time, memory and output.

A template is data that whoever published the model wrote, and every gateway serving the model renders it
for each chat request. Jinja's sandbox keeps a template from reaching the interpreter, not from spending
it: nested loops, a string doubled in a loop or macros that recurse can hold a thread for hours or fill
the memory, and a thread cannot be stopped. A process can: a render past its time limit kills its worker
(the next render starts a fresh one), a worker caps its own address space, and the text is cut off past
its limit of characters (:mod:`splitup.chat.worker`). Workers stay up between renders and compile each
template once, so a render costs a round trip over a pipe.
"""

from __future__ import annotations

import atexit
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitup.chat.frames import HEADER_BYTES, body_length, frame, parse
from splitup.models.errors import ChatTemplateError, ModelError

# A worker imports jinja2 and builds its environment before it is ready: slow on a loaded machine, and not
# the template's doing, so not counted in its time limit.
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RenderLimits:
    """What one render may take: wall-clock seconds, memory beyond the worker's own, characters of text."""

    seconds: float = 2.0
    memory_bytes: int = 256 << 20
    max_chars: int = 4 << 20


_shared: dict[RenderLimits, ChatRenderer] = {}
_shared_lock = threading.Lock()


def render_chat(template: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True,
                special_tokens: Mapping[str, str] | None = None, limits: RenderLimits = RenderLimits()) -> str:
    """A model's Jinja chat template rendered as ``transformers`` renders it: the messages, whether to end
    with the assistant's prompt, and the tokenizer's special tokens by name (``{{ bos_token }}``, see
    :data:`splitup.chat.SPECIAL_TOKENS`). Whatever stops the rendering, a limit of ``limits`` included,
    is a ``ChatTemplateError`` naming it."""
    variables = {**(special_tokens or {}), "messages": [dict(m) for m in messages], "add_generation_prompt": add_generation_prompt}
    return shared_renderer(limits).render(template, variables)


def shared_renderer(limits: RenderLimits) -> ChatRenderer:
    """The process's renderer for ``limits``: its workers serve every caller with those limits."""
    with _shared_lock:
        if limits not in _shared:
            _shared[limits] = ChatRenderer(limits)
            atexit.register(_shared[limits].close)
        return _shared[limits]


class ChatRenderer:
    """Up to ``workers`` renders at once, each in a worker process of its own; more wait for one."""

    def __init__(self, limits: RenderLimits = RenderLimits(), workers: int = 2) -> None:
        self.limits = limits
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def render(self, template: str, variables: Mapping[str, Any]) -> str:
        request = frame({"template": template, "variables": variables, "max_chars": self.limits.max_chars})
        with self._slots:
            worker = self._take()
            try:
                reply = worker.ask(request, self.limits.seconds)
            except BaseException:
                worker.kill()
                raise
            if reply.get("error") in ("time", "died", "memory"):
                worker.kill()  # stopped mid-render, or left holding what a render grew: replaced
            else:
                with self._lock:
                    self._idle.append(worker)
        if "text" in reply:
            return str(reply["text"])
        raise ChatTemplateError(self._explain(reply))

    def close(self) -> None:
        """Stop the idle workers (a busy one is stopped when its render ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                w = self._idle.pop()
                if w.alive():
                    return w
                w.kill()  # ended while idle (killed from outside): not the next template's fault
        return _Worker.start(self.limits)

    def _explain(self, reply: Mapping[str, Any]) -> str:
        lim, error = self.limits, reply.get("error")
        if error == "refused":
            return f"the model's chat template refuses these messages: {reply['message']}"
        if error == "time":
            return f"the model's chat template did not render within the limit of {lim.seconds:g} s"
        if error == "memory":
            return f"the model's chat template needs more than the limit of {lim.memory_bytes >> 20} MiB to render"
        if error == "output":
            return f"the model's chat template renders more than the limit of {lim.max_chars} characters"
        if error == "died":
            return f"the model's chat template stopped its render worker (exit status {reply['status']})"
        return f"the model's chat template cannot render these messages: {reply['message']}"


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.inp, self.out = proc.stdin.fileno(), proc.stdout.fileno()
        self.readable = select.poll()  # not select(): a busy gateway's descriptors pass FD_SETSIZE
        self.readable.register(self.out, select.POLLIN)

    @staticmethod
    def start(limits: RenderLimits) -> _Worker:
        # The worker runs this package from where the parent has it, whatever the parent's sys.path was.
        src = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen([sys.executable, "-m", "splitup.chat.worker", str(limits.memory_bytes),
                                 str(limits.seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                env=env)
        w = _Worker(proc)
        if w.read(time.monotonic() + START_TIMEOUT_S) != {"ready": True}:
            w.kill()
            raise ModelError(f"the chat template render worker did not start within {START_TIMEOUT_S:g} s "
                             f"(exit status {proc.poll()})")
        return w

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, request: bytes, seconds: float) -> dict[str, Any]:
        """The worker's answer, or ``{"error": "time"}`` past ``seconds``, ``{"error": "died"}`` if it ended."""
        deadline = time.monotonic() + seconds
        try:
            view = memoryview(request)
            while view:
                view = view[os.write(self.inp, view):]
            reply = self.read(deadline)
        except OSError:  # the pipe broke: the worker is gone
            reply = None
        if reply is None and time.monotonic() >= deadline:
            return {"error": "time"}
        if reply is None:
            self.kill()  # ended already: its own exit status stays
            return {"error": "died", "status": self.proc.returncode}
        return dict(reply)

    def read(self, deadline: float) -> Any:
        """The next frame's object; None at the deadline or when the worker's output ends."""
        header = self._read_exactly(HEADER_BYTES, deadline)
        body = None if header is None else self._read_exactly(body_length(header), deadline)
        return None if body is None else parse(body)

    def _read_exactly(self, n: int, deadline: float) -> bytes | None:
        chunks: list[bytes] = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0 or not self.readable.poll(left * 1000):
                return None
            chunk = os.read(self.out, min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
