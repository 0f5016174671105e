"""The wallet, ledger and market sub-commands against an in-process local network."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from solders.keypair import Keypair
from test_localnet import free_port

from splitup.cli import main
from splitup.market.localnet.run import running
from splitup.market.wallet import WalletError, load_keypair, save_keypair


def test_wallet_files_are_solana_keygen_compatible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "id.json"
    assert main(["wallet", "new", "--outfile", str(path)]) == 0
    raw = json.loads(path.read_text())
    assert isinstance(raw, list) and len(raw) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kp = Keypair.from_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["wallet", "show", "--keypair", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(kp.pubkey())
    assert main(["wallet", "new", "--outfile", str(path)]) == 2  # never overwrites a wallet
    other = Keypair()
    save_keypair(other, path, force=True)
    assert load_keypair(path) == other
    path.write_text("[1, 2, 3]")
    with pytest.raises(WalletError):
        load_keypair(path)


def test_market_commands_over_the_local_network(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    wallet = tmp_path / "id.json"
    monkeypatch.setenv("SPLITUP_KEYPAIR", str(wallet))
    monkeypatch.setenv("SPLITUP_RPC_URL", f"http://127.0.0.1:{port}")
    assert main(["wallet", "new"]) == 0
    with running(tmp_path / "ledger", port):
        assert main(["ledger", "status"]) == 0
        assert main(["wallet", "airdrop", "5"]) == 0
        assert main(["market", "init", "--verify-rate-bps", "1000", "--heartbeat-window-slots", "9000"]) == 0
        assert main(["market", "register-node", "--stake", "2.5", "--vram-gib", "24", "--endpoint", "http://me"]) == 0
        capsys.readouterr()
        assert main(["market", "config"]) == 0
        out = capsys.readouterr().out
        assert "10.00%" in out and "heartbeat window   9000 slots" in out
        assert main(["market", "nodes"]) == 0
        out = capsys.readouterr().out
        assert "stake 2.500000000 SOL" in out and "http://me" in out and "(fresh)" in out
        assert main(["market", "init"]) == 2  # typed error, one line, no traceback
        assert "already exists" in capsys.readouterr().err
        # a second copy of the program, deployed through the upgradeable loader over JSON-RPC
        assert main(["wallet", "airdrop", "20"]) == 0
        program_kp = tmp_path / "program.json"
        assert main(["market", "deploy", "--program-keypair", str(program_kp)]) == 0
        pid = str(load_keypair(program_kp).pubkey())
        capsys.readouterr()
        time.sleep(0.2)  # a deployed program is usable from the next slot
        assert main(["market", "init", "--program-id", pid]) == 0
        assert main(["ledger", "status", "--program-id", pid]) == 0
    assert main(["market", "program"]) == 0
