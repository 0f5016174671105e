"""A chat template is data that whoever publishes a model writes, rendered by every gateway serving the model.
One that runs past its time limit, grows past its memory limit or writes past its limit of characters is a
``ChatTemplateError`` naming that limit, soon after the limit, and the next render works: its worker was
replaced. Each of these templates holds a thread for hours or takes gigabytes when rendered in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from splitup.chat.frames import frame
from splitup.chat.renderer import ChatRenderer, RenderLimits, render_chat
from splitup.models.errors import ChatTemplateError

from .test_chat_template import CHATML, CONVERSATIONS

LIMITS = RenderLimits(seconds=1.0, memory_bytes=128 << 20, max_chars=1 << 20)
NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

HOSTILE = {
    "nested-loops": (NESTED, "limit of 1 s"),
    "nested-output": ("{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
                      "{% endfor %}", "limit of 1048576 characters"),
    "repetition": ("{{ 'x' * 10**9 }}", "limit of 128 MiB"),
    "doubling": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                 "{{ ns.s }}", "limit of 128 MiB"),
    "macro-recursion": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
                        "limit of 1 s"),
}


def _benign_still_renders() -> None:
    chat = pytest.importorskip("transformers.utils.chat_template_utils")
    messages = CONVERSATIONS[1]
    expected = chat._compile_jinja_template(CHATML).render(messages=messages, add_generation_prompt=True)
    assert render_chat(CHATML, messages, limits=LIMITS) == expected


@pytest.mark.parametrize("template, limit", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_template_fails_on_its_limit_and_the_next_render_works(template, limit):
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match=limit):
        render_chat(template, [{"role": "user", "content": "x"}], limits=LIMITS)
    assert time.monotonic() - t0 < LIMITS.seconds + 5  # the limit, a worker's kill and a loaded machine
    _benign_still_renders()


def test_an_error_message_a_template_makes_is_cut_short():
    with pytest.raises(ChatTemplateError) as refused:
        render_chat("{{ raise_exception('no' * 10**6) }}", [], limits=LIMITS)
    assert "refuses these messages: nonono" in str(refused.value) and len(str(refused.value)) < 1000


def _workers() -> set[int]:
    """This process's render workers (the shared renderers' too)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        if ppid == os.getpid() and b"splitup.chat.worker" in cmdline:
            found.add(int(stat.parent.name))
    return found


def test_a_worker_killed_mid_render_is_an_error_and_replaced():
    before = _workers()
    renderer = ChatRenderer(RenderLimits(seconds=60), workers=1)
    try:
        assert renderer.render("warm", {}) == "warm"
        (pid,) = _workers() - before
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        with pytest.raises(ChatTemplateError, match="stopped its render worker"):
            renderer.render(NESTED, {})
        assert renderer.render("{{ x }}", {"x": "again"}) == "again"
        assert len(_workers() - before - {pid}) == 1
    finally:
        renderer.close()


def test_a_worker_that_ended_while_idle_is_replaced_before_a_render():
    before = _workers()
    renderer = ChatRenderer(RenderLimits(), workers=1)
    try:
        assert renderer.render("one", {}) == "one"
        (pid,) = _workers() - before
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert renderer.render("two", {}) == "two"
    finally:
        renderer.close()


def test_a_worker_nobody_waits_for_ends_on_its_cpu_limit():
    """Should the gateway die mid-render, its worker does not spin on: a second past the time limit of CPU."""
    worker = subprocess.Popen([sys.executable, "-m", "splitup.chat.worker", str(64 << 20), "0.5"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert worker.stdin is not None
        worker.stdin.write(frame({"template": NESTED, "variables": {}, "max_chars": 100}))
        worker.stdin.flush()
        assert worker.wait(timeout=30) == -signal.SIGXCPU
    finally:
        worker.kill()
        worker.wait()
