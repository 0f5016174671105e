"""Options shared by the market, wallet and ledger commands: where the network is and who signs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from solders.pubkey import Pubkey

from splitup.market.localnet import DEFAULT_RPC_URL
from splitup.market.market import Market
from splitup.market.transport import DEFAULT_PROGRAM_ID
from splitup.market.wallet import default_keypair_path, load_keypair

LAMPORTS_PER_SOL = 1_000_000_000


def add_network(p: argparse.ArgumentParser, keypair: bool = True) -> None:
    p.add_argument("--rpc-url", default=os.environ.get("SPLITUP_RPC_URL", DEFAULT_RPC_URL),
                   help="JSON-RPC endpoint: the local network (default), devnet or mainnet [$SPLITUP_RPC_URL]")
    p.add_argument("--program-id", type=Pubkey.from_string,
                   default=Pubkey.from_string(os.environ.get("SPLITUP_PROGRAM_ID", str(DEFAULT_PROGRAM_ID))),
                   help="address of the market program [$SPLITUP_PROGRAM_ID]")
    if keypair:
        p.add_argument("--keypair", type=Path, default=None,
                       help="signer's keypair JSON (default $SPLITUP_KEYPAIR or ~/.config/solana/id.json)")


def market_from(args: argparse.Namespace) -> Market:
    from splitup.market.rpc import RpcTransport  # imports solana-py: only when a command needs the network

    path = args.keypair or default_keypair_path()
    return Market(RpcTransport(args.rpc_url), args.program_id, load_keypair(path))


def sol(lamports: int) -> str:
    return f"{lamports / LAMPORTS_PER_SOL:.9f} SOL"


def lamports_of(text: str) -> int:
    """'1.5' SOL -> lamports, exactly (no float rounding)."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text) * LAMPORTS_PER_SOL
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount of SOL: {text!r}") from None
    if value != value.to_integral_value() or value < 0:
        raise argparse.ArgumentTypeError(f"{text} SOL is not a whole number of lamports")
    return int(value)


def amount_of(text: str) -> int:
    """An amount as operators write it: ``2SOL``, ``0.5 sol`` (exact) or plain lamports (``1500000``).

    Unlike ``lamports_of`` a bare number means lamports here: a stake typed without a unit must not
    silently become a billion times larger."""
    t = text.strip()
    if t.lower().endswith("sol"):
        return lamports_of(t[:-3].strip())
    if t.lower().endswith("lamports"):
        t = t[: -len("lamports")].strip()
    if not t.isdigit():
        raise argparse.ArgumentTypeError(f"not an amount: {text!r} (examples: 2SOL, 0.5sol, 1500000 lamports)")
    return int(t)
