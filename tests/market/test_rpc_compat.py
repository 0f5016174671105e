"""The local network as Solana clients see it: solana-py's typed client (its parsers reject any answer
whose shape differs from a validator's) over every method wallets, dApps and explorers use, the PubSub
websocket, validator error codes and words, and blockhashes and slots across a ``kill -9``."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard
from solana.rpc.async_api import AsyncClient
from solana.rpc.core import RPCException
from solana.rpc.models import DataSliceOpts, TxOpts
from solana.rpc.websocket_api import SolanaWsClient
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message, MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction, VersionedTransaction
from test_localnet import _wait_up

from splitup.demo.procs import free_port
from splitup.market.localnet.run import running

SOL = 10**9


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    with running(tmp_path_factory.mktemp("ledger"), port, slot_s=0.05):
        yield f"http://127.0.0.1:{port}"


def _rpc(url: str, method: str, *params: object) -> dict:
    return httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).json()


async def _funded(c: AsyncClient, lamports: int = 10 * SOL) -> Keypair:
    k = Keypair()
    sig = (await c.request_airdrop(k.pubkey(), lamports)).value
    await _confirmed(c, sig)
    return k


async def _confirmed(c: AsyncClient, sig: Signature) -> None:
    for _ in range(200):
        st = (await c.get_signature_statuses([sig])).value[0]
        if st is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{sig} never landed")


async def _transfer(c: AsyncClient, src: Keypair, dst: Pubkey, lamports: int, *extra, v0: bool = False,
                    blockhash: Hash | None = None) -> VersionedTransaction:
    bh = blockhash or (await c.get_latest_blockhash()).value.blockhash
    ixs = [*extra, transfer(TransferParams(from_pubkey=src.pubkey(), to_pubkey=dst, lamports=lamports))]
    if v0:
        return VersionedTransaction(MessageV0.try_compile(src.pubkey(), ixs, [], bh), [src])
    return VersionedTransaction.from_legacy(Transaction([src], Message.new_with_blockhash(ixs, src.pubkey(), bh), bh))


def test_transaction_history_methods(ledger: str) -> None:
    async def run() -> None:
        async with AsyncClient(ledger) as c:
            a = await _funded(c)
            b = Keypair().pubkey()
            tx = await _transfer(c, a, b, SOL)
            sig = (await c.send_raw_transaction(bytes(tx))).value
            await _confirmed(c, sig)
            got = (await c.get_transaction(sig, encoding="json", max_supported_transaction_version=0)).value
            assert got is not None and got.transaction.meta is not None
            meta = got.transaction.meta
            assert meta.fee == 5_000 and meta.err is None
            assert meta.pre_balances[:2] == [10 * SOL, 0]
            assert meta.post_balances[:2] == [10 * SOL - SOL - 5_000, SOL]
            assert meta.compute_units_consumed and meta.compute_units_consumed > 0
            assert any("invoke [1]" in line for line in meta.log_messages)
            assert got.block_time is not None and got.slot > 0
            b64 = (await c.get_transaction(sig, encoding="base64", max_supported_transaction_version=0)).value
            assert bytes(b64.transaction.transaction) == bytes(tx)
            parsed = (await c.get_transaction(sig, encoding="jsonParsed", max_supported_transaction_version=0)).value
            assert parsed.transaction.transaction.message.account_keys[0].pubkey == a.pubkey()
            # v0 needs the client to say it reads v0, with the validator's error otherwise
            sig0 = (await c.send_raw_transaction(bytes(await _transfer(c, a, b, 1, v0=True)))).value
            await _confirmed(c, sig0)
            err = _rpc(ledger, "getTransaction", str(sig0), {"encoding": "json"})["error"]
            assert err["code"] == -32015 and "maxSupportedTransactionVersion" in err["message"]
            assert (await c.get_transaction(sig0, max_supported_transaction_version=0)).value.transaction.version == 0
            assert (await c.get_transaction(Signature.default())).value is None

            sigs = (await c.get_signatures_for_address(a.pubkey())).value
            assert [s.signature for s in sigs][:2] == [sig0, sig]  # newest first, the airdrop last
            assert len(sigs) == 3 and all(s.confirmation_status is not None for s in sigs)
            assert [s.signature for s in (await c.get_signatures_for_address(a.pubkey(), limit=1)).value] == [sig0]
            assert [s.signature for s in (await c.get_signatures_for_address(a.pubkey(), before=sig0)).value][0] == sig
            assert (await c.get_signatures_for_address(a.pubkey(), until=sig)).value[0].signature == sig0
            assert _rpc(ledger, "getSignaturesForAddress", str(a.pubkey()), {"limit": 1001})["error"]["code"] == -32602

            block = (await c.get_block(got.slot, max_supported_transaction_version=0)).value
            assert sig in [t.transaction.signatures[0] for t in block.transactions]
            assert block.parent_slot == got.slot - 1 and block.block_height == got.slot
            assert (await c.get_block_time(got.slot)).value == block.block_time
            sigs_only = _rpc(ledger, "getBlock", got.slot, {"transactionDetails": "signatures",
                                                            "maxSupportedTransactionVersion": 0})["result"]
            assert str(sig) in sigs_only["signatures"]
            future = _rpc(ledger, "getBlock", 10**9)["error"]
            assert future["code"] == -32004 and future["message"] == f"Block not available for slot {10**9}"
            assert got.slot in (await c.get_blocks(got.slot - 1, got.slot + 1)).value
            assert (await c.get_transaction_count()).value >= 2

            info = (await c.get_epoch_info()).value
            sched = (await c.get_epoch_schedule()).value
            assert info.absolute_slot >= got.slot and info.slots_in_epoch > 0 and sched.slots_per_epoch == 432_000
            assert info.transaction_count is not None and info.transaction_count >= 2
            ident = (await c.get_identity()).value.identity
            assert ident == (await c.get_identity()).value.identity
            genesis = (await c.get_genesis_hash()).value
            assert len(bytes(genesis)) == 32
    asyncio.run(run())


def test_fees_priority_and_prioritization_history(ledger: str) -> None:
    async def run() -> None:
        async with AsyncClient(ledger) as c:
            a = await _funded(c)
            budget = [set_compute_unit_limit(300_000), set_compute_unit_price(10_000)]  # 3,000 lamports
            for v0 in (False, True):
                dest = Keypair().pubkey()
                tx = await _transfer(c, a, dest, SOL, *budget, v0=v0)
                quoted = (await c.get_fee_for_message(tx.message)).value
                assert quoted == 5_000 + 3_000
                before = (await c.get_balance(a.pubkey())).value
                sig = (await c.send_raw_transaction(bytes(tx))).value
                await _confirmed(c, sig)
                assert before - (await c.get_balance(a.pubkey())).value == SOL + quoted
            # no limit set: builtin instructions reserve 3,000 units each, so 2 x 3,000 x 0.5 lamports
            priced = await _transfer(c, a, Keypair().pubkey(), SOL, set_compute_unit_price(500_000))
            quoted = (await c.get_fee_for_message(priced.message)).value
            before = (await c.get_balance(a.pubkey())).value
            await _confirmed(c, (await c.send_raw_transaction(bytes(priced))).value)
            assert quoted == 5_000 + 3_000 and before - (await c.get_balance(a.pubkey())).value == SOL + quoted
            plain = await _transfer(c, a, Keypair().pubkey(), 1)
            assert (await c.get_fee_for_message(plain.message)).value == 5_000
            stale = await _transfer(c, a, Keypair().pubkey(), 1, blockhash=Hash.new_unique())
            assert (await c.get_fee_for_message(stale.message)).value is None
            fees = (await c.get_recent_prioritization_fees([dest])).value  # written only by a priced transaction
            assert 0 < len(fees) <= 150 and max(f.prioritization_fee for f in fees) == 10_000
    asyncio.run(run())


def test_simulate_transaction(ledger: str) -> None:
    async def run() -> None:
        async with AsyncClient(ledger) as c:
            a = await _funded(c)
            b = Keypair().pubkey()
            tx = await _transfer(c, a, b, SOL)
            sim = (await c.simulate_transaction(tx, sig_verify=True)).value
            assert sim.err is None and sim.units_consumed and sim.units_consumed > 0
            assert any("success" in line for line in sim.logs)
            # unsigned (as wallets simulate), with a blockhash the node never gave out, replaced
            bad = VersionedTransaction.populate(
                (await _transfer(c, a, b, SOL, blockhash=Hash.new_unique())).message, [Signature.default()])
            res = _rpc(ledger, "simulateTransaction", base64.b64encode(bytes(bad)).decode(), {
                "encoding": "base64", "replaceRecentBlockhash": True,
                "accounts": {"addresses": [str(a.pubkey()), str(b)], "encoding": "base64"}})["result"]["value"]
            assert res["err"] is None and res["replacementBlockhash"]["blockhash"]
            assert [acc["lamports"] for acc in res["accounts"]] == [10 * SOL - SOL - 5_000, SOL]
            res = _rpc(ledger, "simulateTransaction", base64.b64encode(bytes(bad)).decode(),
                       {"encoding": "base64", "sigVerify": True})["result"]["value"]
            assert res["err"] in ("SignatureFailure", "BlockhashNotFound")
            res = _rpc(ledger, "simulateTransaction", base64.b64encode(bytes(bad)).decode(),
                       {"encoding": "base64"})["result"]["value"]
            assert res["err"] == "BlockhashNotFound"
            both = _rpc(ledger, "simulateTransaction", base64.b64encode(bytes(bad)).decode(),
                        {"encoding": "base64", "sigVerify": True, "replaceRecentBlockhash": True})["error"]
            assert both["code"] == -32602
            assert (await c.get_balance(b)).value == 0  # a simulation changes nothing
    asyncio.run(run())


def test_account_encodings_and_data_slice(ledger: str) -> None:
    async def run() -> None:
        async with AsyncClient(ledger) as c:
            program = Pubkey.from_string("SpLitUpMarket111111111111111111111111111111")
            a = await _funded(c)
            sliced = (await c.get_account_info(a.pubkey(), encoding="base64",
                                               data_slice=DataSliceOpts(offset=0, length=0))).value
            assert sliced is not None and sliced.lamports == 10 * SOL and bytes(sliced.data) == b""
            # the program account's data is its ELF-loader stub; sliced and compressed views agree
            full = _rpc(ledger, "getAccountInfo", str(program), {"encoding": "base64"})["result"]["value"]
            raw = base64.b64decode(full["data"][0])
            part = _rpc(ledger, "getAccountInfo", str(program),
                        {"encoding": "base64", "dataSlice": {"offset": 1, "length": 3}})["result"]["value"]
            assert base64.b64decode(part["data"][0]) == raw[1:4] and part["space"] == len(raw)
            z = _rpc(ledger, "getAccountInfo", str(program), {"encoding": "base64+zstd"})["result"]["value"]
            assert z["data"][1] == "base64+zstd"
            assert zstandard.ZstdDecompressor().decompress(base64.b64decode(z["data"][0])) == raw
            many = (await c.get_multiple_accounts([a.pubkey()], encoding="base64",
                                                  data_slice=DataSliceOpts(offset=0, length=0))).value
            assert many[0] is not None and many[0].lamports == 10 * SOL
            err = _rpc(ledger, "getAccountInfo", str(a.pubkey()), {"encoding": "hex"})["error"]
            assert err["code"] == -32602 and "encoding" in err["message"]
    asyncio.run(run())


def test_errors_read_as_a_validators(ledger: str) -> None:
    async def run() -> None:
        async with AsyncClient(ledger) as c:
            a = await _funded(c)
            tx = await _transfer(c, a, Keypair().pubkey(), SOL)
            forged = VersionedTransaction.populate(tx.message, [Keypair().sign_message(to_bytes_versioned(tx.message))])
            err = _rpc(ledger, "sendTransaction", base64.b64encode(bytes(forged)).decode(), {"encoding": "base64"})
            assert err["error"] == {"code": -32003, "message": "Transaction signature verification failure"}
            nobody = await _transfer(c, Keypair(), a.pubkey(), 1)
            with pytest.raises(RPCException):
                await c.send_raw_transaction(bytes(nobody))
            e = _rpc(ledger, "sendTransaction", base64.b64encode(bytes(nobody)).decode(), {"encoding": "base64"})
            assert e["error"]["code"] == -32002
            assert e["error"]["message"] == ("Transaction simulation failed: Attempt to debit an account but found no "
                                             "record of a prior credit.")
            too_much = await _transfer(c, a, Keypair().pubkey(), 100 * SOL)
            e = _rpc(ledger, "sendTransaction", base64.b64encode(bytes(too_much)).decode(), {"encoding": "base64"})
            assert e["error"]["message"] == "Transaction simulation failed: Error processing Instruction 0: custom program error: 0x1"
            assert e["error"]["data"]["err"] == {"InstructionError": [0, {"Custom": 1}]}
            assert e["error"]["data"]["logs"]
            sig = (await c.send_raw_transaction(bytes(tx))).value
            await _confirmed(c, sig)
            again = _rpc(ledger, "sendTransaction", base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"})
            assert again["error"]["message"] == "Transaction simulation failed: This transaction has already been processed"
            # skipping preflight, a failing transaction lands and pays its fee; its status and history say why
            before = (await c.get_balance(a.pubkey())).value
            landed = (await c.send_raw_transaction(bytes(await _transfer(c, a, Keypair().pubkey(), 100 * SOL)),
                                                   TxOpts(skip_preflight=True))).value
            await _confirmed(c, landed)
            assert before - (await c.get_balance(a.pubkey())).value == 5_000
            meta = (await c.get_transaction(landed, max_supported_transaction_version=0)).value.transaction.meta
            assert meta.err is not None and meta.fee == 5_000
    asyncio.run(run())


def test_websocket_subscriptions(ledger: str) -> None:
    ws_url = ledger.replace("http", "ws")

    async def next_of(ws: SolanaWsClient, kind: type, pred=lambda n: True):  # noqa: ANN001, ANN202
        async def loop():  # noqa: ANN202
            while True:
                n = await ws.recv()
                if isinstance(n, kind) and pred(n):
                    return n
        return await asyncio.wait_for(loop(), 10)

    async def run() -> None:
        from solders.rpc.responses import (
            AccountNotification,
            LogsNotification,
            ProgramNotification,
            SignatureNotification,
            SlotNotification,
        )

        async with AsyncClient(ledger) as c, SolanaWsClient(ws_url) as ws:
            a = await _funded(c)
            b = Keypair().pubkey()
            slot_sub = await ws.slot_subscribe()
            n = await next_of(ws, SlotNotification)
            assert n.result.slot > 0
            await ws.unsubscribe(slot_sub)
            acc_sub = await ws.account_subscribe(pubkey=b)
            logs_sub = await ws.logs_subscribe()
            prog_sub = await ws.program_subscribe(program_id=Pubkey.from_string("11111111111111111111111111111111"))
            tx = await _transfer(c, a, b, SOL)
            sig_sub = await ws.signature_subscribe(signature=tx.signatures[0])
            await c.send_raw_transaction(bytes(tx))
            seen: dict[type, object] = {}
            wanted = (SignatureNotification, AccountNotification, LogsNotification, ProgramNotification)

            async def collect() -> None:
                while len(seen) < len(wanted):
                    n = await ws.recv()
                    seen.setdefault(type(n), n)
            await asyncio.wait_for(collect(), 10)
            assert seen[SignatureNotification].result.value.err is None
            assert seen[SignatureNotification].subscription == sig_sub.subscription_id
            assert seen[AccountNotification].result.value.lamports == SOL
            assert seen[LogsNotification].result.value.signature == tx.signatures[0]
            assert seen[LogsNotification].result.value.logs
            prog = seen[ProgramNotification].result.value
            assert prog.pubkey in (a.pubkey(), b)
            assert prog.account.owner == Pubkey.from_string("11111111111111111111111111111111")
            for sub in (acc_sub, logs_sub, prog_sub):
                await ws.unsubscribe(sub)
            # a signature that landed before the subscription is notified at once
            late = await ws.signature_subscribe(signature=tx.signatures[0])
            assert (await next_of(ws, SignatureNotification)).subscription == late.subscription_id
    asyncio.run(run())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_keeps_slot_and_blockhashes(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "splitup.market.localnet", "--dir", str(tmp_path), "--port", str(port),
           "--slot-ms", "50"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    async def before_kill() -> tuple[int, Hash, Keypair, VersionedTransaction, Signature]:
        async with AsyncClient(url) as c:
            a = await _funded(c)
            old = (await c.get_latest_blockhash()).value.blockhash
            tx = await _transfer(c, a, Keypair().pubkey(), SOL)
            sig = (await c.send_raw_transaction(bytes(tx))).value
            await _confirmed(c, sig)
            await asyncio.sleep(0.3)
            return (await c.get_slot()).value, old, a, tx, sig

    async def after_restart(slot: int, old: Hash, a: Keypair, tx: VersionedTransaction, sig: Signature) -> None:
        async with AsyncClient(url) as c:
            assert (await c.get_slot()).value >= slot
            assert _rpc(url, "isBlockhashValid", str(old))["result"]["value"] is True
            signed_before = await _transfer(c, a, Keypair().pubkey(), SOL, blockhash=old)
            sig2 = (await c.send_raw_transaction(bytes(signed_before))).value
            await _confirmed(c, sig2)
            replay = _rpc(url, "sendTransaction", base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"})
            assert "already been processed" in replay["error"]["message"]
            assert (await c.get_transaction(sig, max_supported_transaction_version=0)).value is not None

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_up(url, proc)
        state = asyncio.run(before_kill())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_up(url, proc)
        asyncio.run(after_restart(*state))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_market_transport_confirms_by_subscription(ledger: str, tmp_path: Path) -> None:
    from splitup.market.rpc import RpcTransport, ws_url_for

    assert ws_url_for("http://127.0.0.1:8899") == "ws://127.0.0.1:8900"
    assert ws_url_for("https://api.devnet.solana.com") == "wss://api.devnet.solana.com"
    t = RpcTransport(ledger, poll_s=5.0)  # polling this slowly would show in the time taken
    k = Keypair()
    t.airdrop(k.pubkey(), SOL)
    assert t.confirmed_by_subscription == 1 and not t._ws_unavailable and t.balance(k.pubkey()) == SOL
    t.close()
    port = free_port()
    with running(tmp_path, port, slot_s=0.05, ws_port=free_port()):  # nothing at port + 1: polling
        t = RpcTransport(f"http://127.0.0.1:{port}", poll_s=0.02)
        t.airdrop(k.pubkey(), SOL)
        assert t._ws_unavailable and t.balance(k.pubkey()) == SOL
        t.close()
