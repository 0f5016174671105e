"""At the real base rate (8 %), the share of tasks re-executed, and of compute re-executed, is near 8 %;
every on-chain draw is the docs/posp.md coin."""

from __future__ import annotations

import math

from splitup.market import MarketParams
from splitup.verify.sampling import BASE_RATE_BPS
from splitup.verify.sandbox import make_world, prompt, write_plan

JOBS = 200


def test_measured_verification_overhead_is_near_the_base_rate(tmp_path):
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir)
    # 0.3 SOL of collateral on a 0.01 SOL task puts the sound rate (3.6 %) under the base rate, which then
    # applies; at the default 0.1 SOL the program would draw these tasks at 10.11 %
    params = MarketParams.flat(BASE_RATE_BPS, task_collateral=3 * 10**8)
    w = make_world(plan_dir, tmp_path / "store", params, n_nodes=4)
    runner = w.runner()
    tasks = sampled = executed = reexecuted = 0
    for seed in range(JOBS):
        report = runner.run(prompt(seed, length=1 + seed % 6), new_tokens=seed % 3)
        for t in report.tasks:
            assert t.rate_bps == BASE_RATE_BPS and t.status == "SETTLED"
            assert t.sampled == (t.draw < t.rate_bps)
            tasks += 1
            sampled += t.sampled
            if t.sampled:
                assert t.verdict == "agree" and t.reexecuted_flops == t.executed_flops
        executed += report.executed_flops
        reexecuted += report.reexecuted_flops
    p = BASE_RATE_BPS / 10_000
    sigma = math.sqrt(p * (1 - p) / tasks)
    share = sampled / tasks
    assert abs(share - p) < 4 * sigma, f"{sampled}/{tasks} sampled"
    # tasks are of similar size, so the compute re-executed tracks the share of tasks sampled
    assert abs(reexecuted / executed - share) < 0.03
    assert abs(reexecuted / executed - p) < 4 * sigma + 0.03


def test_cheater_is_caught_at_the_sampling_rate_and_loses_money(tmp_path):
    """A node that perturbs every output: caught exactly when drawn, at a rate consistent with p; at
    these stakes cheating loses lamports while the honest nodes are never slashed."""
    from splitup.verify.cheats import perturb
    from splitup.verify.sandbox import PRICE, SOL

    plan_dir = tmp_path / "plan"
    write_plan(plan_dir)
    # At 40% the realised loss below is all but certain too: it needs more than 13 of 80 draws, and
    # Bin(80, 0.4) falls that low with probability 4e-6 (at 25% it failed about 1 run in 20).
    rate = 4_000
    w = make_world(plan_dir, tmp_path / "store", MarketParams.flat(rate), n_nodes=4)
    w.executors[1] = w.executor(1, cheat=perturb(0.01, seed=1))
    w.m.add_stake(w.nodes[1], 6 * SOL)  # below the minimum stake a caught cheater could not accept any more
    cfg = w.m.config()
    slash = cfg.task_collateral * cfg.slash_bps // 10_000
    jobs, caught, earned = 80, 0, 0
    runner = w.runner()
    for seed in range(jobs):
        report = runner.run(prompt(seed), nodes=[0, 1, 2])
        cheat = report.tasks[1]
        assert (cheat.arbitration == "node cheated") == cheat.sampled
        caught += cheat.sampled
        earned += cheat.node_paid - cheat.node_slashed
        for t in (report.tasks[0], report.tasks[2]):
            assert t.node_slashed == 0 and t.node_paid == PRICE
    p = rate / 10_000
    assert abs(caught / jobs - p) < 4 * math.sqrt(p * (1 - p) / jobs), f"caught {caught} of {jobs}"
    assert earned == (jobs - caught) * PRICE - caught * slash
    # E[cheat] = (1 - p) R - p S < 0 here (R = 0.01 SOL, S = 0.1 SOL: the whole collateral, p = 40 %)
    assert (1 - p) * PRICE - p * slash < 0 and earned < 0
