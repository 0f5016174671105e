"""``python -m splitup.market.localnet [--dir D] [--host H] [--port P] [--slot-ms MS]``"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitup.market.localnet import DEFAULT_DIR, DEFAULT_PORT, DEFAULT_SLOT_S
from splitup.market.localnet.run import serve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m splitup.market.localnet")
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--slot-ms", type=float, default=DEFAULT_SLOT_S * 1000)
    a = ap.parse_args(argv)
    serve(a.dir, a.host, a.port, a.slot_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
