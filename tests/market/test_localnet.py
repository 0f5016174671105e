"""The embedded local network: solana-py over JSON-RPC, typed errors, durability across restarts and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from market_world import SOL, h
from solders.keypair import Keypair

from splitup.demo.procs import free_port
from splitup.market.errors import AlreadyInitializedError, NothingToWithdrawError, TransactionFailed
from splitup.market.layout import ModelTask
from splitup.market.localnet.b58 import b58decode, b58encode
from splitup.market.localnet.run import running
from splitup.market.market import Market, MarketParams
from splitup.market.rpc import RpcTransport
from splitup.market.transport import DEFAULT_PROGRAM_ID


@given(st.binary(max_size=80))
def test_base58_roundtrip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_base58_matches_solana_keys() -> None:
    k = Keypair().pubkey()
    assert b58encode(bytes(k)) == str(k)


def test_lifecycle_over_json_rpc(tmp_path: Path) -> None:
    port = free_port()
    with running(tmp_path, port):
        t = RpcTransport(f"http://127.0.0.1:{port}", poll_s=0.02)
        authority, client, n1, n2 = (Keypair() for _ in range(4))
        for k in (authority, client, n1, n2):
            t.airdrop(k.pubkey(), 50 * SOL)
        m = Market(t, DEFAULT_PROGRAM_ID, authority)
        m.init_config(authority, MarketParams.flat(10_000))
        m.register_node(n1, 2 * SOL, 1 << 34)
        m.register_node(n2, 2 * SOL, 1 << 34)
        m.specialize(n2, [h("t")])  # a validator must hold the task it checks
        model = m.register_model(client, h("m"), [ModelTask(task_id=h("t"), vram=1, price=10**6)]).address
        assert model is not None
        job = m.post_job(client, model, h("in")).address
        assert job is not None
        m.accept_task(n1, job, 0)
        m.commit_result(n1, job, 0, h("o"))
        t.advance(1)
        assert m.sample(job, 0)
        m.assign_validator(n2, job, 0)
        m.submit_verdict(n2, job, 0, True, h("o"))
        before = t.balance(n1.pubkey())
        m.settle(job, 0)
        assert t.balance(n1.pubkey()) == before + 10**6
        assert {k for k, _ in m.nodes()} == {m.node_address(n1.pubkey()), m.node_address(n2.pubkey())}
        # a refused transaction becomes the same typed error as in-process, and costs nothing (preflight)
        with pytest.raises(NothingToWithdrawError):
            m.withdraw(n1)
        assert t.balance(n1.pubkey()) == before + 10**6
        # without preflight the failing transaction lands, pays its fee, and its status carries the error
        t2 = RpcTransport(f"http://127.0.0.1:{port}", poll_s=0.02, skip_preflight=True)
        with pytest.raises(NothingToWithdrawError):
            Market(t2, DEFAULT_PROGRAM_ID, authority).withdraw(n1)
        assert t.balance(n1.pubkey()) == before + 10**6 - 5_000
        t2.close()
        t.close()


def test_json_rpc_errors_and_filters(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(tmp_path, port):
        r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "getBlockCommitment", "params": [1]})
        assert r.json()["error"] == {"code": -32601, "message": "Method not found"}
        r = httpx.post(url, json=[{"jsonrpc": "2.0", "id": 1, "method": "getHealth"},
                                  {"jsonrpc": "2.0", "id": 2, "method": "getBalance", "params": ["not a key"]}])
        health, bad = r.json()
        assert health["result"] == "ok" and bad["error"]["code"] == -32602
        t = RpcTransport(url, poll_s=0.02)
        a = Keypair()
        t.airdrop(a.pubkey(), 10 * SOL)
        m = Market(t, DEFAULT_PROGRAM_ID, a)
        m.init_config(a)
        m.register_node(a, 2 * SOL, 1)
        node = str(m.node_address(a.pubkey()))
        params = [str(DEFAULT_PROGRAM_ID), {"encoding": "base64",
                                            "filters": [{"memcmp": {"offset": 0, "bytes": b58encode(bytes([3]))}}]}]
        r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "getProgramAccounts", "params": params})
        assert [x["pubkey"] for x in r.json()["result"]] == [node]
        t.close()
    with pytest.raises(TransactionFailed):  # nothing listens any more
        RpcTransport(url, timeout=2).slot()


def test_state_survives_restart(tmp_path: Path) -> None:
    port = free_port()
    a = Keypair()
    with running(tmp_path, port):
        t = RpcTransport(f"http://127.0.0.1:{port}", poll_s=0.02)
        t.airdrop(a.pubkey(), 10 * SOL)
        m = Market(t, DEFAULT_PROGRAM_ID, a)
        m.init_config(a)
        m.register_node(a, 3 * SOL, 1 << 30, endpoint="http://a")
        slot = t.slot()
        t.close()
    with running(tmp_path, port):
        t = RpcTransport(f"http://127.0.0.1:{port}", poll_s=0.02)
        m = Market(t, DEFAULT_PROGRAM_ID, a)
        assert m.node(a.pubkey()).stake == 3 * SOL
        assert t.slot() >= slot
        m.add_stake(a, SOL)  # and it keeps working
        assert m.node(a.pubkey()).stake == 4 * SOL
        t.close()


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server exited")
        try:
            if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_loses_nothing_confirmed(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "splitup.market.localnet", "--dir", str(tmp_path), "--port", str(port),
           "--slot-ms", "50"]
    a = Keypair()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_up(url, proc)
        t = RpcTransport(url, poll_s=0.02)
        t.airdrop(a.pubkey(), 10 * SOL)
        m = Market(t, DEFAULT_PROGRAM_ID, a)
        m.init_config(a)
        m.register_node(a, 2 * SOL, 1)
        m.begin_unstake(a, SOL // 2)  # the last confirmed write before the kill
        t.close()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_up(url, proc)
        t = RpcTransport(url, poll_s=0.02)
        node = Market(t, DEFAULT_PROGRAM_ID, a).node(a.pubkey())
        assert (node.stake, node.unbonding) == (2 * SOL - SOL // 2, SOL // 2)
        with pytest.raises(AlreadyInitializedError):  # the market config survived too
            Market(t, DEFAULT_PROGRAM_ID, a).init_config(a)
        t.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_programs_deployed_to_the_local_network_survive_restart(tmp_path: Path) -> None:
    from splitup.market.deploy import deploy_upgradeable
    from splitup.market.transport import program_bytes

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    a = Keypair()
    with running(tmp_path, port):
        t = RpcTransport(url, poll_s=0.02)
        t.airdrop(a.pubkey(), 50 * SOL)
        pid = deploy_upgradeable(t, a, program_bytes())
        t.advance(1)
        Market(t, pid, a).init_config(a)
        t.close()
    with running(tmp_path, port):
        t = RpcTransport(url, poll_s=0.02)
        m = Market(t, pid, a)
        assert m.config().authority == a.pubkey()
        m.register_node(a, 2 * SOL, 1)  # the redeployed program runs after the restart
        assert m.node(a.pubkey()).stake == 2 * SOL
        t.close()
