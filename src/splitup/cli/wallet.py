"""``splitup wallet new|show|balance|airdrop``: Solana keypair files (solana-keygen format) and SOL."""

from __future__ import annotations

import argparse
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.cli._market_opts import add_network, lamports_of, sol
from splitup.market.wallet import default_keypair_path, load_keypair, save_keypair


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("wallet", help="create and fund Solana keypairs",
                              description="Wallets are ed25519 keypairs in the Solana CLI's JSON format.")
    sub = p.add_subparsers(dest="wallet_cmd", metavar="ACTION", required=True)
    new = sub.add_parser("new", help="create a keypair file")
    new.add_argument("--outfile", type=Path, default=None, help="default: $SPLITUP_KEYPAIR or ~/.config/solana/id.json")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.set_defaults(func=cmd_new)
    show = sub.add_parser("show", help="print a keypair's address")
    show.add_argument("--keypair", type=Path, default=None)
    show.set_defaults(func=cmd_show)
    bal = sub.add_parser("balance", help="print the balance of an address (default: your wallet)")
    add_network(bal)
    bal.add_argument("address", nargs="?", type=Pubkey.from_string, default=None)
    bal.set_defaults(func=cmd_balance)
    drop = sub.add_parser("airdrop", help="request SOL from the network's faucet (local network, devnet)")
    add_network(drop)
    drop.add_argument("amount", type=lamports_of, help="SOL, e.g. 2 or 0.5")
    drop.set_defaults(func=cmd_airdrop)


def _path(args: argparse.Namespace, attr: str = "keypair") -> Path:
    return getattr(args, attr) or default_keypair_path()


def cmd_new(args: argparse.Namespace) -> int:
    kp = Keypair()
    path = args.outfile or default_keypair_path()
    save_keypair(kp, path, force=args.force)
    print(f"wrote {path}\naddress: {kp.pubkey()}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(load_keypair(_path(args)).pubkey())
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    address = args.address or load_keypair(_path(args)).pubkey()
    from splitup.market.rpc import RpcTransport

    print(f"{address}: {sol(RpcTransport(args.rpc_url).balance(address))}")
    return 0


def cmd_airdrop(args: argparse.Namespace) -> int:
    from splitup.market.rpc import RpcTransport

    address = load_keypair(_path(args)).pubkey()
    t = RpcTransport(args.rpc_url)
    t.airdrop(address, args.amount)
    print(f"{address}: {sol(t.balance(address))}")
    return 0
