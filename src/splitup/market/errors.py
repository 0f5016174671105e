"""Typed errors of the marketplace: every ``Custom(n)`` the program returns becomes one exception class."""

from __future__ import annotations

import re

from splitup.errors import SplitUpError
from splitup.market.constants import ErrorCode


class MarketError(SplitUpError):
    """A marketplace operation failed. ``logs`` holds the program's log lines when known; ``instruction``
    the index of the instruction that failed in its transaction, when the runtime said."""

    code: ErrorCode | None = None

    def __init__(self, message: str, logs: list[str] | None = None, instruction: int | None = None) -> None:
        super().__init__(message)
        self.logs = logs or []
        self.instruction = instruction


class TransactionFailed(MarketError):
    """Refused by the runtime or another program (not one of our own error codes)."""


class InvalidSignatureError(TransactionFailed):
    """The Ed25519 precompile refused a signed statement: forged, or not over the bytes given."""


class ProgramError(MarketError):
    """Base of the errors our program returns as ``Custom(code)``."""


class InvalidInstructionError(ProgramError):
    """Unknown instruction tag or malformed instruction data."""

    code = ErrorCode.INVALID_INSTRUCTION


class NotEnoughAccountsError(ProgramError):
    """The instruction was given fewer accounts than it needs."""

    code = ErrorCode.NOT_ENOUGH_ACCOUNTS


class MissingSignatureError(ProgramError):
    """An account that must sign did not."""

    code = ErrorCode.MISSING_SIGNATURE


class WrongOwnerError(ProgramError):
    """An account is not owned by the program that should own it."""

    code = ErrorCode.WRONG_OWNER


class BadPdaError(ProgramError):
    """An account is not at the address its seeds derive."""

    code = ErrorCode.BAD_PDA


class NotWritableError(ProgramError):
    """An account that is written was passed read-only."""

    code = ErrorCode.NOT_WRITABLE


class AlreadyInitializedError(ProgramError):
    """The account to create already exists."""

    code = ErrorCode.ALREADY_INITIALIZED


class WrongAccountTypeError(ProgramError):
    """The account holds another kind of record (or is too small for it)."""

    code = ErrorCode.WRONG_ACCOUNT_TYPE


class ArithmeticOverflowError(ProgramError):
    """An amount would overflow (or underflow) a u64."""

    code = ErrorCode.OVERFLOW


class InsufficientStakeError(ProgramError):
    """Stake below the minimum, or not enough free stake for the collateral."""

    code = ErrorCode.INSUFFICIENT_STAKE


class InsufficientFeeError(ProgramError):
    """The escrowed fee does not cover every task's price, fee and validator reward."""

    code = ErrorCode.INSUFFICIENT_FEE


class BadTaskIndexError(ProgramError):
    """No such task in this job or model."""

    code = ErrorCode.BAD_TASK_INDEX


class WrongTaskStateError(ProgramError):
    """The task is not in the state this instruction needs (e.g. settle before a verdict)."""

    code = ErrorCode.WRONG_TASK_STATE


class UnauthorizedError(ProgramError):
    """The signer is not the owner or authority of the account."""

    code = ErrorCode.UNAUTHORIZED


class StillBondingError(ProgramError):
    """The unbonding period has not ended yet."""

    code = ErrorCode.STILL_BONDING


class NothingToWithdrawError(ProgramError):
    """No unbonded stake to withdraw."""

    code = ErrorCode.NOTHING_TO_WITHDRAW


class TooEarlyError(ProgramError):
    """Not yet: no slot hash after the commitment, or the deadline has not passed."""

    code = ErrorCode.TOO_EARLY


class SelfValidationError(ProgramError):
    """A node may not validate its own task, and a client may not work on or judge its own job."""

    code = ErrorCode.SELF_VALIDATION


class VramTooSmallError(ProgramError):
    """The node declares less VRAM than the task needs."""

    code = ErrorCode.VRAM_TOO_SMALL


class ModelIncompleteError(ProgramError):
    """The model's task list is not complete yet."""

    code = ErrorCode.MODEL_INCOMPLETE


class TooManyTasksError(ProgramError):
    """More tasks than declared, or more than MAX_TASKS."""

    code = ErrorCode.TOO_MANY_TASKS


class JobNotFinishedError(ProgramError):
    """Tasks are still in flight (or open before the deadline)."""

    code = ErrorCode.JOB_NOT_FINISHED


class BadSysvarError(ProgramError):
    """A sysvar is missing, wrong, or has unexpected contents."""

    code = ErrorCode.BAD_SYSVAR


class EscrowExhaustedError(ProgramError):
    """A payout would exceed what was deposited."""

    code = ErrorCode.ESCROW_EXHAUSTED


class InvalidParameterError(ProgramError):
    """A parameter is out of range."""

    code = ErrorCode.INVALID_PARAMETER


class WrongNodeError(ProgramError):
    """The node or wallet passed is not the one recorded for the task."""

    code = ErrorCode.WRONG_NODE


class TooLateError(ProgramError):
    """The deadline has passed."""

    code = ErrorCode.TOO_LATE


class BadProgramError(ProgramError):
    """A program account (e.g. the System program) is not the expected one."""

    code = ErrorCode.BAD_PROGRAM


class NotSpecializedError(ProgramError):
    """The validator node does not hold (has not specialised in) the task it would check."""

    code = ErrorCode.NOT_SPECIALIZED


class WindowTooLongError(ProgramError):
    """A deadline or timeout longer than the market config allows."""

    code = ErrorCode.WINDOW_TOO_LONG


class BadSecretError(ProgramError):
    """The revealed draw secret does not open the job's committed hash (or was already revealed)."""

    code = ErrorCode.BAD_SECRET


class NotDrawnError(ProgramError):
    """The validator is not (yet) drawn for this task: its turn in the on-chain lottery has not come."""

    code = ErrorCode.NOT_DRAWN


class InputReceivedError(ProgramError):
    """The node receipted its input: the task cannot be released as never fed."""

    code = ErrorCode.INPUT_RECEIVED


class BadEvidenceError(ProgramError):
    """No Ed25519 check of the expected signer over the expected statement precedes the instruction."""

    code = ErrorCode.BAD_EVIDENCE


class NoMismatchError(ProgramError):
    """The signed hand-off is what the sender committed for that call: nothing to slash."""

    code = ErrorCode.NO_MISMATCH


class StaleHeartbeatError(ProgramError):
    """The node's last heartbeat is older than the market's heartbeat window: it is not taken for alive."""

    code = ErrorCode.STALE_HEARTBEAT


class BadOpeningError(ProgramError):
    """The call and Merkle path given with a hand-off do not open the sender's commitment (or the path's
    length is not the depth of the committed call count)."""

    code = ErrorCode.BAD_OPENING


class StaleNonceError(ProgramError):
    """The job's nonce does not name a recent slot (``Market.fresh_nonce``): a job's address is posted once."""

    code = ErrorCode.STALE_NONCE


ERRORS: dict[int, type[ProgramError]] = {int(cls.code): cls for cls in ProgramError.__subclasses__() if cls.code}

_CUSTOM = re.compile(r"Custom\((\d+)\)")
_INSTRUCTION = re.compile(r"InstructionError\W*(\d+)")


def error_from(err: object, logs: list[str] | None = None) -> MarketError:
    """Map a runtime error (a solders TransactionError, an RPC error text, ...) to a typed error."""
    text = str(err)
    at = _INSTRUCTION.search(text)
    index = int(at.group(1)) if at else None
    m = _CUSTOM.search(text)
    if m and int(m.group(1)) in ERRORS:
        cls = ERRORS[int(m.group(1))]
        return cls(f"{cls.__doc__} (Custom({m.group(1)}))", logs, index)
    return TransactionFailed(text, logs, index)
