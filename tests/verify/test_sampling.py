"""The deterministic sampling coin and the adaptive sampling policy."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from splitup.verify.econ.simulate import policy_rates, simulate_population
from splitup.verify.errors import BadSamplingInput
from splitup.verify.sampling import (
    BASE_RATE_BPS,
    NodeRecord,
    SamplingPolicy,
    overhead_bound,
    sampling_seed,
    should_sample,
)


def _seed(prefix: bytes) -> bytes:
    return prefix + bytes(32 - len(prefix))


# Vectors the C program's tests can repeat byte for byte: (seed, u64 mod 10000).
VECTORS = [
    (_seed(b"\x01"), 1),
    (_seed((10_000).to_bytes(8, "little")), 0),
    (_seed((9_999).to_bytes(8, "little")), 9_999),
    (b"\xff" * 32, 18446744073709551615 % 10_000),  # = 1615
    # Only the first 8 bytes count.
    (_seed((800).to_bytes(8, "little") + b"\xff" * 24)[:32], 800),
]


@pytest.mark.parametrize(("seed", "residue"), VECTORS)
def test_rule_vectors(seed: bytes, residue: int) -> None:
    assert should_sample(seed, residue + 1)
    assert not should_sample(seed, residue)
    assert not should_sample(seed, 0)
    assert should_sample(seed, 10_000)


def test_seed_mixes_slot_hash_and_commitment() -> None:
    slot, commit = hashlib.sha256(b"slot").digest(), hashlib.sha256(b"commitment").digest()
    seed = sampling_seed(slot, commit)
    assert seed.hex() == "94d2e4c9bc5e197004bfc04bc9036e18743906483902215cc441c03626e7c5b7"
    assert int.from_bytes(seed[:8], "little") % 10_000 == 4356
    assert should_sample(seed, 4357) and not should_sample(seed, 4356)
    assert sampling_seed(commit, slot) != seed


def test_rate_matches_frequency() -> None:
    hits = sum(should_sample(hashlib.sha256(i.to_bytes(4, "little")).digest(), BASE_RATE_BPS)
               for i in range(40_000))
    p = BASE_RATE_BPS / 10_000
    se = np.sqrt(p * (1 - p) / 40_000)
    assert abs(hits / 40_000 - p) < 4 * se


@pytest.mark.parametrize(("seed", "rate"), [(b"\x00" * 31, 800), (b"\x00" * 33, 800), (b"\x00" * 32, -1),
                                            (b"\x00" * 32, 10_001), (b"\x00" * 32, 8.0), (b"\x00" * 32, True)])
def test_bad_inputs(seed: bytes, rate: int) -> None:
    with pytest.raises(BadSamplingInput):
        should_sample(seed, rate)


def test_policy_new_node_decays_to_base() -> None:
    pol = SamplingPolicy()
    rates = [pol.rate_bps(NodeRecord(honest_tasks=t)) for t in range(0, 2000, 5)]
    assert rates[0] == pol.new_node_bps
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert pol.rate_bps(NodeRecord(honest_tasks=pol.new_node_half_life)) == pol.base_bps + (
        pol.new_node_bps - pol.base_bps) // 2
    assert pol.rate_bps(NodeRecord(honest_tasks=10**6)) == pol.base_bps


def test_policy_failure_raises_rate_then_decays() -> None:
    pol = SamplingPolicy()
    veteran = NodeRecord(honest_tasks=10_000)
    assert pol.rate_bps(veteran) == pol.base_bps
    just_failed = NodeRecord(honest_tasks=10_000, since_failure=0)
    assert pol.rate_bps(just_failed) == pol.failed_bps
    later = NodeRecord(honest_tasks=10_000, since_failure=3 * pol.failed_half_life)
    assert pol.rate_bps(later) == pol.base_bps + ((pol.failed_bps - pol.base_bps) >> 3)
    # A failure never lowers the rate below what newness alone gives.
    new_failed = NodeRecord(honest_tasks=0, since_failure=10**6)
    assert pol.rate_bps(new_failed) == pol.new_node_bps


def test_vectorised_rates_equal_scalar_rule() -> None:
    pol = SamplingPolicy()
    rng = np.random.default_rng(0)
    honest = rng.integers(0, 5000, 500)
    since = np.where(rng.random(500) < 0.5, -1, rng.integers(0, 3000, 500))
    vec = policy_rates(pol, honest, since)
    scalar = [pol.rate_bps(NodeRecord(int(h), None if s < 0 else int(s))) for h, s in zip(honest, since, strict=True)]
    assert vec.tolist() == scalar


def test_bad_policy_is_refused() -> None:
    with pytest.raises(BadSamplingInput):
        SamplingPolicy(base_bps=900, new_node_bps=800)
    with pytest.raises(BadSamplingInput):
        SamplingPolicy(new_node_half_life=0)
    with pytest.raises(BadSamplingInput):
        SamplingPolicy().rate_bps(NodeRecord(honest_tasks=-1))


def test_lifetime_extra_bound_is_tight_sum() -> None:
    pol = SamplingPolicy()
    exact = sum(pol.rate_bps(NodeRecord(honest_tasks=t)) - pol.base_bps for t in range(100_000)) / 10_000
    assert exact <= pol.lifetime_extra_samples()
    assert exact > 0.9 * pol.lifetime_extra_samples()


def test_population_overhead_stays_near_base_rate() -> None:
    pol = SamplingPolicy()
    res = simulate_population(pol, np.random.default_rng(1), nodes=500, tasks_per_node=2000,
                              cheater_share=0.02, false_positive=0.001)
    base = pol.base_bps / 10_000
    # Newcomers (including replacements for slashed cheaters) are counted as extra lifetimes.
    lifetimes = 500 + res.replaced_nodes
    bound = overhead_bound(pol, res.tasks / lifetimes, res.false_flags / res.tasks)
    assert base < res.overhead <= bound + 0.002
    assert res.overhead < base + 0.01, res
    # Every cheater that was sampled while cheating was caught, and they were caught quickly.
    assert res.cheats_caught == res.replaced_nodes > 0
    assert res.cheats < 0.002 * res.tasks


@pytest.mark.parametrize(("cheater_share", "cheat_prob"), [(0.0, 1.0), (0.2, 1.0), (0.2, 0.05)])
def test_population_overhead_within_bound_for_any_mix(cheater_share: float, cheat_prob: float) -> None:
    pol = SamplingPolicy()
    nodes = 300
    res = simulate_population(pol, np.random.default_rng(2), nodes=nodes, tasks_per_node=1000,
                              cheater_share=cheater_share, cheat_prob=cheat_prob, false_positive=0.002)
    bound = overhead_bound(pol, res.tasks / (nodes + res.replaced_nodes), res.false_flags / res.tasks)
    assert pol.base_bps / 10_000 < res.overhead <= bound + 0.002, res
