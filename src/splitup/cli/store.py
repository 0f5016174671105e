"""``splitup store serve|put|get|publish``: the content-addressed blob store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("store", help="content-addressed blob store (weights, task bundles)",
                              description="A local directory of sha256-named blobs, servable over HTTP.")
    sub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    s = sub.add_parser("serve", help="serve a store directory over HTTP (range requests supported)")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8600)
    s.add_argument("--writable", action="store_true", help="accept verified PUT uploads: blobs, and records signed by their key")
    s.add_argument("--log-level", default="warning")
    s.set_defaults(func=serve)
    u = sub.add_parser("put", help="add files to a local store; prints their sha256")
    u.add_argument("--dir", type=Path, required=True)
    u.add_argument("files", nargs="+", type=Path)
    u.set_defaults(func=put)
    g = sub.add_parser("get", help="download a blob (resumable, verified)")
    g.add_argument("url", help="store URL, e.g. http://127.0.0.1:8600")
    g.add_argument("sha256")
    g.add_argument("-o", "--output", type=Path, required=True)
    g.set_defaults(func=get)
    b = sub.add_parser("publish", help="put a plan's task bundles and plan.json into a local store")
    b.add_argument("plan", type=Path, help="plan directory (plan.json + tasks/)")
    b.add_argument("--dir", type=Path, required=True)
    b.set_defaults(func=publish)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from splitup.storage import BlobStore
    from splitup.storage.server import create_app

    uvicorn.run(create_app(BlobStore(args.dir), writable=args.writable), host=args.host, port=args.port,
                log_level=args.log_level)
    return 0


def put(args: argparse.Namespace) -> int:
    from splitup.storage import BlobStore

    store = BlobStore(args.dir)
    for f in args.files:
        print(f"{store.put_file(f)}  {f}")
    return 0


def get(args: argparse.Namespace) -> int:
    from splitup.storage import BlobClient

    with BlobClient(args.url) as client:
        client.fetch(args.sha256, args.output)
    print(args.output)
    return 0


def publish(args: argparse.Namespace) -> int:
    from splitup.storage import BlobStore, publish_plan

    published = publish_plan(args.plan, BlobStore(args.dir))
    print(json.dumps({"plan": published.plan_sha256, "tasks": published.task_ids}, indent=1))
    return 0
