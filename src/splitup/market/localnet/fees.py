"""What a transaction message costs, as a validator charges it: 5,000 lamports per signature plus the
priority fee its ComputeBudget instructions ask for (price in micro-lamports x compute-unit limit)."""

from __future__ import annotations

from solders.message import Message, MessageV0
from solders.pubkey import Pubkey

LAMPORTS_PER_SIGNATURE = 5_000
COMPUTE_BUDGET = Pubkey.from_string("ComputeBudget111111111111111111111111111111")
DEFAULT_UNITS_PER_INSTRUCTION = 200_000
# Without a SetComputeUnitLimit, the runtime reserves 200,000 units per program instruction but only
# 3,000 per builtin one (System, ComputeBudget itself, loaders, ...); the priority fee is priced on that.
DEFAULT_UNITS_PER_BUILTIN_INSTRUCTION = 3_000
BUILTINS = {Pubkey.from_string(k) for k in (
    "11111111111111111111111111111111", "ComputeBudget111111111111111111111111111111",
    "Vote111111111111111111111111111111111111111", "Stake11111111111111111111111111111111111111",
    "Config1111111111111111111111111111111111111", "BPFLoader1111111111111111111111111111111111",
    "BPFLoader2111111111111111111111111111111111", "BPFLoaderUpgradeab1e11111111111111111111111",
    "LoaderV411111111111111111111111111111111111", "AddressLookupTab1e1111111111111111111111111",
    "Ed25519SigVerify111111111111111111111111111", "KeccakSecp256k11111111111111111111111111111",
    "Secp256r1SigVerify1111111111111111111111111")}
MAX_UNITS = 1_400_000
_SET_LIMIT, _SET_PRICE = 2, 3


def compute_budget(msg: Message | MessageV0) -> tuple[int, int]:
    """(compute-unit limit, price in micro-lamports per unit) that the message's instructions set."""
    keys = list(msg.account_keys)
    limit: int | None = None
    price = 0
    default = 0
    for ix in msg.instructions:
        program = keys[ix.program_id_index]
        default += DEFAULT_UNITS_PER_BUILTIN_INSTRUCTION if program in BUILTINS else DEFAULT_UNITS_PER_INSTRUCTION
        if program != COMPUTE_BUDGET:
            continue
        data = bytes(ix.data)
        if data[:1] == bytes([_SET_LIMIT]) and len(data) >= 5:
            limit = int.from_bytes(data[1:5], "little")
        elif data[:1] == bytes([_SET_PRICE]) and len(data) >= 9:
            price = int.from_bytes(data[1:9], "little")
    if limit is None:
        limit = default
    return min(limit, MAX_UNITS), price


def priority_fee(msg: Message | MessageV0) -> int:
    limit, price = compute_budget(msg)
    return -(-limit * price // 1_000_000)


def fee_for(msg: Message | MessageV0) -> int:
    return LAMPORTS_PER_SIGNATURE * msg.header.num_required_signatures + priority_fee(msg)


def writable(msg: Message | MessageV0) -> list[bool]:
    """Whether each static account key is writable, from the message header."""
    h = msg.header
    n = len(msg.account_keys)
    signed, ro_signed, ro_unsigned = h.num_required_signatures, h.num_readonly_signed_accounts, \
        h.num_readonly_unsigned_accounts
    return [i < signed - ro_signed if i < signed else i < n - ro_unsigned for i in range(n)]
