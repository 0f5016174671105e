"""Build the program: ``python -m splitup.market.toolchain [--check] [--cc clang-19]``.

Without ``--check`` it writes ``program/layouts.h`` and ``src/splitup/market/splitup_market.so``;
with it, it only reports whether both are up to date (exit 1 if not).
"""

from __future__ import annotations

import argparse
import sys

from splitup.market.toolchain.program import DEFAULT_CC, PROGRAM_SO, BuildError, build_program, check_program


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m splitup.market.toolchain", description=__doc__)
    ap.add_argument("--check", action="store_true", help="verify the committed header and .so are reproduced")
    ap.add_argument("--cc", default=DEFAULT_CC)
    args = ap.parse_args(argv)
    try:
        if args.check:
            problems = check_program(cc=args.cc)
            for p in problems:
                print(p, file=sys.stderr)
            return 1 if problems else 0
        so = build_program(cc=args.cc, write=True)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {PROGRAM_SO} ({len(so)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
