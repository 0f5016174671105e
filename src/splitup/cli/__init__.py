"""The ``splitup`` command line: one tool, one sub-command module per job.

Each module in ``COMMANDS`` exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Errors SplitUp raises on purpose and failed file operations become one line on
stderr and exit code 2; anything else is a SplitUp bug and says so in one line, exit code 3 (set
``SPLITUP_DEBUG=1`` for the traceback). No command prints a traceback by default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from splitup import __version__
from splitup.errors import SplitUpError

# The sub-command modules by command, in the order --help lists them.
COMMANDS: dict[str, str] = {
    # a model: split it, check it, the real ones
    "import": "splitup.cli.hf_import",
    "plan": "splitup.cli.plan",
    "validate": "splitup.cli.validate",
    "models": "splitup.cli.models",
    # running it: nodes and their blob store
    "node": "splitup.cli.node",
    "store": "splitup.cli.store",
    # paying for it: the chain, wallets, the market program
    "ledger": "splitup.cli.ledger",
    "wallet": "splitup.cli.wallet",
    "market": "splitup.cli.market",
    # using it, the economics behind it, and all of it at once
    "gateway": "splitup.cli.gateway",
    "econ": "splitup.cli.econ",
    "demo": "splitup.cli.demo",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the arguments, only the named command's module is imported (they pull in onnx,
    solana-py, FastAPI: a second or more of start-up that every node, daemon and CLI call would pay)."""
    parser = argparse.ArgumentParser(
        prog="splitup",
        description="Run models too large for one GPU across many, paid for and verified on Solana.",
    )
    parser.add_argument("--version", action="version", version=f"splitup {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = next((a for a in argv or () if not a.startswith("-")), None)
    for name, path in COMMANDS.items():
        if first not in COMMANDS or name == first:
            importlib.import_module(path).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    typed = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(typed)
    args = parser.parse_args(typed)
    args.argv = typed  # what was typed: a config file fills the rest
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except SplitUpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("SPLITUP_DEBUG"):
            raise
        print(f"error: internal error in splitup {args.command}: {type(exc).__name__}: {exc} (a SplitUp bug: "
              "please report it; SPLITUP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
