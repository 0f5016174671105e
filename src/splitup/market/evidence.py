"""Signed statements the program takes as evidence (program/evidence.c).

A node owner signs with its wallet key (ed25519, what any Solana wallet signs with):

* a **receipt** when its node receives a task's input: "my node got, for task ``index`` of ``job``,
  bytes hashing to ``digest``". Whoever holds it (the client, or the node that sent the input) can prove
  it on chain (``prove_receipt``): from then on the node cannot claim it was never fed.
* a **hand-off** when its node sends a call's output on: "my node sent, on call ``call`` of task
  ``index`` of ``job``, tensors hashing to ``digest``" (``splitup.verify.commitment.handoff_digest``). An
  honest sender commits exactly that digest for that call (the call tree of ``splitup.market.calls``); a
  receiver holding one that differs, or one for a call beyond what the sender committed, proves the lie
  on chain (``prove_handoff``, with the opening of the sender's commitment at that call) and the sender
  is slashed.

Message: domain tag (18) || program id || job || task index (u64 LE) || [call index (u64 LE), hand-offs
only] || digest: 122 bytes for a receipt, 130 for a hand-off. The program id and job make a statement
useless on any other deployment, job or task. On chain the runtime's Ed25519 precompile checks the
signature in the instruction just before the program's; the program reads that instruction back through
the Instructions sysvar.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from splitup.market.constants import HANDOFF_DOMAIN, RECEIPT_DOMAIN
from splitup.market.errors import MarketError

ED25519_PROGRAM = Pubkey.from_string("Ed25519SigVerify111111111111111111111111111")
RECEIPT, HANDOFF = "receipt", "handoff"
_DOMAINS = {RECEIPT: RECEIPT_DOMAIN, HANDOFF: HANDOFF_DOMAIN}
SELF_IX = 0xFFFF  # the precompile reads the offsets in its own instruction data
COMPACT_BYTES = 96  # digest + signature: what a node appends to a frame


def statement(kind: str, program_id: Pubkey, job: Pubkey, index: int, digest: bytes, call: int = 0) -> bytes:
    if len(digest) != 32:
        raise ValueError(f"a {kind} digest is 32 bytes, got {len(digest)}")
    if kind != HANDOFF and call:
        raise ValueError(f"a {kind} names no call")
    called = struct.pack("<Q", call) if kind == HANDOFF else b""
    return _DOMAINS[kind] + bytes(program_id) + bytes(job) + struct.pack("<Q", index) + called + digest


@dataclass(frozen=True)
class Signed:
    """One signed statement: ``kind`` (receipt or hand-off) by ``signer`` (a node owner's wallet);
    ``call``: the call of the task a hand-off is of (0 for receipts)."""

    kind: str
    program_id: Pubkey
    job: Pubkey
    index: int
    digest: bytes
    signer: Pubkey
    signature: bytes
    call: int = 0

    @classmethod
    def make(cls, kind: str, owner: Keypair, program_id: Pubkey, job: Pubkey, index: int, digest: bytes,
             call: int = 0) -> Signed:
        sig = owner.sign_message(statement(kind, program_id, job, index, digest, call))
        return cls(kind, program_id, job, index, digest, owner.pubkey(), bytes(sig), call)

    @property
    def message(self) -> bytes:
        return statement(self.kind, self.program_id, self.job, self.index, self.digest, self.call)

    def valid(self) -> bool:
        try:
            return Signature.from_bytes(self.signature).verify(self.signer, self.message)
        except ValueError:
            return False

    def verify_ix(self) -> Instruction:
        return ed25519_verify(self.signer, self.signature, self.message)

    def compact(self) -> bytes:
        """digest || signature: the rest (kind, job, task, call, signer) the receiver of a hop already knows."""
        return self.digest + self.signature

    @classmethod
    def from_compact(cls, raw: bytes, kind: str, program_id: Pubkey, job: Pubkey, index: int, signer: Pubkey,
                     call: int = 0) -> Signed:
        """Parse ``compact`` bytes and check the signature; MarketError when it is not a valid statement."""
        if len(raw) != COMPACT_BYTES:
            raise MarketError(f"a compact {kind} is {COMPACT_BYTES} bytes, got {len(raw)}")
        s = cls(kind, program_id, job, index, bytes(raw[:32]), signer, bytes(raw[32:]), call)
        if not s.valid():
            raise MarketError(f"the {kind} of task {index} (call {call}) of {job} is not signed by {signer}")
        return s

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "program": str(self.program_id), "job": str(self.job), "index": self.index,
                "call": self.call, "digest": self.digest.hex(), "signer": str(self.signer),
                "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, d: Any) -> Signed:
        """Parse and check; MarketError (the caller's fault) when malformed or not validly signed."""
        try:
            s = cls(str(d["kind"]), Pubkey.from_string(d["program"]), Pubkey.from_string(d["job"]), int(d["index"]),
                    bytes.fromhex(d["digest"]), Pubkey.from_string(d["signer"]), bytes.fromhex(d["signature"]),
                    int(d.get("call", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MarketError(f"malformed signed statement: {exc}") from None
        # (valid() is False for a receipt naming a call: its statement cannot be built)
        if s.kind not in _DOMAINS or len(s.digest) != 32 or len(s.signature) != 64 or not 0 <= s.call < 2**64 \
                or not s.valid():
            raise MarketError(f"not a validly signed {s.kind}")
        return s


def ed25519_verify(signer: Pubkey, signature: bytes, message: bytes) -> Instruction:
    """The Ed25519 precompile instruction checking one signature, every offset into its own data (the
    only form program/evidence.c accepts): header and offsets (16), key (32), signature (64), message."""
    pk, sig, msg = 16, 48, 112
    header = struct.pack("<BBHHHHHHH", 1, 0, sig, SELF_IX, pk, SELF_IX, msg, len(message), SELF_IX)
    return Instruction(ED25519_PROGRAM, header + bytes(signer) + bytes(signature) + message, [])
