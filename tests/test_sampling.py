"""Rejection sampling of the Gibbs policy (the RSO view, notebook 01).

Statistical checks use a fixed generator seed (so they are reproducible) and a stated level: a
correct sampler fails each of them with probability at most the level over seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import EPS, gibbs_problems
from hypothesis import given

from gsfh_utils import acceptance_rate, gibbs_policy, rejection_sample
from gsfh_utils.lab.stats import chi_square_pvalue, empirical_counts, normal_quantile
from gsfh_utils.sampling import MAX_EXPECTED_PROPOSALS

F64 = torch.float64
#: Level of each goodness-of-fit test (Bonferroni-split over the rows tested together).
LEVEL = 1e-3


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


REF = t([[0.0, 0.1, 0.2, 0.3, 0.25, 0.15],
         [0.3, 0.3, 0.0, 0.1, 0.2, 0.1],
         [0.05, 0.05, 0.3, 0.3, 0.2, 0.1]])
REWARDS = t([[9.0, 1.0, 0.5, -0.5, 0.8, 0.0],
             [0.0, 1.0, 9.0, -1.0, 0.5, 2.0],
             [2.0, 1.5, 0.0, 0.0, -1.0, 0.3]])
ETAS = t([0.3, 1.0, 0.5])  # one eta per row


def test_shapes_dtypes_and_range():
    samples, rate = rejection_sample(REF.reshape(1, 3, 6).expand(2, 3, 6), REWARDS, 0.5, 7,
                                     generator(0))
    assert samples.shape == (2, 3, 7) and samples.dtype == torch.long
    assert rate.shape == (2, 3) and rate.dtype == F64
    assert samples.min() >= 0 and samples.max() < 6
    single, single_rate = rejection_sample(REF[0], REWARDS[0], 0.5, 5, generator(0))
    assert single.shape == (5,) and single_rate.shape == ()


def test_same_seed_gives_the_same_draws_bit_for_bit():
    first = rejection_sample(REF, REWARDS, ETAS, 500, generator(123))
    second = rejection_sample(REF, REWARDS, ETAS, 500, generator(123))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = rejection_sample(REF, REWARDS, ETAS, 500, generator(124))
    assert not torch.equal(first[0], other[0])


def test_never_samples_an_action_outside_the_support_of_pi0():
    # the large rewards sit on the actions pi0 never proposes
    samples, _ = rejection_sample(REF, REWARDS, 0.05, 5000, generator(1))
    assert not (samples[0] == 0).any()
    assert not (samples[1] == 2).any()


def test_draws_follow_the_gibbs_policy():
    """Pearson chi-square per row at level LEVEL / rows, fixed seed."""
    num_samples = 20_000
    samples, _ = rejection_sample(REF, REWARDS, ETAS, num_samples, generator(2))
    counts = empirical_counts(samples, REF.shape[-1])
    target = gibbs_policy(REF, REWARDS, ETAS)
    pvalues = chi_square_pvalue(counts, target)
    assert torch.all(pvalues >= LEVEL / REF.shape[0]), pvalues
    # power: the same draws are rejected as draws from pi0, which differs from the target
    assert torch.all(chi_square_pvalue(counts, REF) < 1e-9)


def test_empirical_acceptance_rate_matches_the_exact_rate():
    """|rate_hat - rate| <= z sqrt(rate (1 - rate) / n), z for a two-sided level 1e-4.

    The number of proposals n is not returned; it is at least num_samples / rate_hat (every
    row accepts at least num_samples draws), and a smaller n only widens the bound.
    """
    num_samples = 20_000
    _, rate_hat = rejection_sample(REF, REWARDS, ETAS, num_samples, generator(3))
    rate = acceptance_rate(REF, REWARDS, ETAS)
    trials = num_samples / rate_hat
    z = normal_quantile(1 - 1e-4 / 2)
    assert torch.all((rate_hat - rate).abs() <= z * torch.sqrt(rate * (1 - rate) / trials))


def naive_acceptance_rate(ref: list[float], rewards: list[float], eta: float) -> float:
    """Z exp(-r_max/eta), r_max the largest reward on the support, by the textbook formula."""
    r_max = max(r for p, r in zip(ref, rewards, strict=True) if p > 0)
    z = math.fsum(p * math.exp(r / eta) for p, r in zip(ref, rewards, strict=True))
    return z * math.exp(-r_max / eta)


@given(gibbs_problems(eta_range=(0.05, 1e4)))
def test_acceptance_rate_matches_naive_formula(problem):
    ref_probs, rewards, eta = problem
    rate = acceptance_rate(ref_probs, rewards, eta)
    # both sides exponentiate r/eta (|r/eta| <= 200): relative error ~ eps (K + 2 max|r|/eta)
    relative = 4 * EPS * (ref_probs.shape[-1] + 2 * rewards.abs().amax(-1) / eta)
    for row in range(ref_probs.shape[0]):
        expected = naive_acceptance_rate(ref_probs[row].tolist(), rewards[row].tolist(), eta)
        assert abs(rate[row].item() - expected) <= relative[row].item() * expected


@given(gibbs_problems())
def test_acceptance_rate_is_a_probability_for_every_eta(problem):
    ref_probs, rewards, eta = problem
    rate = acceptance_rate(ref_probs, rewards, eta)
    assert torch.isfinite(rate).all()
    assert torch.all(rate > 0) and torch.all(rate <= 1 + 4 * ref_probs.shape[-1] * EPS)
    # at least the mass pi0 puts on the maximisers (accepted with probability 1)
    support_max = torch.where(ref_probs > 0, rewards, -math.inf).amax(-1, keepdim=True)
    mass = torch.where(rewards == support_max, ref_probs, 0.0).sum(-1)
    assert torch.all(rate >= mass * (1 - 4 * ref_probs.shape[-1] * EPS))


def test_acceptance_rate_limits():
    ref = t([0.0, 0.2, 0.3, 0.5])
    rewards = t([7.0, 1.0, 0.0, 1.0])  # the maximiser off the support is ignored
    # eta -> 0: only the maximisers on the support are accepted: rate = pi0(M) = 0.7
    tiny = acceptance_rate(ref, rewards, 1e-6).item()
    assert math.isfinite(tiny) and 0 < tiny <= 1
    assert math.isclose(tiny, 0.7, rel_tol=8 * EPS)
    # eta -> infinity: every proposal is accepted
    assert math.isclose(acceptance_rate(ref, rewards, 1e8).item(), 1.0, abs_tol=1e-8)
    # constant reward on the support: rate 1 whatever eta
    flat = t([3.0, 2.0, 2.0, 2.0])
    for eta in [1e-6, 1.0, 1e8]:
        assert math.isclose(acceptance_rate(ref, flat, eta).item(), 1.0, abs_tol=4 * 4 * EPS)


def test_eta_tensor_broadcasts_per_row():
    rates = acceptance_rate(REF, REWARDS, ETAS)
    for row, eta in enumerate(ETAS.tolist()):
        torch.testing.assert_close(rates[row], acceptance_rate(REF[row], REWARDS[row], eta),
                                   rtol=2 * EPS, atol=0)


def test_refuses_an_astronomically_small_acceptance_rate():
    # pi0 puts 1e-12 on the best action and eta is small: the rate is about 1e-12
    ref = t([1 - 1e-12, 1e-12])
    rewards = t([0.0, 1.0])
    assert acceptance_rate(ref, rewards, 1e-3).item() < 1e-11
    with pytest.raises(ValueError, match="eta is too small"):
        rejection_sample(ref, rewards, 1e-3, 10, generator(0))
    # the threshold is on the expected number of proposals, per row of a batch
    batch_ref = torch.stack([t([0.5, 0.5]), ref])
    with pytest.raises(ValueError, match="multi-step"):
        rejection_sample(batch_ref, torch.stack([rewards, rewards]), 1e-3, 10, generator(0))


def test_a_rate_just_inside_the_limit_is_sampled():
    # rate 1e-3, 100 samples: 1e5 expected proposals, far below MAX_EXPECTED_PROPOSALS
    ref = t([1 - 1e-3, 1e-3])
    rewards = t([0.0, 1.0])
    assert 100 / acceptance_rate(ref, rewards, 1e-3).item() < MAX_EXPECTED_PROPOSALS
    samples, _ = rejection_sample(ref, rewards, 1e-3, 100, generator(5))
    assert torch.all(samples == 1)  # exp(-1000) = 0: only the best action is ever accepted


@pytest.mark.parametrize("num_samples", [0, -3, 2.0, True, "10", None])
def test_bad_num_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        rejection_sample(REF, REWARDS, 1.0, num_samples, generator(0))


@pytest.mark.parametrize("bad_generator", [None, 42, "seed"])
def test_generator_must_be_explicit(bad_generator):
    with pytest.raises(ValueError, match="generator"):
        rejection_sample(REF, REWARDS, 1.0, 10, bad_generator)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"eta": 0.0}, "eta"),
        ({"eta": math.nan}, "eta"),
        ({"ref_probs": t([0.5, 0.6])}, "ref_probs"),
        ({"rewards": t([1.0, math.nan])}, "rewards"),
        ({"rewards": t([1.0, 0.0, 0.0])}, "ref_probs.*rewards"),
    ],
)
@pytest.mark.parametrize("function", ["acceptance_rate", "rejection_sample"])
def test_bad_input_names_the_argument(function, overrides, match):
    arguments = {"ref_probs": t([0.5, 0.5]), "rewards": t([1.0, 0.0]), "eta": 1.0} | overrides
    with pytest.raises(ValueError, match=match):
        if function == "acceptance_rate":
            acceptance_rate(**arguments)
        else:
            rejection_sample(**arguments, num_samples=3, generator=generator(0))
