"""``splitup ledger start|status``: the embedded local Solana-compatible network."""

from __future__ import annotations

import argparse
from pathlib import Path

from splitup.cli._market_opts import add_network
from splitup.market.localnet import (
    DEFAULT_DIR,
    DEFAULT_HISTORY_SLOTS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_SLOT_S,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ledger", help="run the local Solana-compatible network",
                              description="LiteSVM with the market program deployed, Solana's JSON-RPC and "
                              "PubSub websocket APIs, state persisted to SQLite after every transaction and slot.")
    sub = p.add_subparsers(dest="ledger_cmd", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="serve JSON-RPC until interrupted")
    start.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
    start.add_argument("--host", default=DEFAULT_HOST)
    start.add_argument("--port", type=int, default=DEFAULT_PORT)
    start.add_argument("--slot-ms", type=float, default=DEFAULT_SLOT_S * 1000, help="milliseconds per slot")
    start.add_argument("--ws-port", type=int, default=None,
                       help="websocket (PubSub) port; default RPC port + 1, where web3.js and kit look")
    start.add_argument("--history-slots", type=int, default=DEFAULT_HISTORY_SLOTS,
                       help=f"slots of transactions and blocks kept for getTransaction/getBlock "
                       f"(default {DEFAULT_HISTORY_SLOTS}, ~2 h at 0.4 s a slot)")
    start.set_defaults(func=cmd_start)
    status = sub.add_parser("status", help="is the network up, at which slot, is the market deployed")
    add_network(status, keypair=False)
    status.set_defaults(func=cmd_status)


def cmd_start(args: argparse.Namespace) -> int:
    from splitup.market.localnet.run import PortInUse, serve  # FastAPI/uvicorn only when serving

    ws_port = args.ws_port if args.ws_port is not None else args.port + 1
    print(f"splitup ledger: http://{args.host}:{args.port}  ws://{args.host}:{ws_port}  state: {args.dir}  "
          "(Ctrl-C to stop)", flush=True)
    try:
        serve(args.dir, args.host, args.port, args.slot_ms / 1000, ws_port, args.history_slots)
    except (PortInUse, ValueError) as exc:
        print(f"splitup ledger: {exc}")
        return 2
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from splitup.market.rpc import RpcTransport

    t = RpcTransport(args.rpc_url, timeout=5)
    program = t.get_account(args.program_id)
    deployed = program is not None and program.executable
    print(f"{args.rpc_url}: slot {t.slot()}, market program {args.program_id} "
          f"{'deployed' if deployed else 'NOT deployed'}")
    return 0 if deployed else 1
