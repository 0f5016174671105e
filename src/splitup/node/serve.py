"""Run a node process: load its tasks, then serve until stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from splitup.node.app import create_app
from splitup.node.node import Node, NodeConfig

log = logging.getLogger("splitup.node")


def _log_heartbeat(status: dict[str, Any]) -> None:
    log.debug("heartbeat %s", status)


def build_node(config: NodeConfig, *, task_ids: Sequence[str] = (), bundles: Sequence[Path] = ()) -> Node:
    """A node with its specialised tasks already loaded: from local bundle directories and from the store."""
    node = Node(config)
    for directory in bundles:
        node.load_bundle(Path(directory))
    for task_id in task_ids:
        node.preload(task_id)
    return node


def serve(node: Node, host: str, port: int, *, heartbeat: Callable[[dict[str, Any]], None] | None = None,
          log_level: str = "warning") -> None:
    app = create_app(node, heartbeat=heartbeat or _log_heartbeat, frames_host=host)
    # No access log: at one request per token it would dominate the node's own work.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_keep_alive=30)
