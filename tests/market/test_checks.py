"""Every check refuses when broken: signers, owners, PDAs, states, self-dealing, overflow, escrow limits."""

from __future__ import annotations

import pytest
from market_world import PRICES, SOL, World, h, make_world
from solders.account import Account
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM
from solders.system_program import TransferParams, transfer
from solders.sysvar import CLOCK

from splitup.market import errors as E
from splitup.market import instructions as ix
from splitup.market.constants import TaskStatus
from splitup.market.layout import JobHeader, ModelTask
from splitup.market.market import MarketParams


def replace_account(i: Instruction, index: int, key: Pubkey | None = None, signer: bool | None = None) -> Instruction:
    accounts = list(i.accounts)
    a = accounts[index]
    accounts[index] = AccountMeta(key or a.pubkey, a.is_signer if signer is None else signer, a.is_writable)
    return Instruction(i.program_id, bytes(i.data), accounts)


def committed(w: World, index: int = 0) -> Pubkey:
    job = w.post()
    w.run_to_commit(job, index, w.nodes[0])
    return job


def test_missing_signer_is_refused(world: World) -> None:
    w = world
    job = w.post()
    i = replace_account(ix.accept_task(w.m.program_id, w.nodes[0].pubkey(), job, w.model, 0), 0, signer=False)
    with pytest.raises(E.MissingSignatureError):
        w.t.send([i], [w.m.payer])


def test_signer_who_is_not_the_owner_is_refused(world: World) -> None:
    w = world
    job = w.post()
    w.m.accept_task(w.nodes[0], job, 0)
    thief = w.nodes[1]
    # the thief signs, but passes the victim's node account
    i = ix.commit_result(w.m.program_id, thief.pubkey(), job, 0, h("x"))
    i = replace_account(i, 1, key=w.m.node_address(w.nodes[0].pubkey()))
    with pytest.raises(E.UnauthorizedError):
        w.t.send([i], [thief])
    # and with its own node account it is not the task's node
    with pytest.raises(E.WrongNodeError):
        w.m.commit_result(thief, job, 0, h("x"))


def test_account_with_wrong_owner_is_refused(world: World) -> None:
    w = world
    job = w.post()
    victim = w.m.node_address(w.nodes[0].pubkey())
    data = w.t.svm.get_account(victim)
    fake = Pubkey.new_unique()
    w.t.svm.set_account(fake, Account(lamports=data.lamports, data=bytes(data.data), owner=SYSTEM_PROGRAM,
                                      executable=False))
    i = replace_account(ix.accept_task(w.m.program_id, w.nodes[0].pubkey(), job, w.model, 0), 1, key=fake)
    with pytest.raises(E.WrongOwnerError):
        w.t.send([i], [w.nodes[0]])


def test_forged_pda_is_refused(world: World) -> None:
    w = world
    job = w.post()
    # a perfect copy of a node record, owned by the program, but not at its PDA
    real = w.t.svm.get_account(w.m.node_address(w.nodes[0].pubkey()))
    forged = Pubkey.new_unique()
    w.t.svm.set_account(forged, Account(lamports=real.lamports, data=bytes(real.data), owner=w.m.program_id,
                                        executable=False))
    i = replace_account(ix.accept_task(w.m.program_id, w.nodes[0].pubkey(), job, w.model, 0), 1, key=forged)
    with pytest.raises(E.BadPdaError):
        w.t.send([i], [w.nodes[0]])
    # creating a node at an address that is not its PDA
    newcomer = Keypair()
    w.t.airdrop(newcomer.pubkey(), 10 * SOL)
    i = replace_account(ix.register_node(w.m.program_id, newcomer.pubkey(), 2 * SOL, 1, 1, ""), 1,
                        key=Pubkey.new_unique())
    with pytest.raises(E.BadPdaError):
        w.t.send([i], [newcomer])


def test_wrong_sysvar_and_wrong_system_program_are_refused(world: World) -> None:
    w = world
    job = committed(w)
    i = replace_account(ix.sample(w.m.program_id, job, 0), 1, key=CLOCK)
    with pytest.raises(E.BadSysvarError):
        w.t.send([i], [w.m.payer])
    i = replace_account(ix.add_stake(w.m.program_id, w.nodes[0].pubkey(), SOL), 2, key=CLOCK)
    with pytest.raises(E.BadProgramError):
        w.t.send([i], [w.nodes[0]])


def test_committing_twice_is_refused(world: World) -> None:
    w = world
    job = committed(w)
    with pytest.raises(E.WrongTaskStateError):
        w.m.commit_result(w.nodes[0], job, 0, h("another output"))


def test_settle_before_verdict_and_double_settle_are_refused(always_verify: World) -> None:
    w = always_verify
    m = w.m
    job = committed(w)
    with pytest.raises(E.WrongTaskStateError):  # committed, not drawn
        m.settle(job, 0)
    m.sample(job, 0)
    with pytest.raises(E.WrongTaskStateError):  # drawn, no validator
        m.settle(job, 0)
    m.assign_validator(w.nodes[1], job, 0)
    with pytest.raises(E.WrongTaskStateError):  # validating
        m.settle(job, 0)
    m.submit_verdict(w.nodes[1], job, 0, False, h("other"))
    with pytest.raises(E.WrongTaskStateError):  # disputed, not arbitrated
        m.settle(job, 0)
    m.arbitrate(w.authority, job, 0, node_honest=True)
    m.settle(job, 0)
    paid = m.job(job).header.paid
    with pytest.raises(E.WrongTaskStateError):
        m.settle(job, 0)
    assert m.job(job).header.paid == paid


def test_validator_may_not_judge_its_own_task_nor_the_client(always_verify: World) -> None:
    w = always_verify
    m = w.m
    w.t.airdrop(w.client.pubkey(), 10 * SOL)
    m.register_node(w.client, 2 * SOL, vram=24 << 30)
    job = committed(w)
    m.sample(job, 0)
    with pytest.raises(E.SelfValidationError):
        m.assign_validator(w.nodes[0], job, 0)
    with pytest.raises(E.SelfValidationError):
        m.assign_validator(w.client, job, 0)
    with pytest.raises(E.SelfValidationError):  # nor work on its own job
        m.accept_task(w.client, job, 1)


def test_validator_must_hold_the_task(always_verify: World) -> None:
    """A staked, eligible node that does not specialise in the task is refused; one holding it is assigned."""
    w = always_verify
    m = w.m
    job = committed(w, index=1)
    m.sample(job, 1)
    task1 = m.model(w.model).tasks[1].task_id
    m.specialize(w.nodes[1], [h("task0"), h("task2")])  # other tasks of the model, not task 1
    m.specialize(w.nodes[2], [h("elsewhere"), task1])
    with pytest.raises(E.NotSpecializedError):
        m.assign_validator(w.nodes[1], job, 1)
    m.specialize(w.nodes[1], [])
    with pytest.raises(E.NotSpecializedError):  # nor a node that declares nothing
        m.assign_validator(w.nodes[1], job, 1)
    assert m.node(w.nodes[1].pubkey()).locked == 0 and m.job(job).tasks[1].status == TaskStatus.SAMPLED
    m.assign_validator(w.nodes[2], job, 1)
    t = m.job(job).tasks[1]
    assert t.status == TaskStatus.VALIDATING and t.validator == m.node_address(w.nodes[2].pubkey())


def test_assign_validator_needs_the_jobs_model(always_verify: World) -> None:
    w = always_verify
    m = w.m
    job = committed(w)
    m.sample(job, 0)
    ids = [task.task_id for task in m.model(w.model).tasks]
    other = m.register_model(w.client, h("another model"), [ModelTask(task_id=t, vram=1, price=1) for t in ids])
    assert other.address is not None
    with pytest.raises(E.WrongAccountTypeError):
        w.t.send([ix.assign_validator(m.program_id, w.nodes[1].pubkey(), job, other.address, 0)], [w.nodes[1]])
    with pytest.raises(E.WrongAccountTypeError):  # not a model account at all
        w.t.send([ix.assign_validator(m.program_id, w.nodes[1].pubkey(), job, job, 0)], [w.nodes[1]])
    m.assign_validator(w.nodes[1], job, 0)


def test_only_the_assigned_validator_and_the_arbiter_decide(always_verify: World) -> None:
    w = always_verify
    m = w.m
    job = committed(w)
    m.sample(job, 0)
    m.assign_validator(w.nodes[1], job, 0)
    with pytest.raises(E.WrongNodeError):
        m.submit_verdict(w.nodes[2], job, 0, True, h("output"))
    m.submit_verdict(w.nodes[1], job, 0, False, h("other"))
    with pytest.raises(E.UnauthorizedError):
        m.arbitrate(w.nodes[2], job, 0, node_honest=False)


def test_settle_cannot_redirect_payment(never_verify: World) -> None:
    w = never_verify
    job = committed(w)
    w.ready(job, 0)
    node = w.m.node_address(w.nodes[0].pubkey())
    thief = w.nodes[1].pubkey()
    w.t.advance(w.params.handoff_slots + 1)  # past the hand-off window: the accounts are what is refused
    i = ix.settle(w.m.program_id, job, 0, node, thief)
    with pytest.raises(E.WrongNodeError):
        w.t.send([i], [w.m.payer])


def test_escrow_never_pays_more_than_deposited(never_verify: World) -> None:
    w = never_verify
    job = committed(w)
    w.ready(job, 0)
    # pretend everything was already paid out: the next payout must be refused, not overdraw
    acc = w.t.svm.get_account(job)
    data = bytearray(acc.data)
    hdr = JobHeader.decode(bytes(data))
    hdr.paid = hdr.deposit
    data[: JobHeader.size()] = hdr.encode()
    w.t.svm.set_account(job, Account(lamports=acc.lamports, data=bytes(data), owner=acc.owner, executable=False))
    with pytest.raises(E.EscrowExhaustedError):
        w.m.settle(job, 0)


def test_fee_too_small_and_overflowing_amounts_are_refused() -> None:
    w = make_world(n_nodes=1)
    m = w.m
    with pytest.raises(E.InsufficientFeeError):
        w.post(max_fee=m.required_fee(w.model) - 1)
    huge = [ModelTask(task_id=h(f"t{i}"), vram=1, price=2**63) for i in range(2)]
    model = m.register_model(w.client, h("huge"), huge).address
    assert model is not None
    with pytest.raises(E.ArithmeticOverflowError):
        m.post_job(w.client, model, h("in"), max_fee=2**64 - 1)
    with pytest.raises(E.ArithmeticOverflowError):
        m.add_stake(w.nodes[0], 2**64 - 1)


def test_stake_and_vram_requirements(world: World) -> None:
    w = world
    m = w.m
    poor = Keypair()
    w.t.airdrop(poor.pubkey(), 10 * SOL)
    with pytest.raises(E.InsufficientStakeError):
        m.register_node(poor, w.params.min_stake - 1, vram=24 << 30)
    m.register_node(poor, w.params.min_stake, vram=1 << 30)
    job = w.post()
    with pytest.raises(E.VramTooSmallError):
        m.accept_task(poor, job, 0)
    m.begin_unstake(w.nodes[0], SOL + 1)  # now below the minimum stake
    with pytest.raises(E.InsufficientStakeError):
        m.accept_task(w.nodes[0], job, 0)
    m.accept_task(w.nodes[1], job, 0)
    with pytest.raises(E.InsufficientStakeError):  # cannot unstake locked collateral
        m.begin_unstake(w.nodes[1], 2 * SOL)
    with pytest.raises(E.NothingToWithdrawError):
        m.withdraw(w.nodes[2])


def test_reused_nonce_wrong_model_and_closed_job(never_verify: World) -> None:
    w = never_verify
    m = w.m
    nonce = m.fresh_nonce()
    job = w.post(nonce=nonce)
    with pytest.raises(E.AlreadyInitializedError):
        w.post(nonce=nonce)
    other = m.register_model(w.client, h("other model"), [ModelTask(task_id=h("x"), vram=1, price=1)]).address
    assert other is not None
    i = ix.accept_task(m.program_id, w.nodes[0].pubkey(), job, other, 0)
    with pytest.raises(E.WrongAccountTypeError):
        w.t.send([i], [w.nodes[0]])
    with pytest.raises(E.JobNotFinishedError):  # open tasks before the deadline
        m.close_job(w.client, job)
    for i_ in range(len(PRICES)):
        w.run_to_commit(job, i_, w.nodes[i_])
        w.ready(job, i_)
        m.settle(job, i_)
    with pytest.raises(E.UnauthorizedError):
        m.close_job(w.nodes[0], job)
    m.close_job(w.client, job)
    with pytest.raises(E.WrongOwnerError):  # closed: the account is gone, no second refund
        m.close_job(w.client, job)


def test_invalid_config_and_unknown_instruction() -> None:
    with pytest.raises(E.InvalidParameterError):
        make_world(MarketParams(verify_rate_bps=10_001))
    w = make_world(n_nodes=0)
    with pytest.raises(E.InvalidInstructionError):
        w.t.send([Instruction(w.m.program_id, bytes([200]), [])], [w.m.payer])
    with pytest.raises(E.NotEnoughAccountsError):
        w.t.send([Instruction(w.m.program_id, bytes([16]) + bytes(8), [])], [w.m.payer])
    with pytest.raises(E.AlreadyInitializedError):
        w.m.init_config(w.client)


def test_prefunded_addresses_cannot_block_registration_or_jobs(world: World) -> None:
    """Sending lamports to a future PDA must not stop its creation (CreateAccount alone would refuse)."""
    w = world
    m = w.m
    newcomer = Keypair()
    w.t.airdrop(newcomer.pubkey(), 10 * SOL)
    griefer = w.nodes[2]
    node = m.node_address(newcomer.pubkey())
    nonce = m.fresh_nonce()
    job = m.job_address(w.client.pubkey(), nonce)
    rent = w.t.svm.minimum_balance_for_rent_exemption
    for target in (node, job, m.escrow_address(job)):
        w.t.send([transfer(TransferParams(from_pubkey=griefer.pubkey(), to_pubkey=target, lamports=rent(0)))],
                 [griefer])
    m.register_node(newcomer, 2 * SOL, vram=1 << 34)
    assert m.node(newcomer.pubkey()).stake == 2 * SOL
    assert w.t.balance(node) == rent(len(m.node(newcomer.pubkey()).encode())) + 2 * SOL
    w.post(nonce=nonce)
    assert m.job(job).header.deposit == m.required_fee(w.model)
    assert w.t.balance(m.escrow_address(job)) == rent(0) + m.required_fee(w.model)


def test_incomplete_model_cannot_be_used_and_only_its_owner_extends_it(world: World) -> None:
    w = world
    pid = w.m.program_id
    entries = [ModelTask(task_id=h(f"p{i}"), vram=1, price=5) for i in range(3)]
    w.t.send([ix.register_model(pid, w.client.pubkey(), h("partial"), 3, entries[:1])], [w.client])
    model = w.m.model_address(w.client.pubkey(), h("partial"))
    with pytest.raises(E.ModelIncompleteError):
        w.m.post_job(w.client, model, h("in"), max_fee=10**9)
    with pytest.raises(E.UnauthorizedError):
        w.t.send([ix.add_model_tasks(pid, w.nodes[0].pubkey(), model, 1, entries[1:])], [w.nodes[0]])
    with pytest.raises(E.BadTaskIndexError):  # append-only: no rewriting of priced entries
        w.t.send([ix.add_model_tasks(pid, w.client.pubkey(), model, 0, entries[:1])], [w.client])
    w.t.send([ix.add_model_tasks(pid, w.client.pubkey(), model, 1, entries[1:])], [w.client])
    assert w.m.model(model).complete
    with pytest.raises(E.TooManyTasksError):
        w.t.send([ix.add_model_tasks(pid, w.client.pubkey(), model, 3, entries[:1])], [w.client])
