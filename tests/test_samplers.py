"""Tests of gsfh_utils.sampling: RSO's finite-pool sampler against the exact law of its
algorithm on tiny problems (brute-force enumeration of pools), and multi-step rejection sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import gibbs_problems
from hypothesis import given
from hypothesis import strategies as st

import gsfh_utils as gu
from gsfh_utils import sampling as samplers
from gsfh_utils.lab.stats import chi_square_pvalue, empirical_counts


def _rso_first_draw_law(ref, rewards, eta, pool_size):
    """Exact law of RSO's output with num_samples = 1, by enumerating every pool.

    Algorithm 1 with n = 1: the first candidate (in pool order) whose uniform falls below
    exp((r - max_pool)/eta) is returned; the pool maximum is accepted surely, so the output is
    the i-th candidate with probability prod_{j < i} (1 - p_j) p_i.
    """
    law = torch.zeros(len(ref), dtype=torch.float64)
    for pool in itertools.product(range(len(ref)), repeat=pool_size):
        weight = math.prod(ref[a].item() for a in pool)
        top = max(rewards[a].item() for a in pool)
        survive = 1.0
        for a in pool:
            accept = math.exp((rewards[a].item() - top) / eta)
            law[a] += weight * survive * accept
            survive *= 1 - accept
    return law


@pytest.mark.parametrize("pool_size", [1, 2, 3])
def test_rso_single_draw_matches_enumeration(pool_size):
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    rewards = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    eta = 0.5
    law = _rso_first_draw_law(ref, rewards, eta, pool_size)
    assert law.sum().item() == pytest.approx(1.0, abs=1e-12)
    generator = torch.Generator().manual_seed(pool_size)
    draws = samplers.rso_sample(ref.expand(40000, 3), rewards.expand(40000, 3), eta, 1, pool_size,
                                generator)
    counts = empirical_counts(draws.reshape(1, -1), 3)
    assert chi_square_pvalue(counts, law.unsqueeze(0)).item() > 1e-3
    if pool_size == 1:
        assert torch.allclose(law, ref)  # one candidate: pi0 itself


def test_rso_pool_equal_to_samples_returns_the_pool():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(50, 6, dtype=torch.float64, generator=generator)
    picked = samplers.rso_select(rewards, 6, 0.3, generator)
    assert torch.equal(picked.sort(-1).values, torch.arange(6).expand(50, 6))


@given(st.integers(1, 6), st.integers(0, 6), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_rso_select_without_replacement(num_samples, extra, eta, seed):
    generator = torch.Generator().manual_seed(seed)
    pool_size = num_samples + extra
    rewards = torch.randn(4, pool_size, dtype=torch.float64, generator=generator)
    picked = samplers.rso_select(rewards, num_samples, eta, generator)
    assert picked.shape == (4, num_samples)
    for row in picked:
        assert len(set(row.tolist())) == num_samples  # distinct positions
        assert row.min() >= 0 and row.max() < pool_size


def test_rso_extreme_eta():
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(20, 10, dtype=torch.float64, generator=generator)
    # huge eta: everything is accepted in the first round, in pool order
    picked = samplers.rso_select(rewards, 4, 1e12, generator)
    assert torch.equal(picked, torch.arange(4).expand(20, 4))
    # tiny eta: each round accepts only the best remaining candidate (distinct rewards)
    picked = samplers.rso_select(rewards, 4, 1e-9, generator)
    assert torch.equal(picked, rewards.argsort(-1, descending=True)[:, :4])


def test_rso_bad_inputs():
    generator = torch.Generator().manual_seed(2)
    ref = torch.full((2, 4), 0.25, dtype=torch.float64)
    rewards = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="pool_size"):
        samplers.rso_sample(ref, rewards, 1.0, 5, 4, generator)
    with pytest.raises(ValueError, match="pool_size"):
        samplers.rso_select(rewards, 5, 1.0, generator)
    with pytest.raises(ValueError, match="num_samples"):
        samplers.rso_sample(ref, rewards, 1.0, 0, 4, generator)
    with pytest.raises(ValueError, match="eta"):
        samplers.rso_select(rewards, 2, 0.0, generator)
    with pytest.raises(ValueError, match="generator"):
        samplers.rso_sample(ref, rewards, 1.0, 1, 4, None)


def test_rso_large_pool_approaches_gibbs():
    generator = torch.Generator().manual_seed(3)
    ref = torch.softmax(torch.randn(5, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(5, dtype=torch.float64, generator=generator)
    target = gu.gibbs_policy(ref, rewards, 0.5)
    tv = []
    for pool_size in (2, 64):
        draws = samplers.rso_sample(ref.expand(4000, 5), rewards.expand(4000, 5), 0.5, 2,
                                    pool_size, generator)
        law = empirical_counts(draws.reshape(1, -1), 5)[0] / draws.numel()
        tv.append(gu.total_variation(law, target).item())
    # pool = n returns pi0; a large pool is close to the target (4000 runs: noise ~0.02)
    assert tv[0] == pytest.approx(gu.total_variation(ref, target).item(), abs=0.05)
    assert tv[1] < 0.05 < tv[0]


@given(gibbs_problems(eta_range=(1e-2, 1e2), reward_scale=3.0, allow_zeros=False, min_prob=1e-4),
       st.integers(1, 5))
def test_stage_rates_telescope(problem, num_stages):
    ref, rewards, eta = problem
    schedule = samplers.geometric_schedule(max(eta, 1.0) * 10, eta, num_stages)
    rates = samplers.multi_step_acceptance_rates(ref, rewards, schedule)
    one_step = gu.acceptance_rate(ref, rewards, eta)
    assert torch.allclose(rates.prod(0), one_step, rtol=1e-9, atol=0)
    assert ((rates >= one_step * (1 - 1e-12)) & (rates <= 1 + 1e-12)).all()


def test_stage_temperatures_and_schedule():
    schedule = samplers.geometric_schedule(1.0, 0.01, 3)
    assert torch.allclose(schedule, torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64))
    temps = samplers.stage_temperatures(schedule)
    # 1/eta_eff_k = 1/eta_k - 1/eta_{k-1}, eta_0 = inf
    assert torch.allclose(1 / temps, torch.tensor([1.0, 9.0, 90.0], dtype=torch.float64))
    assert (1 / temps).sum().item() == pytest.approx(1 / 0.01)
    with pytest.raises(ValueError, match="decreasing"):
        samplers.stage_temperatures([0.1, 0.2])
    with pytest.raises(ValueError, match="eta_end"):
        samplers.geometric_schedule(0.1, 1.0, 3)


def test_multi_step_gibbs_proposals_are_exact():
    generator = torch.Generator().manual_seed(4)
    ref = torch.softmax(torch.randn(3, 8, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(3, 8, dtype=torch.float64, generator=generator)
    schedule = samplers.geometric_schedule(1.0, 0.2, 3)
    samples, rates, total = samplers.multi_step_rejection_sample(ref, rewards, schedule, 20000,
                                                                 generator, proposal="gibbs")
    target = gu.gibbs_policy(ref, rewards, 0.2)
    pvalues = chi_square_pvalue(empirical_counts(samples, 8), target)
    assert pvalues.min().item() * 3 > 1e-3
    exact = samplers.multi_step_acceptance_rates(ref, rewards, schedule)
    assert (rates - exact).abs().max() < 0.03
    assert torch.allclose(total, (20000 / rates).sum(0))
    # trained (empirical) proposals: still close to the target at this size
    samples, _, _ = samplers.multi_step_rejection_sample(ref, rewards, schedule, 20000, generator)
    law = empirical_counts(samples, 8) / 20000
    assert gu.total_variation(law, target).max() < 0.05


def test_multi_step_bad_inputs():
    generator = torch.Generator().manual_seed(5)
    ref = torch.full((4,), 0.25, dtype=torch.float64)
    rewards = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="proposal"):
        samplers.multi_step_rejection_sample(ref, rewards, [1.0, 0.5], 10, generator, "mcmc")
    with pytest.raises(ValueError, match="etas"):
        samplers.multi_step_rejection_sample(ref, rewards, [0.5, 1.0], 10, generator)
    with pytest.raises(ValueError, match="etas"):
        samplers.multi_step_rejection_sample(ref, rewards, [], 10, generator)
