"""Wallets: ed25519 keypairs in the Solana CLI's JSON format (a list of the 64 secret-key bytes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from solders.keypair import Keypair

from splitup import jsonparse
from splitup.errors import SplitUpError

WalletLike = Keypair | Path | str


class WalletError(SplitUpError):
    """A keypair file is missing, malformed, or would be overwritten."""


def default_keypair_path() -> Path:
    """``$SPLITUP_KEYPAIR``, else the Solana CLI's default ``~/.config/solana/id.json``."""
    env = os.environ.get("SPLITUP_KEYPAIR")
    return Path(env) if env else Path.home() / ".config" / "solana" / "id.json"


def load_keypair(path: Path) -> Keypair:
    try:
        raw = jsonparse.loads(path.read_text())
    except FileNotFoundError:
        raise WalletError(f"no keypair file at {path} (create one with `splitup wallet new`)") from None
    except (OSError, ValueError) as exc:
        raise WalletError(f"{path}: not a keypair file: {exc}") from None
    if not (isinstance(raw, list) and len(raw) == 64 and all(isinstance(b, int) and 0 <= b < 256 for b in raw)):
        raise WalletError(f"{path}: expected a JSON list of 64 bytes (solana-keygen format)")
    try:
        return Keypair.from_bytes(bytes(raw))
    except ValueError as exc:
        raise WalletError(f"{path}: invalid ed25519 keypair: {exc}") from None


def save_keypair(kp: Keypair, path: Path, force: bool = False) -> None:
    """Write ``kp`` readable by its owner only; never overwrite a wallet unless ``force``."""
    if path.exists() and not force:
        raise WalletError(f"{path} exists; refusing to overwrite a wallet (use --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(list(bytes(kp)), f)
    os.chmod(path, 0o600)


def as_keypair(wallet: WalletLike) -> Keypair:
    """A keypair, or the path of a Solana CLI keypair file."""
    return wallet if isinstance(wallet, Keypair) else load_keypair(Path(wallet).expanduser())
