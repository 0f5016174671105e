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
    w = make_world(plan_dir, tmp_path / "store", MarketParams.flat(BASE_RATE_BPS), n_nodes=4)
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
