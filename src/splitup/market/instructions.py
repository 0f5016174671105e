"""Instruction builders: one function per program instruction, accounts in the order the program reads them.

Each returns a ``solders.instruction.Instruction``; none signs or sends anything. Argument bytes come
from the layouts in ``splitup.market.layout``, the same declarations the C header is generated from.
"""

from __future__ import annotations

from collections.abc import Sequence

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM
from solders.sysvar import INSTRUCTIONS, SLOT_HASHES

from splitup.market.calls import Opening
from splitup.market.constants import MAX_SPECIALIZED, Ix
from splitup.market.layout import (
    AcceptArgs,
    AddModelTasksArgs,
    AmountArgs,
    ArbitrateArgs,
    CommitArgs,
    HandoffArgs,
    HashArgs,
    HeartbeatArgs,
    InitConfigArgs,
    ModelTask,
    PostJobArgs,
    Record,
    RegisterModelArgs,
    RegisterNodeArgs,
    SecretArgs,
    SpecializeArgs,
    TaskArgs,
    VerdictArgs,
)
from splitup.market.pda import config_pda, escrow_pda, job_pda, model_pda, node_pda


def _w(key: Pubkey, signer: bool = False) -> AccountMeta:
    return AccountMeta(key, signer, True)


def _r(key: Pubkey, signer: bool = False) -> AccountMeta:
    return AccountMeta(key, signer, False)


def _ix(pid: Pubkey, tag: Ix, accounts: list[AccountMeta], args: Record | None = None, tail: bytes = b"") -> Instruction:
    return Instruction(pid, bytes([tag]) + (args.encode() if args else b"") + tail, accounts)


def init_config(pid: Pubkey, authority: Pubkey, params: InitConfigArgs) -> Instruction:
    return _ix(pid, Ix.INIT_CONFIG, [_w(authority, True), _w(config_pda(pid)), _r(SYSTEM_PROGRAM)], params)


def set_config(pid: Pubkey, authority: Pubkey, params: InitConfigArgs) -> Instruction:
    return _ix(pid, Ix.SET_CONFIG, [_r(authority, True), _w(config_pda(pid))], params)


def collect_fees(pid: Pubkey, authority: Pubkey, destination: Pubkey, amount: int) -> Instruction:
    return _ix(pid, Ix.COLLECT_FEES, [_r(authority, True), _w(config_pda(pid)), _w(destination)],
               AmountArgs(amount=amount))


def register_model(pid: Pubkey, owner: Pubkey, model_hash: bytes, task_count: int,
                   entries: Sequence[ModelTask] = ()) -> Instruction:
    return _ix(pid, Ix.REGISTER_MODEL,
               [_w(owner, True), _w(model_pda(pid, owner, model_hash)), _r(SYSTEM_PROGRAM)],
               RegisterModelArgs(model_hash=model_hash, task_count=task_count),
               b"".join(e.encode() for e in entries))


def add_model_tasks(pid: Pubkey, owner: Pubkey, model: Pubkey, start: int, entries: Sequence[ModelTask]) -> Instruction:
    return _ix(pid, Ix.ADD_MODEL_TASKS, [_r(owner, True), _w(model)], AddModelTasksArgs(start=start),
               b"".join(e.encode() for e in entries))


def register_node(pid: Pubkey, owner: Pubkey, stake: int, vram: int, engines: int, endpoint: str) -> Instruction:
    raw = endpoint.encode()
    if len(raw) > 64:
        raise ValueError(f"endpoint is {len(raw)} bytes; at most 64")
    return _ix(pid, Ix.REGISTER_NODE,
               [_w(owner, True), _w(node_pda(pid, owner)), _r(config_pda(pid)), _r(SYSTEM_PROGRAM)],
               RegisterNodeArgs(stake=stake, vram=vram, engines=engines, endpoint=raw.ljust(64, b"\0")))


def heartbeat(pid: Pubkey, owner: Pubkey, free_sessions: int, engines: int, version: int) -> Instruction:
    return _ix(pid, Ix.HEARTBEAT, [_r(owner, True), _w(node_pda(pid, owner))],
               HeartbeatArgs(free_sessions=free_sessions, engines=engines, version=version))


def add_stake(pid: Pubkey, owner: Pubkey, amount: int) -> Instruction:
    return _ix(pid, Ix.ADD_STAKE, [_w(owner, True), _w(node_pda(pid, owner)), _r(SYSTEM_PROGRAM)],
               AmountArgs(amount=amount))


def begin_unstake(pid: Pubkey, owner: Pubkey, amount: int) -> Instruction:
    return _ix(pid, Ix.BEGIN_UNSTAKE, [_r(owner, True), _w(node_pda(pid, owner)), _r(config_pda(pid))],
               AmountArgs(amount=amount))


def withdraw(pid: Pubkey, owner: Pubkey) -> Instruction:
    return _ix(pid, Ix.WITHDRAW, [_w(owner, True), _w(node_pda(pid, owner))])


def specialize(pid: Pubkey, owner: Pubkey, task_ids: Sequence[bytes]) -> Instruction:
    if len(task_ids) > MAX_SPECIALIZED or any(len(t) != 32 for t in task_ids):
        raise ValueError(f"at most {MAX_SPECIALIZED} task ids of 32 bytes each")
    return _ix(pid, Ix.SPECIALIZE, [_r(owner, True), _w(node_pda(pid, owner))],
               SpecializeArgs(count=len(task_ids)), b"".join(task_ids))


def post_job(pid: Pubkey, client: Pubkey, model: Pubkey, nonce: int, max_fee: int, input_hash: bytes,
             deadline_slots: int, task_timeout_slots: int, secret_hash: bytes = bytes(32)) -> Instruction:
    """``secret_hash``: sha256 of the client's 32-byte draw secret (``reveal_secret`` opens it)."""
    job = job_pda(pid, client, nonce)
    return _ix(pid, Ix.POST_JOB,
               [_w(client, True), _w(job), _w(escrow_pda(pid, job)), _r(model), _r(config_pda(pid)),
                _r(SYSTEM_PROGRAM)],
               PostJobArgs(nonce=nonce, max_fee=max_fee, deadline_slots=deadline_slots,
                           task_timeout_slots=task_timeout_slots, input_hash=input_hash, secret_hash=secret_hash))


def accept_task(pid: Pubkey, owner: Pubkey, job: Pubkey, model: Pubkey, index: int, collateral: int = 0) -> Instruction:
    """``collateral`` 0 locks the minimum for the task's price; more lowers its sampling rate."""
    return _ix(pid, Ix.ACCEPT_TASK,
               [_r(owner, True), _w(node_pda(pid, owner)), _w(job), _r(config_pda(pid)), _r(model)],
               AcceptArgs(index=index, collateral=collateral))


def receive_input(pid: Pubkey, owner: Pubkey, job: Pubkey, index: int, input_hash: bytes) -> Instruction:
    return _ix(pid, Ix.RECEIVE_INPUT, [_r(owner, True), _r(node_pda(pid, owner)), _w(job)],
               HashArgs(index=index, hash=input_hash))


def commit_result(pid: Pubkey, owner: Pubkey, job: Pubkey, index: int, commitment: bytes,
                  seal: bytes = bytes(32)) -> Instruction:
    """``seal``: sha256 of the executor's work digest (``splitup.verify.digest``); a validator that
    re-executed reveals the same digest."""
    return _ix(pid, Ix.COMMIT_RESULT, [_r(owner, True), _r(node_pda(pid, owner)), _w(job)],
               CommitArgs(index=index, commitment=commitment, seal=seal))


def reveal_secret(pid: Pubkey, client: Pubkey, job: Pubkey, secret: bytes) -> Instruction:
    return _ix(pid, Ix.REVEAL_SECRET, [_r(client, True), _w(job)], SecretArgs(secret=secret))


def sample(pid: Pubkey, job: Pubkey, index: int) -> Instruction:
    return _ix(pid, Ix.SAMPLE, [_w(job), _r(SLOT_HASHES)], TaskArgs(index=index))


def release_task(pid: Pubkey, signer: Pubkey, job: Pubkey, index: int, node: Pubkey) -> Instruction:
    """``signer``: the job's client or the task's node owner; ``node``: the task's node (any node
    account for a task nobody accepted)."""
    return _ix(pid, Ix.RELEASE_TASK, [_r(signer, True), _w(job), _w(node), _w(config_pda(pid))],
               TaskArgs(index=index))


def take_over(pid: Pubkey, client: Pubkey, standin_owner: Pubkey, job: Pubkey, model: Pubkey, index: int,
              failed_node: Pubkey, collateral: int = 0) -> Instruction:
    return _ix(pid, Ix.TAKE_OVER,
               [_r(client, True), _r(standin_owner, True), _w(node_pda(pid, standin_owner)), _w(failed_node),
                _w(job), _w(config_pda(pid)), _r(model)],
               AcceptArgs(index=index, collateral=collateral))


def prove_receipt(pid: Pubkey, job: Pubkey, index: int, node: Pubkey, digest: bytes) -> Instruction:
    """Follows the Ed25519 check of the node owner's receipt (``splitup.market.evidence``)."""
    return _ix(pid, Ix.PROVE_RECEIPT, [_w(job), _r(node), _r(INSTRUCTIONS)], HashArgs(index=index, hash=digest))


def prove_handoff(pid: Pubkey, job: Pubkey, index: int, node: Pubkey, digest: bytes, opening: Opening,
                  validator: Pubkey | None = None) -> Instruction:
    """Follows the Ed25519 check of the sender owner's hand-off of call ``opening.call`` with ``digest``;
    ``opening`` opens the sender's commitment at that call (``splitup.market.calls``); ``validator``: the
    task's validator node if one took it up (otherwise the sender's node is passed again)."""
    return _ix(pid, Ix.PROVE_HANDOFF,
               [_w(job), _w(node), _w(config_pda(pid)), _r(INSTRUCTIONS), _w(validator or node)],
               HandoffArgs(index=index, call=opening.call, count=opening.count, digest=digest,
                           committed=opening.committed, body=opening.body), b"".join(opening.path))


def assign_validator(pid: Pubkey, owner: Pubkey, job: Pubkey, model: Pubkey, index: int) -> Instruction:
    """``model`` is the job's model account: the validator node must hold (specialise in) the task's id."""
    return _ix(pid, Ix.ASSIGN_VALIDATOR,
               [_r(owner, True), _w(node_pda(pid, owner)), _w(job), _r(config_pda(pid)), _r(model)],
               TaskArgs(index=index))


def submit_verdict(pid: Pubkey, owner: Pubkey, job: Pubkey, index: int, agree: bool, result_hash: bytes) -> Instruction:
    return _ix(pid, Ix.SUBMIT_VERDICT, [_r(owner, True), _r(node_pda(pid, owner)), _w(job)],
               VerdictArgs(index=index, agree=int(agree), result_hash=result_hash))


def arbitrate(pid: Pubkey, authority: Pubkey, job: Pubkey, index: int, node_honest: bool) -> Instruction:
    return _ix(pid, Ix.ARBITRATE, [_r(authority, True), _r(config_pda(pid)), _w(job)],
               ArbitrateArgs(index=index, node_honest=int(node_honest)))


def settle(pid: Pubkey, job: Pubkey, index: int, node: Pubkey, node_owner: Pubkey,
           validator: Pubkey | None = None, validator_owner: Pubkey | None = None) -> Instruction:
    """``validator``/``validator_owner`` only for a validated task; otherwise the node is passed again."""
    v, vo = (validator, validator_owner) if validator and validator_owner else (node, node_owner)
    return _ix(pid, Ix.SETTLE,
               [_w(job), _w(escrow_pda(pid, job)), _w(config_pda(pid)), _w(node), _w(node_owner), _w(v), _w(vo)],
               TaskArgs(index=index))


def expire(pid: Pubkey, job: Pubkey, index: int, late_node: Pubkey) -> Instruction:
    return _ix(pid, Ix.EXPIRE, [_w(job), _w(config_pda(pid)), _w(late_node)], TaskArgs(index=index))


def close_job(pid: Pubkey, client: Pubkey, job: Pubkey) -> Instruction:
    return _ix(pid, Ix.CLOSE_JOB, [_w(client, True), _w(job), _w(escrow_pda(pid, job))])
