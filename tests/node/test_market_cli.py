"""The market from the real command line: ``splitup market publish`` a plan, then ``splitup node start
--market`` as a process that registers, stakes, specialises and reports ready; bad input is one
``error:`` line and exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from solders.keypair import Keypair

from splitup import __version__
from splitup.cli._market_opts import amount_of
from splitup.demo.models import TINY_CHAT_TEMPLATE, byte_tokenizer_json
from splitup.demo.procs import Child, Processes, free_port
from splitup.market.accounts import node_engines, node_specialized, version_code
from splitup.market.connect import connect
from splitup.market.market import LAMPORTS_PER_SOL, Market, MarketParams
from splitup.market.wallet import load_keypair, save_keypair
from splitup.partition.task import Plan
from splitup.sdk.catalog import ModelManifest
from splitup.sdk.client import Client

WINDOW_SLOTS = 30


@dataclass
class Net:
    root: Path
    procs: Processes
    ledger: Child
    store: Child
    market: Market  # signed by the authority
    authority: Path
    operator: Path


def splitup(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "splitup", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Iterator[Net]:
    """A local ledger with the market initialised and a writable store server, both child processes."""
    root: Path = tmp_path_factory.mktemp("market-cli")
    with Processes(root / "logs") as procs:
        rpc_port, store_port = free_port(), free_port()
        ledger = procs.start("ledger", ["-m", "splitup", "ledger", "start", "--dir", str(root / "ledger"),
                                        "--port", str(rpc_port), "--slot-ms", "100"], f"http://127.0.0.1:{rpc_port}")
        store = procs.start("store", ["-m", "splitup", "store", "serve", "--dir", str(root / "store"),
                                      "--port", str(store_port), "--writable"], f"http://127.0.0.1:{store_port}")
        procs.wait_http(ledger)
        procs.wait_http(store)
        paths = {}
        for name in ("authority", "operator"):
            kp = Keypair()
            paths[name] = root / f"{name}.json"
            save_keypair(kp, paths[name])
        authority = load_keypair(paths["authority"])
        market = connect(ledger.url, authority)
        for path in paths.values():
            market.t.airdrop(load_keypair(path).pubkey(),
                             10 * LAMPORTS_PER_SOL)
        # min stake: 1 SOL; a heartbeat window of 3 s at these 100 ms slots
        market.init_config(authority, MarketParams.flat(10_000, heartbeat_window_slots=WINDOW_SLOTS))
        yield Net(root, procs, ledger, store, market, paths["authority"], paths["operator"])


def test_amounts() -> None:
    assert amount_of("2SOL") == 2 * LAMPORTS_PER_SOL
    assert amount_of("0.5sol") == LAMPORTS_PER_SOL // 2
    assert amount_of("0.001 SOL") == 1_000_000
    assert amount_of("1500000") == 1_500_000
    assert amount_of("7 lamports") == 7


@dataclass
class Published:
    model: str
    task_ids: list[str]
    node: Child


@pytest.fixture(scope="module")
def published(net: Net, plan_dir: Path) -> Published:
    """The plan published with the real CLI, and one market node process holding all its tasks (started
    from a TOML file that sets its on-chain heartbeat to every 0.6 s)."""
    plan = Plan.load(plan_dir)
    tok = net.root / "tokenizer.json"
    tok.write_text(byte_tokenizer_json())
    config = net.root / "tokenizer_config.json"  # as a model repository ships it
    config.write_text(json.dumps({"eos_token": {"__type": "AddedToken", "content": "<|endoftext|>"}, "bos_token": None,
                                  "chat_template": TINY_CHAT_TEMPLATE}))
    out = splitup("market", "publish", plan_dir, "--store", net.store.url, "--tokenizer", tok, "--eos-ids", "256",
                  "--tokenizer-config", config, "--price", "0.001sol", "--keypair", net.authority,
                  "--rpc-url", net.ledger.url)
    assert out.returncode == 0, out.stderr
    address = re.search(r"model \S+ \(decoder\) at (\w+)", out.stdout)
    model_hash = re.search(r"model hash ([0-9a-f]{64})", out.stdout)
    assert address and model_hash, out.stdout
    printed = re.findall(r"task \d+: ([0-9a-f]{64})", out.stdout)
    task_ids = [t.task_id for t in plan.tasks]
    assert printed == task_ids
    (addr, info), = net.market.models()
    assert str(addr) == address.group(1) and info.complete
    assert info.header.model_hash.hex() == model_hash.group(1)
    assert [t.task_id.hex() for t in info.tasks] == task_ids and {t.price for t in info.tasks} == {1_000_000}
    # The manifest and plan reached the store server (not just a local staging directory).
    blob = httpx.get(f"{net.store.url}/blobs/{model_hash.group(1)}", timeout=5)
    assert blob.status_code == 200
    manifest = ModelManifest.parse(blob.content)
    assert manifest.special_tokens == {"eos_token": "<|endoftext|>"} and manifest.chat_template == TINY_CHAT_TEMPLATE

    port = free_port()
    toml = net.root / "node.toml"
    toml.write_text("chain-heartbeat = 0.01\nheartbeat = 0.2\n")
    node = net.procs.start("node", ["-m", "splitup", "node", "start", "--market", "--keypair", str(net.operator),
                                    "--rpc-url", net.ledger.url, "--store", net.store.url, "--port", str(port),
                                    "--tasks", ",".join(task_ids), "--stake", "2SOL", "--vram", "1GiB",
                                    "--cache", str(net.root / "cache"), "--config", str(toml)],
                           f"http://127.0.0.1:{port}")
    net.procs.wait_http(node)
    name = re.search(r"model (\S+) \(decoder\)", out.stdout)
    assert name, out.stdout
    return Published(name.group(1), task_ids, node)


def test_publish_then_market_node(net: Net, published: Published) -> None:
    node, task_ids = published.node, published.task_ids
    deadline = time.monotonic() + 60
    while (state := httpx.get(node.url + "/market/startup", timeout=5).json())["phase"] != "ready":
        assert state["phase"] != "failed" and time.monotonic() < deadline, (state, node.tail())
        time.sleep(0.2)
    agent = httpx.get(node.url + "/market/agent", timeout=5).json()
    operator = load_keypair(net.operator).pubkey()
    assert agent["owner"] == str(operator) and agent["tasks"] == sorted(task_ids) and not agent["last_error"]
    n = net.market.node(operator)
    assert n.stake == 2 * LAMPORTS_PER_SOL and n.vram == 1 << 30
    assert [t.hex() for t in node_specialized(n)] == task_ids


def test_a_killed_node_stops_being_routed_to_within_one_window(net: Net, published: Published) -> None:
    """SIGKILL, no drain: the node's on-chain heartbeat stops, and one window later the SDK neither counts
    it as a holder (admission) nor routes to it (stand-ins); its stake stays whole."""
    operator = load_keypair(net.operator).pubkey()
    address = net.market.node_address(operator)
    client = Client(net.ledger.url, load_keypair(net.authority), store_url=net.store.url)
    try:
        entry = client.plan(published.model)
        deadline = time.monotonic() + 30
        while (n := net.market.node(operator)).version == 0:  # the process's own HEARTBEAT, not registration's
            assert time.monotonic() < deadline, published.node.tail()
            time.sleep(0.1)
        assert n.version == version_code(__version__) and "onnxruntime" in node_engines(n)
        assert n.free_sessions > 0
        assert address in client.live_holders(entry)
        assert all(c.holders == 1 and c.live == 1 for c in client.capacity(entry))
        stake = n.stake
        net.procs.kill(published.node)
        killed_at = time.monotonic()
        last = net.market.node(operator).last_heartbeat  # no beat can land after the kill
        while address in client.live_holders(entry):
            assert time.monotonic() - killed_at < 30
            time.sleep(0.05)
        # skipped once silent for a whole window, and within it (plus one look at the chain: 1.5 s of slots)
        assert last + WINDOW_SLOTS < net.market.t.slot() <= last + WINDOW_SLOTS + 15
        assert all(c.holders == 0 and c.slots == 0 for c in client.capacity(entry))
        after = net.market.node(operator)
        assert (after.stake, after.locked, after.liveness_faults) == (stake, 0, 0)
        assert after.last_heartbeat == last
    finally:
        client.close()


def _one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_bad_input(net: Net, plan_dir: Path, tmp_path: Path) -> None:
    tid = "ab" * 32
    node = ["node", "start", "--market", "--rpc-url", net.ledger.url, "--store", net.store.url,
            "--port", str(free_port()), "--tasks", tid, "--vram", "1GiB"]
    _one_line_error(splitup(*node, "--keypair", tmp_path / "missing.json", "--stake", "2SOL"), "no keypair file")
    poor = tmp_path / "poor.json"
    save_keypair(Keypair(), poor)
    _one_line_error(splitup(*node, "--keypair", poor, "--stake", "0.5sol"), "below the market's minimum")
    bad = splitup(*node, "--keypair", poor, "--stake", "two")  # argparse: usage, then its error line
    assert bad.returncode == 2 and "argument --stake: not an amount: 'two'" in bad.stderr, bad.stderr
    _one_line_error(splitup("node", "start", "--stake", "2SOL"), "only apply with --market")
    _one_line_error(splitup("market", "publish", tmp_path / "no-plan", "--store", net.store.url,
                            "--keypair", net.authority, "--rpc-url", net.ledger.url), "cannot read plan")
    _one_line_error(splitup("market", "publish", plan_dir, "--store", net.store.url, "--model", "smollm2-135m",
                            "--keypair", net.authority, "--rpc-url", net.ledger.url), "is of tiny-llama")
