"""A stand-in's takeover of a task, signed by both parties in two processes.

``take_over`` needs the client's and the stand-in owner's signatures (the client vouches that the
stand-in did the work, the stand-in locks its collateral). The client builds and signs the transaction
(:func:`takeover_request`); the stand-in checks that it is exactly the takeover of that task by itself,
adds its signature and sends it (:func:`cosign_takeover`). Nothing else can be slipped in: the stand-in
rebuilds the expected message and compares bytes.
"""

from __future__ import annotations

from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from splitup.market import instructions as ix
from splitup.market.errors import MarketError
from splitup.market.market import Market
from splitup.market.transport import TxResult


def _message(market: Market, client: Pubkey, standin_owner: Pubkey, job: Pubkey, index: int,
             blockhash: object) -> Message:
    info = market.job(job)
    instr = ix.take_over(market.program_id, client, standin_owner, job, info.header.model, index,
                         info.tasks[index].node)
    return Message.new_with_blockhash([instr], client, blockhash)  # type: ignore[arg-type]


def takeover_request(market: Market, client: Keypair, standin_owner: Pubkey, job: Pubkey, index: int) -> bytes:
    """The takeover transaction, signed by the client (who pays its fee); the stand-in signs and sends it."""
    blockhash = market.t.latest_blockhash()  # type: ignore[attr-defined]
    tx = Transaction.new_unsigned(_message(market, client.pubkey(), standin_owner, job, index, blockhash))
    tx.partial_sign([client], blockhash)
    return bytes(tx)


def cosign_takeover(market: Market, standin_owner: Keypair, raw: bytes, job: Pubkey, index: int) -> TxResult:
    """Check ``raw`` is the takeover of task ``index`` of ``job`` by this stand-in, co-sign and send it."""
    try:
        tx = Transaction.from_bytes(raw)
    except Exception as exc:  # solders raises its own error types for malformed bytes
        raise MarketError(f"not a transaction: {exc}") from None
    client = market.job(job).header.client
    want = _message(market, client, standin_owner.pubkey(), job, index, tx.message.recent_blockhash)
    if bytes(want) != bytes(tx.message):
        raise MarketError("the transaction is not the takeover of this task by this node")
    tx.partial_sign([standin_owner], tx.message.recent_blockhash)
    tx.verify()  # both signatures present and valid
    return market.t.send_signed(tx)  # type: ignore[attr-defined]
