"""SplitUp: run models too large for one consumer GPU on many of them, paid for and verified on Solana."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from splitup.sdk.client import Client

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import splitup` (every CLI start) does not pull in solana-py and the pipeline.
    if name == "Client":
        from splitup.sdk.client import Client

        return Client
    raise AttributeError(f"module 'splitup' has no attribute {name!r}")
