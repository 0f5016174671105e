"""The Python SDK: ``Client`` runs models on the market; the catalog and reports underneath.

``import splitup.sdk`` stays light: the client (solana-py, httpx, the pipeline) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitup.sdk.client import Client, Completion, JobError, RunResult

__all__ = ["Client", "Completion", "JobError", "RunResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from splitup.sdk import client

        return getattr(client, name)
    raise AttributeError(name)
