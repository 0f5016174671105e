"""Numbers the program and the client must agree on: tags, states, instruction codes, limits, seeds.

Declared once here; ``splitup.market.codegen`` writes them into ``program/layouts.h``.
"""

from __future__ import annotations

from enum import IntEnum

BPS = 10_000
MAX_TASKS = 48
MAX_SPECIALIZED = 8
# No window the config sets may exceed this (about 4.6 days at 400 ms slots): a bad config cannot lock
# funds for good either.
MAX_WINDOW_SLOTS = 1_000_000
DEFAULT_VERIFY_RATE_BPS = 800
# 15 minutes at 400 ms slots: three of a node's default 5-minute heartbeats
DEFAULT_HEARTBEAT_WINDOW_SLOTS = 2_250
# bit i of a node's ``engines`` mask: it runs ENGINE_NAMES[i]
ENGINE_NAMES = ("onnxruntime", "tinygrad")

SEED_CONFIG = b"config"
SEED_MODEL = b"model"
SEED_NODE = b"node"
SEED_JOB = b"job"
SEED_ESCROW = b"escrow"
# Domain tags of the signed statements the program checks (splitup.market.evidence): a receipt by the
# receiver of a task's input, a hand-off by the sender of one call's output (v2: the call index is signed).
RECEIPT_DOMAIN = b"splitup-receipt-v1"
HANDOFF_DOMAIN = b"splitup-handoff-v2"
# Domain tags of the commitment's call tree (splitup.market.calls): a leaf per call, and the commitment
# over (call count, tree root, salted transcript hash) that the program opens in prove_handoff.
CALL_DOMAIN = b"splitup-call-v1"
COMMIT_DOMAIN = b"splitup-commit-v2"
# Calls one committed task may hold (splitup.verify.transcript.MAX_STEPS): the tree is at most 12 deep.
MAX_CALLS = 4096
MAX_CALL_DEPTH = 12
# A job's nonce names the slot it was made at (nonce >> NONCE_SLOT_SHIFT; the low bits are the client's to
# vary). post_job refuses a nonce more than NONCE_SLOTS old (a transaction's blockhash lives about that
# long) or from the future, and close_job waits until the nonce is that old: so a job's address is never
# posted twice, and a statement signed for one job can never be replayed against another at its address.
NONCE_SLOT_SHIFT = 24
NONCE_SLOTS = 150


class AccountTag(IntEnum):
    CONFIG = 1
    MODEL = 2
    NODE = 3
    JOB = 4


class TaskStatus(IntEnum):
    OPEN = 0  # waiting for a node
    ACCEPTED = 1  # a node locked collateral and is computing
    COMMITTED = 2  # the node committed sha256(output); waiting for the draw
    SAMPLED = 3  # drawn for verification; waiting for a validator
    VALIDATING = 4  # a validator is re-executing
    DISPUTED = 5  # the validator disagreed; waiting for the arbiter
    READY = 6  # not drawn, or the validator agreed: payable
    RESOLVED = 7  # the arbiter decided; payable or slashable
    SETTLED = 8  # paid; terminal
    FAILED = 9  # the node cheated and was slashed; terminal, its price goes back to the client
    RELEASED = 10  # never fed (or given up): unpaid, its price goes back to the client; terminal


class Verdict(IntEnum):
    NONE = 0
    AGREE = 1
    DISAGREE = 2


class Arbitration(IntEnum):
    NONE = 0
    NODE_HONEST = 1
    NODE_CHEATED = 2


class Ix(IntEnum):
    INIT_CONFIG = 0
    SET_CONFIG = 1
    REGISTER_MODEL = 2
    ADD_MODEL_TASKS = 3
    REGISTER_NODE = 4
    ADD_STAKE = 5
    BEGIN_UNSTAKE = 6
    WITHDRAW = 7
    SPECIALIZE = 8
    POST_JOB = 9
    ACCEPT_TASK = 10
    COMMIT_RESULT = 11
    SAMPLE = 12
    ASSIGN_VALIDATOR = 13
    SUBMIT_VERDICT = 14
    ARBITRATE = 15
    SETTLE = 16
    EXPIRE = 17
    CLOSE_JOB = 18
    COLLECT_FEES = 19
    REVEAL_SECRET = 20
    RECEIVE_INPUT = 21
    RELEASE_TASK = 22
    TAKE_OVER = 23
    HEARTBEAT = 24
    PROVE_RECEIPT = 25
    PROVE_HANDOFF = 26


class ErrorCode(IntEnum):
    """``Custom(n)`` codes the program returns; ``splitup.market.errors`` maps each to an exception."""

    INVALID_INSTRUCTION = 1
    NOT_ENOUGH_ACCOUNTS = 2
    MISSING_SIGNATURE = 3
    WRONG_OWNER = 4
    BAD_PDA = 5
    NOT_WRITABLE = 6
    ALREADY_INITIALIZED = 7
    WRONG_ACCOUNT_TYPE = 8
    OVERFLOW = 9
    INSUFFICIENT_STAKE = 10
    INSUFFICIENT_FEE = 11
    BAD_TASK_INDEX = 12
    WRONG_TASK_STATE = 13
    UNAUTHORIZED = 14
    STILL_BONDING = 15
    NOTHING_TO_WITHDRAW = 16
    TOO_EARLY = 17
    SELF_VALIDATION = 18
    VRAM_TOO_SMALL = 19
    MODEL_INCOMPLETE = 20
    TOO_MANY_TASKS = 21
    JOB_NOT_FINISHED = 22
    BAD_SYSVAR = 23
    ESCROW_EXHAUSTED = 24
    INVALID_PARAMETER = 25
    WRONG_NODE = 26
    TOO_LATE = 27
    BAD_PROGRAM = 28
    NOT_SPECIALIZED = 29
    WINDOW_TOO_LONG = 30
    BAD_SECRET = 31
    NOT_DRAWN = 32
    INPUT_RECEIVED = 33
    BAD_EVIDENCE = 34
    NO_MISMATCH = 35
    STALE_HEARTBEAT = 36
    BAD_OPENING = 37
    STALE_NONCE = 38
