"""``GET /metrics``: the node in the Prometheus text format, through the official client library.

Each node has its own registry (several nodes may share a process in tests and demos). Gauges are read
from the node when scraped; hop latencies go into a histogram as hops finish. A market node adds its
chain-side figures (stake, collateral, reputation, agent counters) through ``market``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splitup.node.node import Node

# Buckets from a fast GPU stage (ms) to a slow CPU prefill (s).
HOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _NodeCollector(Collector):
    def __init__(self, node: Node, market: Callable[[], Mapping[str, float]] | None) -> None:
        self.node, self.market = node, market

    def collect(self) -> Iterator[Metric]:
        n = self.node
        hops = CounterMetricFamily("splitup_node_hops", "Pipeline hops computed, by task", labels=["task"])
        vram = GaugeMetricFamily("splitup_node_task_vram_bytes", "Planned memory of each held task", labels=["task"])
        for r in n.runners.values():
            tid = r.task.task_id
            hops.add_metric([tid], n.hops_by_task.get(tid, 0))
            vram.add_metric([tid], r.task.vram_bytes)
        yield hops
        yield vram
        for name, doc, value in (
            ("splitup_node_tasks_loaded", "Tasks preloaded and ready", len(n.runners)),
            ("splitup_node_sessions", "Live KV-cache sessions", len(n.sessions)),
            ("splitup_node_sessions_max", "Session limit", n.sessions.max_sessions),
            ("splitup_node_session_state_bytes", "Bytes held by session caches", n.sessions.state_bytes()),
            ("splitup_node_session_budget_bytes", "Budget for session caches", n.sessions.max_bytes or 0),
            ("splitup_node_uptime_seconds", "Seconds since the node started", n.status()["uptime_s"]),
            ("splitup_node_draining", "1 while the node drains for a restart", int(n.draining)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        if self.market is not None:
            for key, value in self.market().items():
                yield GaugeMetricFamily(f"splitup_market_{key}", f"Market node: {key.replace('_', ' ')}", value=value)


class NodeMetrics:
    def __init__(self, node: Node, market: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_NodeCollector(node, market))
        self.hop_seconds = Histogram("splitup_node_hop_seconds", "Compute time of one hop", ["task"],
                                     buckets=HOP_BUCKETS, registry=self.registry)
        node.hop_listeners.append(lambda task, seconds: self.hop_seconds.labels(task).observe(seconds))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
