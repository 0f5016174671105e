"""The PoSP protocol end to end in one process: LiteSVM market, onnxruntime nodes, a local blob store.

A tiny LLaMA split into 3 tasks generates a few tokens; each task's node records every call, commits,
and is sampled on chain; validators re-execute; disputes go to the arbiter; everything is settled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splitup.market import MarketParams
from splitup.market.constants import TaskStatus
from splitup.market.market import task_reward
from splitup.runtime.local import LocalPipeline
from splitup.verify.cheats import Behaviour, perturb, skip_layers, zeros
from splitup.verify.sandbox import FEE_PER_SIGNATURE, PRICE, ProtocolWorld, make_world, prompt, write_plan

ALWAYS = MarketParams.flat(10_000)
NEVER = MarketParams.flat(0)


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan")
    assert len(write_plan(out).tasks) == 3
    return out


def world(plan_dir: Path, tmp_path: Path, params: MarketParams, **kw) -> ProtocolWorld:
    return make_world(plan_dir, tmp_path / "store", params, **kw)


def test_honest_job_all_sampled_all_agree_paid_and_conserved(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path, ALWAYS)
    total, sigs = w.total_lamports(), w.t.signatures
    stakes = [w.stake(i) for i in range(len(w.nodes))]
    report = w.runner().run(prompt(), new_tokens=3)
    # the generated tokens are the model's own: the split pipeline run locally gives the same
    pipe = LocalPipeline(plan_dir)
    ids = prompt()["input_ids"]
    expected = []
    for _ in range(3):
        tok = int(np.argmax(pipe.run({"input_ids": ids})["logits"][0, -1]))
        expected.append(tok)
        ids = np.array([[tok]], dtype=np.int64)
    assert report.tokens == expected
    cfg = w.m.config()
    for t in report.tasks:
        assert t.sampled and t.rate_bps == 10_000 and t.calls == 4
        assert t.verdict == "agree", t.reason
        assert t.arbitration is None and t.status == "SETTLED"
        # an agreement that proved re-execution earns max(validator_reward, price x validator_reward_bps)
        assert t.node_paid == PRICE and t.validator_paid == task_reward(cfg.validator_reward,
                                                                        cfg.validator_reward_bps, PRICE)
        assert t.node_slashed == t.validator_slashed == 0
        assert t.validator not in (t.node, report.client)
        assert t.reexecuted_flops == t.executed_flops > 0
    assert [w.stake(i) for i in range(len(w.nodes))] == stakes
    assert w.total_lamports() == total - FEE_PER_SIGNATURE * (w.t.signatures - sigs)


def test_unsampled_tasks_are_paid_without_validation(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path, NEVER)
    total, sigs = w.total_lamports(), w.t.signatures
    report = w.runner().run(prompt(1), new_tokens=1)
    for t in report.tasks:
        if t.sampled:  # base rate 0, but never below the sound rate (about 0.1 % at these prices)
            continue
        assert t.validator is None and t.verdict is None
        assert t.node_paid == PRICE and t.validator_paid == 0 and t.reexecuted_flops == 0
    assert w.total_lamports() == total - FEE_PER_SIGNATURE * (w.t.signatures - sigs)


@pytest.mark.parametrize("cheat", [perturb(0.01), zeros(), skip_layers()], ids=["perturb-1%", "zeros", "skip"])
def test_sampled_cheater_is_slashed_and_the_validator_paid_from_the_slash(plan_dir, tmp_path, cheat):
    w = world(plan_dir, tmp_path, ALWAYS)
    w.executors[1] = w.executor(1, cheat=cheat)
    total, sigs = w.total_lamports(), w.t.signatures
    stake = w.stake(1)
    cfg = w.m.config()
    slash = cfg.task_collateral * cfg.slash_bps // 10_000
    report = w.runner().run(prompt(2), new_tokens=2, nodes=[0, 1, 2])
    cheated = report.tasks[1]
    assert cheated.verdict == "disagree" and "call 0" in cheated.reason
    assert cheated.arbitration == "node cheated" and cheated.arbitration_basis == "reference"
    assert cheated.status == "FAILED"
    assert cheated.node_paid == 0 and cheated.node_slashed == slash
    reward = task_reward(cfg.validator_reward, cfg.validator_reward_bps, PRICE)
    assert cheated.validator_paid == reward + slash and cheated.validator_slashed == 0
    assert w.stake(1) == stake - slash
    assert w.m.node(w.nodes[1].pubkey()).failed == 1
    # the honest nodes around it computed correctly on what they were given: not slashed
    for t in (report.tasks[0], report.tasks[2]):
        assert t.verdict == "agree" and t.status == "SETTLED" and t.node_paid == PRICE
    assert w.total_lamports() == total - FEE_PER_SIGNATURE * (w.t.signatures - sigs)


def test_lying_validator_loses_in_arbitration(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path, ALWAYS)
    w.validators = [w.validator(i, behaviour=Behaviour.LIAR if i == 3 else Behaviour.HONEST)
                    for i in range(len(w.nodes))]
    total, sigs = w.total_lamports(), w.t.signatures
    cfg = w.m.config()
    slash = cfg.task_collateral * cfg.slash_bps // 10_000
    liar_stake = w.stake(3)
    lied = 0
    # the on-chain draw picks the validator; run jobs until the liar has been picked at least once (a round
    # of 3 tasks misses it about half the time: 40 rounds all miss about once in 10^11)
    for seed in range(40):
        report = w.runner().run(prompt(seed), new_tokens=1, nodes=[0, 1, 2])
        for t in report.tasks:
            if t.validator == str(w.nodes[3].pubkey()):
                lied += 1
                assert t.verdict == "disagree"
                assert t.arbitration == "node honest" and t.arbitration_basis == "reference"
                assert t.node_paid == PRICE + slash and t.validator_paid == 0 and t.validator_slashed == slash
            else:
                assert t.verdict == "agree" and t.validator_slashed == 0
            assert t.node_slashed == 0 and t.status == "SETTLED"
        if lied:
            break
    assert lied, "the liar was never drawn as validator"
    assert w.stake(3) == liar_stake - lied * slash
    assert w.total_lamports() == total - FEE_PER_SIGNATURE * (w.t.signatures - sigs)


def test_majority_of_validators_decides_above_the_reference_bound(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path, ALWAYS)
    w.arbiter.reference_max_flops = 0  # every task counts as too large for onnx.reference
    w.executors[1] = w.executor(1, cheat=perturb(0.05))
    w.validators = [w.validator(i, behaviour=Behaviour.LIAR if i == 4 else Behaviour.HONEST)
                    for i in range(len(w.nodes))]
    stakes = [w.stake(i) for i in range(len(w.nodes))]
    seen_liar = seen_cheat = False
    # the on-chain draw picks the validators: run jobs until the liar has checked an honest node. Each
    # round slashes the cheat (and the liar, when it vouches for the cheat), so their stakes are topped
    # up, lest an unlucky draw outlast them (a round misses the liar about two times in three: 40 all miss
    # about once in ten million)
    for seed in range(40):
        for i, stake in enumerate(stakes):
            if w.stake(i) < stake:
                w.m.add_stake(w.nodes[i], stake - w.stake(i))
        report = w.runner().run(prompt(seed), new_tokens=1, nodes=[0, 1, 2])
        for t in report.tasks:
            if t.index == 1:
                assert t.arbitration == "node cheated" and t.arbitration_basis == "majority"
                seen_cheat = True
            elif t.validator == str(w.nodes[4].pubkey()):
                assert t.arbitration == "node honest" and t.arbitration_basis == "majority"
                assert t.validator_slashed > 0
                seen_liar = True
        if seen_liar and seen_cheat:
            break
    assert seen_cheat and seen_liar


def test_lazy_validator_vouches_for_a_planted_wrong_result(plan_dir, tmp_path):
    """Without re-executing, a lazy validator cannot tell a planted wrong result (a trap) from a right
    one: it agrees and the wrong output is paid for. An honest validator rejects the same plant."""
    from splitup.verify.econ import Game, lazy_validator_loses, lazy_validator_profit, trap_rate_min

    w = world(plan_dir, tmp_path, ALWAYS)
    w.executors[0] = w.executor(0, cheat=perturb(0.02))  # the trap planter's decoy
    lazy = [w.validator(i, behaviour=Behaviour.LAZY) for i in range(len(w.nodes))]
    report = w.runner(validators=lazy).run(prompt(3), nodes=[0, 1, 2])
    planted = report.tasks[0]
    assert planted.verdict == "agree" and planted.status == "SETTLED" and planted.node_paid == PRICE
    assert planted.reexecuted_flops == 0
    honest = w.runner().run(prompt(3), nodes=[0, 1, 2]).tasks[0]
    assert honest.verdict == "disagree" and honest.arbitration == "node cheated"
    # With traps at the default rate the lazy strategy loses money in expectation at this market's
    # own lamport amounts (validator reward V, validator slash Sv, re-execution cost Cv << V).
    cfg = w.m.config()
    v_slash = cfg.task_collateral * cfg.slash_bps // 10_000
    game = Game(reward=PRICE, cost=PRICE / 2, slash=v_slash, validator_reward=cfg.validator_reward,
                validator_cost=cfg.validator_reward / 2, validator_slash=v_slash)
    assert game.trap_rate >= trap_rate_min(game)
    assert lazy_validator_profit(game) < 0 and lazy_validator_loses(game)


def test_validator_is_never_the_node_or_the_client(plan_dir, tmp_path):
    from splitup.market.errors import SelfValidationError

    w = world(plan_dir, tmp_path, ALWAYS)
    # the client also runs a node (registered, staked, holding every task) and offers to validate
    w.m.register_node(w.client, 2 * 10**9, vram=1 << 30)
    w.m.specialize(w.client, [bytes.fromhex(t.task_id) for t in w.plan.tasks])
    client_validator = w.validator(0)
    client_validator.owner = w.client
    runner = w.runner(validators=[*w.validators, client_validator])
    report = runner.run(prompt(4), nodes=[0, 1, 2])
    for t in report.tasks:
        assert t.validator not in (t.node, report.client, None)
    # and the program refuses it even when asked directly
    job = w.m.post_job(w.client, w.model, b"\1" * 32).address
    w.executors[0].accept(job, 0)
    w.executors[0].call(job, 0, prompt(5))
    w.executors[0].commit(job, 0)
    w.t.advance(1)
    assert w.m.sample(job, 0)
    assert str(w.nodes[0].pubkey()) not in {str(v.pubkey) for v in runner.validator_candidates(job, 0)}
    assert str(w.client.pubkey()) not in {str(v.pubkey) for v in runner.validator_candidates(job, 0)}
    for owner in (w.nodes[0], w.client):
        with pytest.raises(SelfValidationError):
            w.m.assign_validator(owner, job, 0)


def test_arbiter_falls_back_to_the_majority_when_the_reference_cannot_run(plan_dir, tmp_path, monkeypatch):
    import splitup.verify.roles as roles

    class Broken:
        def __init__(self, bundle):  # noqa: ANN001
            raise NotImplementedError("op not implemented by onnx.reference")

    monkeypatch.setattr(roles, "ReferenceRunner", Broken)
    w = world(plan_dir, tmp_path, ALWAYS)
    w.executors[2] = w.executor(2, cheat=zeros())
    report = w.runner().run(prompt(6), nodes=[0, 1, 2])
    cheated = report.tasks[2]
    assert cheated.arbitration == "node cheated" and cheated.arbitration_basis == "majority"
    assert cheated.node_slashed > 0 and "could not run" in cheated.reason


def test_silent_validator_is_slashed_and_another_takes_the_task_up(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path, ALWAYS)
    total, sigs = w.total_lamports(), w.t.signatures
    job = w.m.post_job(w.client, w.model, b"\3" * 32, task_timeout_slots=400).address
    ex = w.executors[0]
    ex.accept(job, 0)
    ex.call(job, 0, prompt(9))
    ann = ex.commit(job, 0)
    w.t.advance(1)
    assert w.m.sample(job, 0)
    silent_stake = w.stake(1)
    w.m.assign_validator(w.nodes[1], job, 0)  # takes the task up, then never answers
    w.t.advance(w.m.config().validator_timeout_slots + 1)
    w.m.expire(job, 0)
    assert w.stake(1) < silent_stake
    check = w.validators[2].validate(job, 0, ann)
    assert check.agree and check.calls == 1
    w.m.settle(job, 0)
    assert w.m.job(job).tasks[0].status == TaskStatus.SETTLED
    assert w.total_lamports() == total - FEE_PER_SIGNATURE * (w.t.signatures - sigs)


def test_sampled_task_without_any_eligible_validator_is_released_after_its_window(plan_dir, tmp_path):
    w = world(plan_dir, tmp_path, ALWAYS)
    only_node_0 = [w.validators[0]]  # node 0 runs task 0 itself, so task 0 has nobody to check it
    report = w.runner(validators=only_node_0).run(prompt(12), nodes=[0, 1, 2])
    first = report.tasks[0]
    assert first.sampled and first.validator is None and "no validator" in first.reason
    assert first.status == "SETTLED" and first.node_paid == PRICE and first.validator_paid == 0
    assert [t.verdict for t in report.tasks[1:]] == ["agree", "agree"]
