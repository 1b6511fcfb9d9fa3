"""The samplers of the Gibbs policy: exact rejection sampling (the RSO view, notebook 01), RSO's
finite-pool sampler against the exact law of its algorithm on tiny problems (brute-force
enumeration of pools), and multi-step rejection sampling.

Statistical checks use a fixed generator seed (so they are reproducible) and a stated level: a
correct sampler fails each of them with probability at most the level over seeds.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import EPS, gibbs_problems
from hypothesis import given
from hypothesis import strategies as st

import gsfh_utils as gu
from gsfh_utils import acceptance_rate, gibbs_policy, rejection_sample, sampling
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


def test_rows_are_independent_draws_pooled_across_a_batch():
    """3000 identical rows, one draw each: pooled, they are 3000 independent draws of the Gibbs
    policy (Pearson chi-square at LEVEL). pi0 = (1/2, 1/2) and acceptance probabilities (1, 1/2)
    give pi_r(1) = 1/3. Rows that shared their uniforms would not pool so: all rows meet the
    same first uniform below 1/2, at proposal J, and a fraction 2^-J (1/2, 1/4, ...), never 1/3,
    of them would draw action 1."""
    ref = t([0.5, 0.5]).expand(3000, 2)
    rewards = t([0.0, -math.log(2)])
    samples, _ = rejection_sample(ref, rewards, 1.0, 1, generator(4))
    counts = empirical_counts(samples.reshape(1, -1), 2)
    assert chi_square_pvalue(counts, t([[2 / 3, 1 / 3]])).item() >= LEVEL


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
    with pytest.raises(ValueError, match="^eta is too small"):
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
    with pytest.raises(ValueError, match="^num_samples"):
        rejection_sample(REF, REWARDS, 1.0, num_samples, generator(0))


@pytest.mark.parametrize("bad_generator", [None, 42, "seed"])
def test_generator_must_be_explicit(bad_generator):
    with pytest.raises(ValueError, match="^generator"):
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
    with pytest.raises(ValueError, match=f"^{match}"):
        if function == "acceptance_rate":
            acceptance_rate(**arguments)
        else:
            rejection_sample(**arguments, num_samples=3, generator=generator(0))


# --- RSO's finite-pool sampler and multi-step rejection sampling --------------------------------


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
    draws = sampling.rso_sample(ref.expand(40000, 3), rewards.expand(40000, 3), eta, 1, pool_size,
                                generator)
    counts = empirical_counts(draws.reshape(1, -1), 3)
    assert chi_square_pvalue(counts, law.unsqueeze(0)).item() > 1e-3
    if pool_size == 1:
        assert torch.allclose(law, ref)  # one candidate: pi0 itself


def test_rso_pool_equal_to_samples_returns_the_pool():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(50, 6, dtype=torch.float64, generator=generator)
    picked = sampling.rso_select(rewards, 6, 0.3, generator)
    assert torch.equal(picked.sort(-1).values, torch.arange(6).expand(50, 6))


@pytest.mark.parametrize("pool_size", [2, 10_000])
def test_rso_select_returns_positions_in_acceptance_order_across_rounds(pool_size):
    """Positions 1..M-1 share the best reward, position 0 is worse by 1 and eta = 1e-3 gives it
    acceptance probability exp(-1000) = 0 in the first round: round one accepts 1..M-1 in pool
    order, round two accepts 0, so the acceptance order is 1, ..., M-1, 0. The last two follow
    each other from the last pool position to the first; for M = 10^4 their acceptance ranks
    times (M + 1) plus positions (M^2 - 3 and M^2 - 1) are whole numbers above 2^26."""
    rewards = torch.ones(pool_size, dtype=torch.float64)
    rewards[0] = 0.0
    picked = sampling.rso_select(rewards, pool_size, 1e-3, torch.Generator().manual_seed(0))
    assert picked.tolist() == [*range(1, pool_size), 0]


@given(st.integers(1, 6), st.integers(0, 6), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_rso_select_without_replacement(num_samples, extra, eta, seed):
    generator = torch.Generator().manual_seed(seed)
    pool_size = num_samples + extra
    rewards = torch.randn(4, pool_size, dtype=torch.float64, generator=generator)
    picked = sampling.rso_select(rewards, num_samples, eta, generator)
    assert picked.shape == (4, num_samples)
    for row in picked:
        assert len(set(row.tolist())) == num_samples  # distinct positions
        assert row.min() >= 0 and row.max() < pool_size


def test_rso_extreme_eta():
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randn(20, 10, dtype=torch.float64, generator=generator)
    # huge eta: everything is accepted in the first round, in pool order
    picked = sampling.rso_select(rewards, 4, 1e12, generator)
    assert torch.equal(picked, torch.arange(4).expand(20, 4))
    # tiny eta: each round accepts only the best remaining candidate (distinct rewards)
    picked = sampling.rso_select(rewards, 4, 1e-9, generator)
    assert torch.equal(picked, rewards.argsort(-1, descending=True)[:, :4])


def test_rso_bad_inputs():
    generator = torch.Generator().manual_seed(2)
    ref = torch.full((2, 4), 0.25, dtype=torch.float64)
    rewards = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="^pool_size"):
        sampling.rso_sample(ref, rewards, 1.0, 5, 4, generator)
    with pytest.raises(ValueError, match="^pool_size"):
        sampling.rso_select(rewards, 5, 1.0, generator)
    with pytest.raises(ValueError, match="^num_samples"):
        sampling.rso_sample(ref, rewards, 1.0, 0, 4, generator)
    with pytest.raises(ValueError, match="^eta"):
        sampling.rso_select(rewards, 2, 0.0, generator)
    with pytest.raises(ValueError, match="^generator"):
        sampling.rso_sample(ref, rewards, 1.0, 1, 4, None)


def test_rso_large_pool_approaches_gibbs():
    generator = torch.Generator().manual_seed(3)
    ref = torch.softmax(torch.randn(5, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(5, dtype=torch.float64, generator=generator)
    target = gu.gibbs_policy(ref, rewards, 0.5)
    tv = []
    for pool_size in (2, 64):
        draws = sampling.rso_sample(ref.expand(4000, 5), rewards.expand(4000, 5), 0.5, 2,
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
    schedule = sampling.geometric_schedule(max(eta, 1.0) * 10, eta, num_stages)
    rates = sampling.multi_step_acceptance_rates(ref, rewards, schedule)
    one_step = gu.acceptance_rate(ref, rewards, eta)
    assert torch.allclose(rates.prod(0), one_step, rtol=1e-9, atol=0)
    assert ((rates >= one_step * (1 - 1e-12)) & (rates <= 1 + 1e-12)).all()


def test_stage_temperatures_and_schedule():
    schedule = sampling.geometric_schedule(1.0, 0.01, 3)
    assert torch.allclose(schedule, torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64))
    temps = sampling.stage_temperatures(schedule)
    # 1/eta_eff_k = 1/eta_k - 1/eta_{k-1}, eta_0 = inf
    assert torch.allclose(1 / temps, torch.tensor([1.0, 9.0, 90.0], dtype=torch.float64))
    assert (1 / temps).sum().item() == pytest.approx(1 / 0.01)
    # A list of Python floats is read in float64: 1/(1/0.1 - 1/0.3) = 0.15 to round-off (a
    # float32 reading of 0.3 and 0.1 would move it by about 1e-8).
    assert sampling.stage_temperatures([0.3, 0.1])[1].item() == pytest.approx(0.15, rel=1e-14)
    with pytest.raises(ValueError, match="decreasing"):
        sampling.stage_temperatures([0.1, 0.2])
    with pytest.raises(ValueError, match="eta_end"):
        sampling.geometric_schedule(0.1, 1.0, 3)


def test_multi_step_gibbs_proposals_are_exact():
    generator = torch.Generator().manual_seed(4)
    ref = torch.softmax(torch.randn(3, 8, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(3, 8, dtype=torch.float64, generator=generator)
    schedule = sampling.geometric_schedule(1.0, 0.2, 3)
    samples, rates, total = sampling.multi_step_rejection_sample(ref, rewards, schedule, 20000,
                                                                 generator, proposal="gibbs")
    target = gu.gibbs_policy(ref, rewards, 0.2)
    pvalues = chi_square_pvalue(empirical_counts(samples, 8), target)
    assert pvalues.min().item() * 3 > 1e-3
    exact = sampling.multi_step_acceptance_rates(ref, rewards, schedule)
    assert (rates - exact).abs().max() < 0.03
    assert torch.allclose(total, (20000 / rates).sum(0))
    # trained (empirical) proposals: still close to the target at this size
    samples, _, _ = sampling.multi_step_rejection_sample(ref, rewards, schedule, 20000, generator)
    law = empirical_counts(samples, 8) / 20000
    assert gu.total_variation(law, target).max() < 0.05


def test_multi_step_bad_inputs():
    generator = torch.Generator().manual_seed(5)
    ref = torch.full((4,), 0.25, dtype=torch.float64)
    rewards = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="^proposal"):
        sampling.multi_step_rejection_sample(ref, rewards, [1.0, 0.5], 10, generator, "mcmc")
    with pytest.raises(ValueError, match="^etas"):
        sampling.multi_step_rejection_sample(ref, rewards, [0.5, 1.0], 10, generator)
    with pytest.raises(ValueError, match="^etas"):
        sampling.multi_step_rejection_sample(ref, rewards, [], 10, generator)


def test_sample_categorical_is_multinomial_per_row_with_the_batch_shape():
    probs = torch.softmax(torch.randn(3, 2, 5, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(0)), -1)
    draws = sampling.sample_categorical(probs, 7, torch.Generator().manual_seed(1))
    direct = torch.multinomial(probs.reshape(6, 5), 7, replacement=True,
                               generator=torch.Generator().manual_seed(1)).reshape(3, 2, 7)
    assert draws.shape == (3, 2, 7) and torch.equal(draws, direct)
    one_hot = torch.zeros(4, dtype=torch.float64)
    one_hot[2] = 1.0
    assert torch.all(sampling.sample_categorical(one_hot, 9, torch.Generator()) == 2)
    with pytest.raises(ValueError, match="^num_samples"):
        sampling.sample_categorical(probs, 0, torch.Generator())
    with pytest.raises(ValueError, match="^probs"):
        sampling.sample_categorical(-probs, 3, torch.Generator())


def test_rso_bias_against_its_draws_replayed():
    """The deficit E_{pi_r} r - mean accepted reward per run and the TV between the accepted
    draws' law and pi_r, computed by hand from rso_sample on the same stream."""
    ref = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], dtype=torch.float64)
    deficit, tv = sampling.rso_bias(ref, rewards, 0.5, num_samples=3, pool_size=6, num_runs=4,
                                    generator=torch.Generator().manual_seed(1))
    draws = sampling.rso_sample(ref.expand(4, 2, 3), rewards, 0.5, 3, 6,
                                torch.Generator().manual_seed(1))  # [runs, X, n]
    target = gibbs_policy(ref, rewards, 0.5)
    expected_deficit, counts = torch.zeros(4, dtype=torch.float64), torch.zeros(2, 3)
    for run in range(4):
        for x in range(2):
            accepted = [rewards[x, a].item() for a in draws[run, x].tolist()]
            expected_deficit[run] += ((target[x] * rewards[x]).sum().item()
                                      - sum(accepted) / 3) / 2
            for a in draws[run, x].tolist():
                counts[x, a] += 1
    law = counts.double() / counts.sum(-1, keepdim=True)
    expected_tv = 0.5 * (law - target).abs().sum(-1).mean()
    assert torch.allclose(deficit, expected_deficit, atol=1e-12)
    assert tv.item() == pytest.approx(expected_tv.item(), abs=1e-12)


# --- replays and messages (in answer to mutation testing) --------------------------------------


@pytest.mark.parametrize("proposal", ["empirical", "gibbs"])
def test_multi_step_replays_its_docstring(proposal):
    """Stage k: rejection_sample from the current proposal at the stage temperature, then the
    proposal becomes the stage's empirical law ("empirical") or the exact pi_{eta_k} ("gibbs");
    the total counts num_samples / rate per stage. One context (a 1-d pi0), on the same stream."""
    generator = torch.Generator().manual_seed(7)
    ref = torch.softmax(torch.randn(6, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(6, dtype=torch.float64, generator=generator)
    schedule = [1.0, 0.4, 0.2]
    samples, rates, total = sampling.multi_step_rejection_sample(
        ref, rewards, schedule, 50, torch.Generator().manual_seed(8), proposal=proposal)
    replay, current, expected_total = torch.Generator().manual_seed(8), ref, 0.0
    temperatures = sampling.stage_temperatures(schedule).tolist()
    for stage, (eta_k, temperature) in enumerate(zip(schedule, temperatures, strict=True)):
        draws, rate = sampling.rejection_sample(current, rewards, temperature, 50, replay)
        assert rates[stage].item() == rate.item()
        expected_total += 50 / rate.item()
        current = (gu.gibbs_policy(ref, rewards, eta_k) if proposal == "gibbs"
                   else torch.bincount(draws, minlength=6).to(torch.float64) / 50)
    assert torch.equal(samples, draws)
    assert total.item() == pytest.approx(expected_total, rel=1e-12)


def test_multi_step_over_two_batch_dimensions():
    """pi0 ``[2, 3, K]``: samples ``[2, 3, n]`` on the support, rates ``[N, 2, 3]`` and the total
    proposals per context, ``sum_k n / rate_k`` as documented."""
    generator = torch.Generator().manual_seed(10)
    ref = torch.softmax(torch.randn(2, 3, 4, dtype=torch.float64, generator=generator), -1)
    ref[1, 2, 0] = 0.0
    ref = ref / ref.sum(-1, keepdim=True)
    rewards = torch.randn(2, 3, 4, dtype=torch.float64, generator=generator)
    samples, rates, total = sampling.multi_step_rejection_sample(ref, rewards, [1.0, 0.5], 30,
                                                                 generator)
    assert samples.shape == (2, 3, 30) and rates.shape == (2, 2, 3) and total.shape == (2, 3)
    assert not (samples[1, 2] == 0).any()
    torch.testing.assert_close(total, (30 / rates).sum(0), rtol=1e-14, atol=0)


def test_samplers_name_their_bad_arguments():
    generator = torch.Generator().manual_seed(9)
    ref = torch.full((2, 4), 0.25, dtype=torch.float64)
    rewards = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^pool_size \(4\) must be at least num_samples \(5\): "
                                         r"RSO samples without replacement from the pool$"):
        sampling.rso_sample(ref, rewards, 1.0, 5, 4, generator)
    with pytest.raises(ValueError, match=r"^pool_size \(4\) must be at least num_samples \(5\): "
                                         r"RSO samples without replacement from the pool$"):
        sampling.rso_select(rewards, 5, 1.0, generator)
    with pytest.raises(ValueError, match="^num_samples must be a positive integer"):
        sampling.rso_select(rewards, 0, 1.0, generator)
    with pytest.raises(ValueError, match="^pool_rewards must be finite"):
        sampling.rso_select(rewards * math.nan, 1, 1.0, generator)
    with pytest.raises(ValueError, match="^pool_size must be a positive integer"):
        sampling.rso_sample(ref, rewards, 1.0, 1, 0, generator)
    with pytest.raises(ValueError, match="^num_samples must be a positive integer"):
        sampling.multi_step_rejection_sample(ref, rewards, [1.0], 0, generator)
    with pytest.raises(ValueError, match="^num_runs must be a positive integer"):
        sampling.rso_bias(ref, rewards, 1.0, num_samples=1, pool_size=2, num_runs=0,
                          generator=generator)
    for sampler in (lambda probs: sampling.rso_sample(probs, rewards, 1.0, 1, 2, generator),
                    lambda probs: sampling.multi_step_rejection_sample(probs, rewards, [1.0], 2,
                                                                       generator),
                    lambda probs: sampling.rso_bias(probs, rewards, 1.0, num_samples=1,
                                                    pool_size=2, num_runs=1,
                                                    generator=generator)):
        with pytest.raises(ValueError, match="^ref_probs must"):
            sampler(-ref)


def test_rso_sample_broadcasts_a_shared_reference_against_batched_rewards():
    """pi0 [K] with rewards [B, K]: one pool per row of the broadcast shape."""
    ref = torch.full((4,), 0.25, dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 0.0, 9.0], [9.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    draws = sampling.rso_sample(ref, rewards, 0.01, 1, 64, torch.Generator().manual_seed(10))
    assert draws.shape == (2, 1) and draws.flatten().tolist() == [3, 0]


def test_refusal_message_states_the_rate_and_the_expected_proposals():
    import re

    ref = torch.tensor([1 - 1e-12, 1e-12], dtype=torch.float64)
    rewards = torch.tensor([0.0, 1.0], dtype=torch.float64)
    rate = acceptance_rate(ref, rewards, 1e-3).item()
    message = (f"eta is too small for one-step rejection: acceptance rate {rate:.3g} needs about "
               f"{10 / rate:.3g} proposals; use multi-step rejection sampling through a "
               "decreasing eta schedule")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        rejection_sample(ref, rewards, 1e-3, 10, torch.Generator().manual_seed(0))


def test_measured_rate_counts_the_proposals_of_every_round():
    """1024 rows at acceptance rate 0.01 and 60 draws each: a round holds at most 2^22 / 1024 + 1
    proposals per row, fewer than the 6000 a row needs on average, so most rows take two rounds;
    the measured rate (float64) must still average to the exact rate (within 5%: the mean of 1024
    ratios with about 60 acceptances each has a relative standard deviation near 0.4%)."""
    ref = torch.tensor([0.99, 0.01], dtype=torch.float64).expand(1024, 2)
    rewards = torch.tensor([0.0, 1.0], dtype=torch.float64)
    samples, rates = rejection_sample(ref, rewards, 0.01, 60, torch.Generator().manual_seed(1))
    exact = acceptance_rate(ref[0], rewards, 0.01).item()
    assert rates.dtype == torch.float64 and rates.shape == (1024,)
    assert abs(rates.mean().item() / exact - 1) < 0.05
    assert (samples == 1).all()


def test_schedules_reject_bad_stages_and_name_them():
    """Stages must be positive, finite and strictly decreasing; a geometric schedule needs
    0 < eta_end <= eta_start < inf (equal ends give one repeated value) and a positive count."""
    for etas in ([1.0, 0.0], [1.0, math.nan]):
        with pytest.raises(ValueError, match="^etas must be a non-empty sequence of positive"):
            sampling.stage_temperatures(etas)
    for etas in ([1.0, 1.0], [1.0, 0.5, 0.7]):
        with pytest.raises(ValueError, match="^etas must be strictly decreasing"):
            sampling.stage_temperatures(etas)
    assert sampling.geometric_schedule(0.5, 0.5, 1).tolist() == [0.5]
    assert sampling.stage_temperatures([1.0, 0.3]).dtype == torch.float64  # a list of floats
    for start, end in [(1.0, 0.0), (math.inf, 0.5)]:
        with pytest.raises(ValueError, match="^need 0 < eta_end <= eta_start < inf"):
            sampling.geometric_schedule(start, end, 2)
    with pytest.raises(ValueError, match="^num_stages must be a positive integer"):
        sampling.geometric_schedule(1.0, 0.5, 0)
    with pytest.raises(ValueError, match="^ref_probs must"):
        sampling.multi_step_acceptance_rates(torch.tensor([0.5, -0.5]), torch.zeros(2), [1.0])
