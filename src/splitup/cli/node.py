"""``splitup node start|status``: run a node daemon, or ask one what it holds and can do."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import httpx

from splitup.cli import node_ops
from splitup.cli._market_opts import add_network, amount_of
from splitup.errors import SplitUpError
from splitup.units import BadByteSize, parse_bytes


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except BadByteSize as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of minutes: {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("node", help="run a node daemon or query one",
                              description="A node holds pipeline tasks, runs hops and passes activations on.")
    sub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    s = sub.add_parser("start", help="start a node daemon (FastAPI/uvicorn) in the foreground")
    s.add_argument("--config", type=Path, default=None, metavar="TOML",
                   help="settings file (keys: these options' long names); flags given here override it")
    s.add_argument("--pid-file", type=Path, default=None, help="write the process id here (for `splitup node stop`)")
    s.add_argument("--drain-timeout", type=float, default=60.0, metavar="S",
                   help="on SIGTERM: seconds to finish live sessions before committing or releasing what is left")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8700)
    s.add_argument("--tasks", default="", help="comma-separated task ids to fetch from --store and preload")
    s.add_argument("--bundle", action="append", default=[], type=Path, metavar="DIR",
                   help="a local task bundle directory to load (repeatable)")
    s.add_argument("--store", default=None, metavar="URL", help="blob store to fetch tasks from")
    s.add_argument("--cache", type=Path, default=Path(".splitup/node-cache"), help="where fetched bundles are kept")
    s.add_argument("--engine", choices=("onnxruntime", "tinygrad"), default="onnxruntime")
    s.add_argument("--threads", type=int, default=None, help="compute threads per task (default: the engine's)")
    s.add_argument("--node-id", default=None)
    s.add_argument("--max-body", type=_byte_size, default=256 << 20, metavar="N", help="request body limit")
    s.add_argument("--max-sessions", type=int, default=64)
    s.add_argument("--max-session-bytes", type=_byte_size, default=None, metavar="N",
                   help="budget for session KV caches (default: half the memory available at start)")
    s.add_argument("--max-concurrent", type=int, default=16, help="pipeline hops served at once; more get 429")
    s.add_argument("--frame-port", type=int, default=0, metavar="PORT",
                   help="TCP port for hops as binary frames (default 0: any free one, shown by /health)")
    s.add_argument("--no-frames", action="store_true", help="serve hops over HTTP only")
    s.add_argument("--park-above", type=_byte_size, default=1 << 20, metavar="N",
                   help="final results larger than this wait here for the client instead of travelling back")
    s.add_argument("--session-idle", type=float, default=300.0, metavar="S", help="idle seconds before a session is dropped")
    s.add_argument("--heartbeat", type=float, default=10.0, metavar="S", help="heartbeat interval")
    s.add_argument("--log-level", default="warning")
    m = s.add_argument_group("market node (--market): the daemon plus its operator's market agent")
    m.add_argument("--market", action="store_true",
                   help="register and stake on chain, specialise in --tasks, accept, commit and validate jobs")
    add_network(m)
    m.add_argument("--stake", type=amount_of, default=None, metavar="AMOUNT",
                   help="stake when registering: 2SOL, 0.5sol or lamports (a registered node keeps its stake)")
    m.add_argument("--vram", type=_byte_size, default=None, metavar="N", help="(V)RAM declared on chain, e.g. 8GiB")
    m.add_argument("--primary", default=None, metavar="IDS",
                   help="comma-separated task ids taken at once (default: all --tasks; others only as a stand-in)")
    m.add_argument("--poll", type=float, default=0.25, metavar="S", help="seconds between looks at the chain")
    m.add_argument("--chain-heartbeat", type=_minutes, default=None, metavar="MIN",
                   help="minutes between on-chain heartbeats (default 5; sooner if the market's window needs it)")
    s.set_defaults(func=start, start_parser=s)
    q = sub.add_parser("status", help="print a node's capability report")
    q.add_argument("--url", default="http://127.0.0.1:8700")
    q.set_defaults(func=status)
    node_ops.register(sub)


def _ids(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _check_market_args(args: argparse.Namespace) -> None:
    """What --market needs, and market options given without it (silently ignoring them would surprise)."""
    if not args.market:
        given = [o for o, v in (("--stake", args.stake), ("--vram", args.vram), ("--primary", args.primary),
                                ("--keypair", args.keypair), ("--chain-heartbeat", args.chain_heartbeat))
                 if v is not None]
        if given:
            raise SplitUpError(f"{', '.join(given)} only apply with --market")
        return
    missing = [o for o, v in (("--store", args.store), ("--stake", args.stake), ("--vram", args.vram)) if v is None]
    if missing:
        raise SplitUpError(f"--market needs {', '.join(missing)}")
    if not _ids(args.tasks):
        raise SplitUpError("--market needs --tasks: the task ids this node preloads and specialises in")
    if args.bundle:
        raise SplitUpError("--bundle does not apply with --market: a market node fetches its tasks by id from --store")


def _start_argv(argv: list[str]) -> list[str]:
    """The arguments after ``node start``."""
    i = argv.index("node")
    return argv[argv.index("start", i) + 1:]


def start(args: argparse.Namespace) -> int:
    from splitup.node.node import NodeConfig
    from splitup.node.serve import build_node, serve

    if args.config is not None:
        from splitup.node.config_file import apply_config

        args = apply_config(args, args.start_parser, _start_argv(args.argv), args.config)
    if args.pid_file is not None:
        args.pid_file.parent.mkdir(parents=True, exist_ok=True)
        args.pid_file.write_text(f"{os.getpid()}\n")
    _check_market_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    extra = {"node_id": args.node_id} if args.node_id else {}
    config = NodeConfig(engine=args.engine, threads=args.threads, cache_dir=args.cache, store_url=args.store,
                        max_body_bytes=args.max_body, max_sessions=args.max_sessions,
                        max_session_bytes=args.max_session_bytes, max_concurrent=args.max_concurrent,
                        frame_port=None if args.no_frames else args.frame_port,
                        park_above_bytes=args.park_above,
                        session_idle_s=args.session_idle, heartbeat_s=args.heartbeat, **extra)
    task_ids = _ids(args.tasks)
    if args.market:
        from splitup.market.wallet import default_keypair_path, load_keypair
        from splitup.node.heartbeat import DEFAULT_CHAIN_HEARTBEAT_MIN
        from splitup.node.market import serve_market_node

        owner = load_keypair(args.keypair or default_keypair_path())
        serve_market_node(config, owner, rpc_url=args.rpc_url, program_id=args.program_id, store_url=args.store,
                          host=args.host, port=args.port, task_ids=task_ids, stake=args.stake, vram=args.vram,
                          primary=None if args.primary is None else _ids(args.primary), poll_s=args.poll,
                          log_level=args.log_level, drain_timeout_s=args.drain_timeout,
                          chain_heartbeat_s=60 * (args.chain_heartbeat or DEFAULT_CHAIN_HEARTBEAT_MIN))
        return 0
    node = build_node(config, task_ids=task_ids, bundles=args.bundle)
    serve(node, args.host, args.port, log_level=args.log_level)
    return 0


def status(args: argparse.Namespace) -> int:
    try:
        r = httpx.get(args.url.rstrip("/") + "/capabilities", timeout=10)
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise SplitUpError(f"node at {args.url} did not answer: {exc}") from None
    print(json.dumps(r.json(), indent=1))
    return 0
