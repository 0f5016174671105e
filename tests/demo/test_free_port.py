"""``free_port`` never hands out a port another process on this machine was given lately: test workers and
two demos start daemons side by side, and the kernel may offer the same free port to each before either
child binds it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from splitup.demo import procs


def _free_pair() -> int:
    """A port whose successor is free too, from the real kernel."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def test_a_port_another_process_was_given_is_not_handed_out_again(tmp_path, monkeypatch):
    book = tmp_path / "ports"
    monkeypatch.setattr(procs, "_RECENT", book)
    monkeypatch.setattr(procs, "_HANDED_OUT", set())
    # another process takes a port from the same book
    code = f"from splitup.demo import procs; from pathlib import Path; procs._RECENT = Path({str(book)!r}); " \
           "print(procs.free_port())"
    theirs = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    mine = _free_pair()
    offers = iter([theirs, theirs - 1, mine])
    monkeypatch.setattr(procs, "_offered", lambda: next(offers))
    assert procs.free_port() == mine  # the kernel offered theirs, and the one below it (its successor is theirs)
    lines = dict(line.split() for line in book.read_text().splitlines())
    assert {str(theirs), str(theirs + 1), str(mine), str(mine + 1)} <= lines.keys()


def test_ports_handed_out_long_ago_are_forgotten(tmp_path, monkeypatch):
    book = tmp_path / "ports"
    port = _free_pair()
    book.write_text(f"{port} {time.time() - procs._RECENT_S - 1}\n{port + 1} {time.time() - procs._RECENT_S - 1}\n"
                    "garbage line\n")
    monkeypatch.setattr(procs, "_RECENT", book)
    monkeypatch.setattr(procs, "_HANDED_OUT", set())
    offers = iter([port])  # offered once: were it still booked, the next offer would fail the test
    monkeypatch.setattr(procs, "_offered", lambda: next(offers))
    assert procs.free_port() == port
    assert sorted(book.read_text().split()[::2]) == sorted([str(port), str(port + 1)])
