"""The marketplace client: the SplitUp Solana program (``program/``, shipped as ``splitup_market.so``)
driven from Python.

    from splitup.market import Market, LiteSvmTransport, RpcTransport
    market = Market(LiteSvmTransport(), DEFAULT_PROGRAM_ID, payer)

``RpcTransport`` is imported lazily (it pulls in solana-py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from splitup.market.errors import MarketError, ProgramError, TransactionFailed
from splitup.market.market import Market, MarketParams, commitment_of, seal_of
from splitup.market.transport import DEFAULT_PROGRAM_ID, LiteSvmTransport, Transport, TxResult, program_bytes

if TYPE_CHECKING:
    from splitup.market.rpc import RpcTransport

__all__ = [
    "DEFAULT_PROGRAM_ID",
    "LiteSvmTransport",
    "Market",
    "MarketError",
    "MarketParams",
    "ProgramError",
    "RpcTransport",
    "TransactionFailed",
    "Transport",
    "TxResult",
    "commitment_of",
    "seal_of",
    "program_bytes",
]


def __getattr__(name: str) -> Any:
    if name == "RpcTransport":
        from splitup.market.rpc import RpcTransport

        return RpcTransport
    raise AttributeError(name)
