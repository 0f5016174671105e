"""A render worker: a process that renders the chat templates its parent (:mod:`splitup.chat.renderer`)
sends, one at a time, until its input closes.

It caps its own address space once started (``RLIMIT_AS``: a template that builds a huge string gets a
``MemoryError`` instead of the machine's memory), and before each render its CPU time a second past the
render's time limit (``RLIMIT_CPU``): the parent kills a worker whose render runs past the limit, and
should the parent die first, the worker does not spin on alone.

Requests and answers are frames (:mod:`splitup.chat.frames`).

    python -m splitup.chat.worker MEMORY_BYTES SECONDS
"""

from __future__ import annotations

import math
import os
import resource
import sys
from typing import IO, Any

from splitup.chat.environment import OutputTooLarge, TemplateRefusal, chat_environment, render
from splitup.chat.frames import HEADER_BYTES, body_length, frame, parse

# An error message comes back to the client that sent the messages: a template must not make it huge.
MAX_MESSAGE_CHARS = 500


def write_frame(out: IO[bytes], obj: Any) -> None:
    out.write(frame(obj))
    out.flush()


def read_frame(inp: IO[bytes]) -> Any:
    """The next frame's object, or None once the parent has closed the pipe."""
    header = inp.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return None
    return parse(inp.read(body_length(header)))


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """``{"text": ...}``, or ``{"error": kind}`` (refused, failed, output, memory) with a ``message``."""
    try:
        return {"text": render(request["template"], request["variables"], request["max_chars"])}
    except TemplateRefusal as exc:
        return {"error": "refused", "message": _short(str(exc))}
    except OutputTooLarge:
        return {"error": "output"}
    except MemoryError:
        return {"error": "memory"}
    except Exception as exc:  # the template is data: whatever stops it is its failure, named
        return {"error": "failed", "message": _short(f"{type(exc).__name__}: {exc}")}


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def _limit_memory(extra: int) -> None:
    """The address space as it is now, plus ``extra``."""
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, _within_hard(resource.RLIMIT_AS, now + extra))


def _limit_cpu(seconds: float) -> None:
    """SIGXCPU (which ends the process) once this render has used a second more CPU than its time limit."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, _within_hard(resource.RLIMIT_CPU, soft))


def _within_hard(kind: int, soft: int) -> tuple[int, int]:
    """``soft`` as the new soft limit, unless the hard one (an operator's ``ulimit``) is lower already."""
    _, hard = resource.getrlimit(kind)
    return (soft if hard == resource.RLIM_INFINITY else min(soft, hard)), hard


def main(argv: list[str]) -> None:
    memory, seconds = int(argv[0]), float(argv[1])
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else writes to stdout (a warning, a library) must not corrupt the frames
    inp = sys.stdin.buffer
    chat_environment()  # built before the cap, which is on what renders add
    _limit_memory(memory)
    write_frame(out, {"ready": True})
    while (request := read_frame(inp)) is not None:
        _limit_cpu(seconds)
        write_frame(out, answer(request))


if __name__ == "__main__":
    main(sys.argv[1:])
