"""Decoded views of the program's accounts (built on the single layout declarations)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from splitup.market.constants import ENGINE_NAMES, AccountTag
from splitup.market.errors import WrongAccountTypeError
from splitup.market.layout import Config, JobHeader, ModelHeader, ModelTask, Node, TaskSlot


def _expect(data: bytes, tag: AccountTag, what: str) -> None:
    if not data or data[0] != tag:
        raise WrongAccountTypeError(f"account is not a {what} (tag {data[0] if data else None})")


def decode_config(data: bytes) -> Config:
    _expect(data, AccountTag.CONFIG, "market config")
    return Config.decode(data)


def decode_node(data: bytes) -> Node:
    _expect(data, AccountTag.NODE, "node")
    return Node.decode(data)


@dataclass
class ModelInfo:
    header: ModelHeader
    tasks: list[ModelTask]

    @property
    def complete(self) -> bool:
        return self.header.filled == self.header.task_count


def decode_model(data: bytes) -> ModelInfo:
    _expect(data, AccountTag.MODEL, "model")
    h = ModelHeader.decode(data)
    base, size = ModelHeader.size(), ModelTask.size()
    return ModelInfo(h, [ModelTask.decode(data, base + i * size) for i in range(h.filled)])


@dataclass
class JobInfo:
    header: JobHeader
    tasks: list[TaskSlot]


def decode_job(data: bytes) -> JobInfo:
    _expect(data, AccountTag.JOB, "job")
    h = JobHeader.decode(data)
    base, size = JobHeader.size(), TaskSlot.size()
    return JobInfo(h, [TaskSlot.decode(data, base + i * size) for i in range(h.task_count)])


def node_endpoint(node: Node) -> str:
    return node.endpoint.rstrip(b"\0").decode(errors="replace")


def node_specialized(node: Node) -> list[bytes]:
    return [node.specialized[i * 32 : (i + 1) * 32] for i in range(node.special_count)]


def engines_mask(names: Iterable[str]) -> int:
    """The ``engines`` bits of a node that runs ``names`` (unknown engines have no bit)."""
    return sum(1 << i for i, e in enumerate(ENGINE_NAMES) if e in set(names))


def node_engines(node: Node) -> list[str]:
    return [e for i, e in enumerate(ENGINE_NAMES) if node.engines >> i & 1]


def version_code(text: str) -> int:
    """``"1.2.3"`` as the u32 a heartbeat carries (major << 16 | minor << 8 | patch, each capped at 255)."""
    parts = [int(p) if p.isdigit() else 0 for p in text.split("+")[0].split(".")[:3]] + [0, 0, 0]
    return sum(min(255, v) << shift for v, shift in zip(parts[:3], (16, 8, 0), strict=True))


def node_version(node: Node) -> str:
    v = node.version
    return f"{v >> 16}.{v >> 8 & 255}.{v & 255}"
