"""``splitup gateway start``: the OpenAI-compatible API and the web console, running jobs on the market."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from splitup.cli._market_opts import add_network
from splitup.errors import SplitUpError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gateway", help="serve an OpenAI-compatible API and the web console over the market",
        description="Every request becomes a market job paid from the gateway's wallet; the console at / shows "
        "models, tasks, nodes and jobs live.",
        epilog="examples:\n  splitup gateway start --store http://127.0.0.1:8600 --keypair client.json\n"
        "  curl http://127.0.0.1:8000/v1/models\n"
        "  OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='unused').chat.completions.create(...)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="gateway_cmd", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="serve until interrupted")
    add_network(start)
    start.add_argument("--store", default=os.environ.get("SPLITUP_STORE_URL", "http://127.0.0.1:8600"),
                       help="blob store holding model manifests, plans and tokenizers [$SPLITUP_STORE_URL]")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=8000)
    start.add_argument("--db", type=Path, default=None,
                       help="SQLite file of the gateway's jobs; a restart winds up what it left "
                       "[default: .splitup/gateway-<wallet>.sqlite]")
    start.add_argument("--max-running", type=int, default=4, help="requests run at once (default 4)")
    start.add_argument("--max-queue", type=int, default=16, help="requests waiting for room (default 16)")
    start.add_argument("--queue-timeout", type=float, default=20.0,
                       help="seconds a request may wait for room before 429 (default 20; 0 refuses at once)")
    start.add_argument("--task-timeout-slots", type=int, default=3000,
                       help="slots a node has for a task once accepted (bounded by the market's config)")
    start.add_argument("--deadline-slots", type=int, default=6000, help="slots until a job's deadline")
    start.add_argument("--template-timeout", type=float, default=2.0,
                       help="seconds rendering a model's chat template may take before the request gets 400 "
                       "(default 2; whoever publishes a model writes its template)")
    start.add_argument("--log-level", default="warning")
    start.set_defaults(func=cmd_start)


def cmd_start(args: argparse.Namespace) -> int:
    import uvicorn

    from splitup.gateway.app import create_app
    from splitup.gateway.service import GatewayService
    from splitup.market.wallet import default_keypair_path
    from splitup.sdk.client import Client

    if not args.template_timeout > 0:  # NaN too
        raise SplitUpError(f"--template-timeout must be a positive number of seconds, not {args.template_timeout}")
    client = Client(args.rpc_url, Path(args.keypair or default_keypair_path()), store_url=args.store,
                    program_id=args.program_id, task_timeout_slots=args.task_timeout_slots,
                    deadline_slots=args.deadline_slots, template_timeout=args.template_timeout)
    db = args.db or Path(".splitup") / f"gateway-{str(client.payer.pubkey())[:8]}.sqlite"
    print(f"splitup gateway: http://{args.host}:{args.port}/ (console), /v1 (OpenAI API); paying from "
          f"{client.payer.pubkey()}; jobs in {db}", flush=True)
    svc = GatewayService(client, db_path=db, max_running=args.max_running, max_queue=args.max_queue,
                         queue_timeout=args.queue_timeout)
    try:
        uvicorn.run(create_app(svc), host=args.host, port=args.port, log_level=args.log_level)
    finally:
        client.close()
    return 0
