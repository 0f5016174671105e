"""Decoded views of the program's accounts (built on the single layout declarations)."""

from __future__ import annotations

from dataclasses import dataclass

from splitup.market.constants import AccountTag
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
