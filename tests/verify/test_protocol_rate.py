"""At the real base rate (8 %), the share of tasks re-executed, and of compute re-executed, is near 8 %;
every on-chain draw is the docs/posp.md coin."""

from __future__ import annotations

from binomial import binomial_region

from splitup.market import MarketParams
from splitup.verify.sampling import BASE_RATE_BPS
from splitup.verify.sandbox import make_world, prompt, write_plan

# The draws cannot be seeded: each count must fall in its exact binomial region at this significance, so a
# run fails by chance about once in ten million (a 4-sigma band failed about once in 10^4).
ALPHA = 1e-7
# The fewest jobs whose region at ALPHA (55-157 of 1275 tasks: 4.3-12.3 %) is inside the 4-sigma band the
# test had at 200 jobs (22-74 of 600: 3.7-12.3 %)
JOBS = 425


def test_measured_verification_overhead_is_near_the_base_rate(tmp_path):
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir)
    # 0.3 SOL of collateral on a 0.01 SOL task puts the sound rate (3.6 %) under the base rate, which then
    # applies; at the default 0.1 SOL the program would draw these tasks at 10.11 %
    # no heartbeat window: the sandbox's nodes never beat, and JOBS jobs outlast the default window (2,250
    # slots at about 60 a job: a close waits for the job's nonce to go stale), after which no validator
    # would be eligible
    params = MarketParams.flat(BASE_RATE_BPS, task_collateral=3 * 10**8, heartbeat_window_slots=0)
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
    lo, hi = binomial_region(tasks, p, ALPHA)
    share = sampled / tasks
    assert lo <= sampled <= hi, f"{sampled}/{tasks} sampled: outside [{lo}, {hi}]"
    # tasks are of similar size, so the compute re-executed tracks the share of tasks sampled
    assert abs(reexecuted / executed - share) < 0.03
    assert abs(reexecuted / executed - p) < max(p - lo / tasks, hi / tasks - p) + 0.03


def test_cheater_is_caught_at_the_sampling_rate_and_loses_money(tmp_path):
    """A node that perturbs every output: caught exactly when drawn, at a rate consistent with p; at
    these stakes cheating loses lamports while the honest nodes are never slashed."""
    from splitup.verify.cheats import perturb
    from splitup.verify.sandbox import PRICE

    plan_dir = tmp_path / "plan"
    write_plan(plan_dir)
    # At 40% the realised loss below is all but certain too: it needs more than jobs / 11 catches (a miss
    # pays 0.01 SOL, a catch costs 0.1 SOL), far below the region's lower end (at 25% it failed about 1 run
    # in 20). 152 jobs: the fewest whose region at ALPHA (30-93 catches: 19.7-61.2 %) is inside the 4-sigma
    # band the test had at 80 jobs (15-49: 18.8-61.3 %).
    rate = 4_000
    # no heartbeat window, as above: the sandbox's nodes never beat, and each job's close waits for its
    # nonce to go stale (about 50 slots), so 152 jobs outlast the default window
    w = make_world(plan_dir, tmp_path / "store", MarketParams.flat(rate, heartbeat_window_slots=0), n_nodes=4)
    w.executors[1] = w.executor(1, cheat=perturb(0.01, seed=1))
    jobs, caught, earned = 152, 0, 0
    cfg = w.m.config()
    slash = cfg.task_collateral * cfg.slash_bps // 10_000
    # below the minimum stake a caught cheater could not accept any more: enough for a catch in every job
    w.m.add_stake(w.nodes[1], jobs * slash)
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
    lo, hi = binomial_region(jobs, p, ALPHA)
    assert lo <= caught <= hi, f"caught {caught} of {jobs}: outside [{lo}, {hi}]"
    assert earned == (jobs - caught) * PRICE - caught * slash
    # E[cheat] = (1 - p) R - p S < 0 here (R = 0.01 SOL, S = 0.1 SOL: the whole collateral, p = 40 %)
    assert (1 - p) * PRICE - p * slash < 0 and earned < 0
