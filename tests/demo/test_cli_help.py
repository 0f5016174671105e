"""``splitup --help`` is one tool: every command and every action under it has a help line and a
working ``--help``, and the commands the README's CLI reference names are all there."""

from __future__ import annotations

import argparse

import pytest

from splitup.cli import build_parser

README_COMMANDS = {"import", "plan", "validate", "models", "node", "store", "ledger", "wallet", "market", "gateway", "econ",
                   "demo"}


def _subparsers(p: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    out = {}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out[name] = (sub, helps.get(name))
    return out


def _walk(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for name, (sub, help_line) in _subparsers(p).items():
        yield (*path, name), sub, help_line
        yield from _walk(sub, (*path, name))


def test_every_command_is_listed_with_a_help_line() -> None:
    assert README_COMMANDS <= set(_subparsers(build_parser()))
    for path, _, help_line in _walk(build_parser()):
        assert help_line, f"splitup {' '.join(path)} has no help line in its parent's --help"


@pytest.mark.parametrize("path", [p for p, _, _ in _walk(build_parser())], ids=" ".join)
def test_every_command_and_action_has_help(path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: splitup " + " ".join(path))
