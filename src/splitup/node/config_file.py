"""A node's settings in one TOML file (``splitup node start --config node.toml``), so that a node runs
under systemd or in a container from a single file; flags given on the command line override it.

Keys are the long option names of ``splitup node start`` (``max-sessions`` or ``max_sessions``);
lists may be TOML arrays (``tasks = ["ab12...", "cd34..."]``). Unknown keys are refused by name, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from splitup.errors import SplitUpError

MAX_CONFIG_BYTES = 1 << 20


class ConfigFileError(SplitUpError):
    """The node's config file cannot be read or names something ``splitup node start`` does not take."""


def _explicit(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations the command line set itself (not from defaults)."""
    saved = {a.dest: a.default for a in parser._actions}
    for a in parser._actions:
        a.default = argparse.SUPPRESS
    try:
        ns, _ = parser.parse_known_args(list(argv), argparse.Namespace())
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]
    return set(vars(ns))


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str],
                 path: Path) -> argparse.Namespace:
    """``args`` with every setting of the TOML file at ``path`` that the command line did not give."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(f"cannot read the node config {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from None
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "func")}
    given = _explicit(parser, argv)
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise ConfigFileError(f"{path}: unknown setting {key!r}; known: {known}")
        if dest in given:
            continue
        setattr(args, dest, _convert(action, value, key, path))
    return args


def _convert(action: argparse.Action, value: Any, key: str, path: Path) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{path}: {key} must be true or false")
        return value
    if isinstance(value, list):
        if action.dest in ("tasks", "primary"):
            return ",".join(str(v) for v in value)
        if isinstance(action, argparse._AppendAction):
            return [action.type(str(v)) if action.type else v for v in value]
        raise ConfigFileError(f"{path}: {key} takes one value, not a list")
    if isinstance(value, dict):
        raise ConfigFileError(f"{path}: {key} takes a value, not a table")
    try:
        return action.type(str(value)) if action.type else (str(value) if not isinstance(value, bool) else value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ConfigFileError(f"{path}: {key} = {value!r}: {exc}") from None
