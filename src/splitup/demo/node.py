"""The demo's market node process: ``splitup.node.market`` with plain lamports and bytes, plus ``--cheat``.

    python -m splitup.demo.node --keypair node.json --rpc-url URL --store URL --port 8701 \
        --tasks ID,ID --stake LAMPORTS --vram BYTES

Operators run the same node as ``splitup node start --market``; this entry point stays for the demo and
tests because it can also be a dishonest node (``--cheat``), which the real command line does not offer.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from solders.pubkey import Pubkey

from splitup.errors import SplitUpError
from splitup.market.localnet import DEFAULT_RPC_URL
from splitup.market.transport import DEFAULT_PROGRAM_ID
from splitup.market.wallet import as_keypair
from splitup.node.market import serve_market_node
from splitup.node.node import NodeConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m splitup.demo.node", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keypair", type=Path, required=True)
    ap.add_argument("--rpc-url", default=DEFAULT_RPC_URL)
    ap.add_argument("--program-id", type=Pubkey.from_string, default=DEFAULT_PROGRAM_ID)
    ap.add_argument("--store", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tasks", default="", help="comma-separated task ids to preload and specialise in")
    ap.add_argument("--primary", default=None,
                    help="comma-separated task ids this node takes at once (others: only as a stand-in)")
    ap.add_argument("--stake", type=int, required=True, help="lamports to stake when registering")
    ap.add_argument("--vram", type=int, required=True, help="bytes of (V)RAM declared on chain")
    ap.add_argument("--node-id", default=None)
    ap.add_argument("--cache", type=Path, default=Path(".splitup/node-cache"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between looks at the chain")
    ap.add_argument("--cheat", choices=("perturb", "zeros"), default=None,
                    help="be a dishonest node (demo and tests): forward noisy or zero outputs")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(message)s")

    cheat = None
    if a.cheat is not None:
        from splitup.verify import cheats

        cheat = cheats.perturb(0.05) if a.cheat == "perturb" else cheats.zeros()
    extra = {"node_id": a.node_id} if a.node_id else {}
    config = NodeConfig(engine=a.engine, threads=a.threads, cache_dir=a.cache, store_url=a.store,
                        heartbeat_s=2.0, **extra)
    try:
        serve_market_node(config, as_keypair(a.keypair), rpc_url=a.rpc_url, program_id=a.program_id,
                          store_url=a.store, host=a.host, port=a.port, task_ids=[t for t in a.tasks.split(",") if t],
                          stake=a.stake, vram=a.vram,
                          primary=None if a.primary is None else [t for t in a.primary.split(",") if t],
                          poll_s=a.poll, cheat=cheat)
    except SplitUpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
