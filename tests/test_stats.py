"""Statistical helpers behind the claims, against scipy (an independent implementation)."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.lab import stats
from gsfh_utils.lab.stats import (
    MIN_EXPECTED_COUNT,
    binomial_z_scores,
    chi_square_pvalue,
    empirical_counts,
    loglog_slope,
    normal_quantile,
)

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def scipy_pvalue(counts, expected) -> float:
    return scipy.stats.chisquare(list(counts), list(expected)).pvalue


@given(st.integers(2, 8).flatmap(
    lambda k: st.tuples(st.lists(st.floats(0.05, 1.0), min_size=k, max_size=k),
                        st.lists(st.integers(0, 400), min_size=k, max_size=k))))
def test_chi_square_pvalue_matches_scipy_when_no_bin_is_pooled(data):
    weights, counts = data
    probs = t(weights) / sum(weights)
    counts = t(counts)
    total = counts.sum().item()
    expected = probs * total
    if total == 0 or expected.min() < MIN_EXPECTED_COUNT:
        counts = counts + math.ceil(MIN_EXPECTED_COUNT / probs.min().item())  # make bins large
        expected = probs * counts.sum()
    pvalue = chi_square_pvalue(counts, probs).item()
    reference = scipy_pvalue(counts.tolist(), expected.tolist())
    assert math.isclose(pvalue, reference, rel_tol=1e-9, abs_tol=1e-300)


def test_chi_square_pvalue_is_batched():
    probs = t([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    counts = t([[30.0, 20.0, 50.0], [50.0, 30.0, 20.0]])
    pvalues = chi_square_pvalue(counts, probs)
    assert pvalues.shape == (2,)
    for row in range(2):
        assert math.isclose(pvalues[row].item(),
                            scipy_pvalue(counts[row].tolist(), (probs[row] * 100).tolist()),
                            rel_tol=1e-9)


def test_small_bins_are_pooled_into_one():
    # n = 60: expected (24, 24, 6, 3, 3); the two bins below 5 are pooled into one of 6
    probs = t([0.4, 0.4, 0.1, 0.05, 0.05])
    counts = t([20.0, 27.0, 7.0, 5.0, 1.0])
    reference = scipy_pvalue([20, 27, 7, 6], [24, 24, 6, 6])
    assert math.isclose(chi_square_pvalue(counts, probs).item(), reference, rel_tol=1e-9)
    # a pooled bin is kept even when its own expectation stays below 5 (here 3)
    probs = t([0.45, 0.5, 0.05])
    counts = t([25.0, 30.0, 5.0])
    reference = scipy_pvalue([25, 30, 5], [27, 30, 3])
    assert math.isclose(chi_square_pvalue(counts, probs).item(), reference, rel_tol=1e-9)


def test_no_degree_of_freedom_gives_p_one():
    # every bin small: one pooled bin, dof 0, nothing to test
    assert chi_square_pvalue(t([1.0, 5.0]), t([0.5, 0.5])).item() == 1.0
    # one action only
    assert chi_square_pvalue(t([10.0]), t([1.0])).item() == 1.0


def test_draws_on_zero_probability_bins_give_p_zero():
    probs = t([0.5, 0.5, 0.0])
    assert chi_square_pvalue(t([50.0, 49.0, 1.0]), probs).item() == 0.0
    # zero-probability bins without draws are harmless
    reference = scipy_pvalue([55, 45], [50, 50])
    assert math.isclose(chi_square_pvalue(t([55.0, 45.0, 0.0]), probs).item(), reference,
                        rel_tol=1e-9)
    batched = chi_square_pvalue(t([[50.0, 49.0, 1.0], [55.0, 45.0, 0.0]]), probs.expand(2, 3))
    assert batched[0].item() == 0.0 and batched[1].item() > 0


def test_pvalue_is_calibrated_under_the_null():
    """2000 multinomial samples from probs: the share of p-values below 0.05 is 0.05 up to a
    binomial bound at two-sided level 1e-4 (the chi-square approximation at n = 200 with
    expected counts >= 10 is far more accurate than that bound)."""
    probs = t([0.05, 0.15, 0.3, 0.5])
    generator = torch.Generator().manual_seed(0)
    samples = torch.multinomial(probs.expand(2000, 4), 200, replacement=True, generator=generator)
    pvalues = chi_square_pvalue(empirical_counts(samples, 4), probs.expand(2000, 4))
    share = (pvalues < 0.05).to(F64).mean().item()
    z = normal_quantile(1 - 1e-4 / 2)
    assert abs(share - 0.05) <= z * math.sqrt(0.05 * 0.95 / 2000)


def test_chi_square_bad_input():
    with pytest.raises(ValueError, match="counts .* and probs .* differ"):
        chi_square_pvalue(t([1.0, 2.0, 3.0]), t([0.5, 0.5]))
    with pytest.raises(ValueError, match="probs must sum to 1"):
        chi_square_pvalue(t([1.0, 2.0]), t([0.5, 0.6]))
    with pytest.raises(ValueError, match="probs must be non-negative"):
        chi_square_pvalue(t([1.0, 2.0]), t([-0.5, 1.5]))


def test_empirical_counts_against_bincount():
    generator = torch.Generator().manual_seed(1)
    samples = torch.randint(0, 5, (2, 3, 50), generator=generator)
    counts = empirical_counts(samples, 6)  # one action never drawn
    assert counts.shape == (2, 3, 6) and counts.dtype == F64
    for i in range(2):
        for j in range(3):
            expected = torch.bincount(samples[i, j], minlength=6).to(F64)
            assert torch.equal(counts[i, j], expected)
    assert torch.all(counts.sum(-1) == 50) and torch.all(counts[..., 5] == 0)
    assert torch.equal(empirical_counts(torch.tensor([2, 2, 0]), 3), t([1.0, 0.0, 2.0]))


def test_empirical_total_variation_by_hand():
    # draws 0, 0, 1, 3: empirical law (1/2, 1/4, 0, 1/4) against (1/4, 1/4, 1/4, 1/4)
    samples = torch.tensor([[0, 0, 1, 3], [0, 1, 2, 3]])
    tv = stats.empirical_total_variation(samples, t([0.25] * 4))
    assert torch.allclose(tv, t([0.25, 0.0]), atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="samples"):
        stats.empirical_total_variation(torch.zeros(2, 0, dtype=torch.long), t([0.5, 0.5]))
    with pytest.raises(ValueError, match="probs"):
        stats.empirical_total_variation(samples, t([0.5, 0.6, 0.0, 0.0]))


@given(st.lists(st.integers(0, 4), min_size=1, max_size=40),
       st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5).filter(lambda w: sum(w) > 1e-3))
def test_empirical_total_variation_is_a_tv_in_unit_interval(draws, weights):
    probs = t(weights) / sum(weights)
    tv = stats.empirical_total_variation(torch.tensor(draws), probs).item()
    law = torch.bincount(torch.tensor(draws), minlength=5).to(F64) / len(draws)
    assert 0.0 <= tv <= 1.0 + 1e-12
    assert math.isclose(tv, 0.5 * (law - probs).abs().sum().item(), abs_tol=1e-12)


@pytest.mark.parametrize("probability", [1e-12, 1e-3, 0.025, 0.3, 0.5, 0.975, 1 - 1e-9])
def test_normal_quantile_matches_scipy(probability):
    assert math.isclose(normal_quantile(probability), scipy.stats.norm.ppf(probability),
                        rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("probability", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_normal_quantile_rejects_probabilities_outside_the_open_interval(probability):
    with pytest.raises(ValueError, match="probability"):
        normal_quantile(probability)


def test_binomial_z_scores():
    assert math.isclose(binomial_z_scores(t(0.6), 100, 0.5).item(), 2.0, rel_tol=1e-14)
    rates = t([0.5, 0.45, 0.2])
    trials = t([400.0, 100.0, 1e6])
    probability = t([0.5, 0.5, 0.1])
    z = binomial_z_scores(rates, trials, probability)
    expected = [(r - p) / math.sqrt(p * (1 - p) / n) for r, n, p in zip(
        rates.tolist(), trials.tolist(), probability.tolist(), strict=True)]
    torch.testing.assert_close(z, t(expected), rtol=1e-14, atol=1e-14)
    # a scalar probability broadcasts against a batch of rates
    assert binomial_z_scores(t([0.5, 0.6]), 100, 0.5).shape == (2,)
    # it agrees with the normal approximation scipy uses for a binomial proportion
    successes, n, p = 530, 1000, 0.5
    reference = (successes - n * p) / math.sqrt(scipy.stats.binom.var(n, p))
    assert math.isclose(binomial_z_scores(t(successes / n), n, p).item(), reference,
                        rel_tol=1e-12)


def test_empirical_counts_rejects_indices_outside_the_actions():
    with pytest.raises(ValueError, match="samples must be action indices"):
        empirical_counts(torch.tensor([[0, 3]]), 3)


def test_sign_test_matches_the_binomial_tail():
    first = t([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    second = t([2.0, 3, 4, 5, 6, 7, 8, 1, 9, math.inf])  # 8 wins, 1 loss, 1 tie
    result = stats.sign_test(first, second)
    assert (result.details["wins"], result.details["losses"], result.details["ties"]) == (8, 1, 1)
    assert result.p_value == pytest.approx(
        scipy.stats.binomtest(8, 9, 0.5, alternative="greater").pvalue, rel=1e-12)
    assert result.effect == pytest.approx(8 / 9) and result.num_samples == 10
    assert stats.sign_test(first, first).p_value == 1.0
    with pytest.raises(ValueError, match="paired"):
        stats.sign_test(first, first[:3])


def test_paired_and_two_sample_tests_match_scipy():
    generator = torch.Generator().manual_seed(13)
    first = torch.randn(40, dtype=F64, generator=generator) + 0.5
    second = torch.randn(40, dtype=F64, generator=generator)
    wilcoxon = stats.wilcoxon_test(first, second, "greater")
    assert wilcoxon.p_value == pytest.approx(scipy.stats.wilcoxon(
        first.numpy(), second.numpy(), alternative="greater").pvalue, rel=1e-12)
    assert wilcoxon.effect == pytest.approx((first - second).mean().item())
    assert wilcoxon.p_value < stats.wilcoxon_test(first, second, "less").p_value
    whitney = stats.mann_whitney_test(first, second, "greater")
    reference = scipy.stats.mannwhitneyu(first.numpy(), second.numpy(), alternative="greater")
    assert whitney.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    # the effect is P(first > second), counted pair by pair
    pairs = (first[:, None] > second[None, :]).double().mean().item()
    assert whitney.effect == pytest.approx(pairs, rel=1e-12)
    welch = stats.welch_test(first, second)
    assert welch.p_value == pytest.approx(scipy.stats.ttest_ind(
        first.numpy(), second.numpy(), equal_var=False, alternative="greater").pvalue, rel=1e-12)
    with pytest.raises(ValueError, match="paired"):
        stats.wilcoxon_test(first, second[:-1])
    with pytest.raises(ValueError, match="alternative"):
        stats.mann_whitney_test(first, second, "bigger")


def test_one_sample_binomial_and_coverage_tests():
    values = t([0.3, -0.1, 0.5, 0.2, 0.4, 0.1])
    result = stats.mean_test(values)
    assert result.p_value == pytest.approx(
        scipy.stats.ttest_1samp(values.numpy(), 0.0, alternative="greater").pvalue, rel=1e-12)
    assert result.effect == pytest.approx(values.mean().item())
    binomial = stats.binomial_test(30, 40, 0.5)
    assert binomial.p_value == pytest.approx(
        scipy.stats.binomtest(30, 40, 0.5, alternative="greater").pvalue, rel=1e-12)
    assert binomial.effect == 0.75
    # coverage: 90 of 100 events where 95% are promised is significantly short (one-sided)
    covered = torch.zeros(100, dtype=torch.bool)
    covered[:90] = True
    coverage = stats.coverage_test(covered, 0.95)
    assert coverage.p_value == pytest.approx(
        scipy.stats.binomtest(90, 100, 0.95, alternative="less").pvalue, rel=1e-12)
    assert coverage.p_value < 0.05 and coverage.effect == 0.9
    assert stats.coverage_test(torch.ones(100, dtype=torch.bool), 0.95).p_value == 1.0
    with pytest.raises(ValueError, match="successes"):
        stats.binomial_test(5, 4)
    with pytest.raises(ValueError, match="target"):
        stats.coverage_test(covered, 1.0)


def test_slope_test_against_linregress():
    generator = torch.Generator().manual_seed(12)
    sizes = t([10.0, 30.0, 100.0, 300.0]).repeat_interleave(25)
    values = 3 * sizes**-0.7 * torch.exp(0.2 * torch.randn(100, dtype=F64, generator=generator))
    slope, lower, upper = loglog_slope(sizes, values, level=0.95)
    reference = scipy.stats.linregress(sizes.log().numpy(), values.log().numpy())
    half = scipy.stats.t.ppf(0.975, 98) * reference.stderr
    assert math.isclose(slope, reference.slope, rel_tol=1e-10)
    assert math.isclose(upper - slope, half, rel_tol=1e-8)
    assert lower < -0.7 < upper
    result = stats.slope_test(sizes, values, -0.5, "less")
    statistic = (reference.slope + 0.5) / reference.stderr
    assert result.p_value == pytest.approx(scipy.stats.t.cdf(statistic, 98), rel=1e-8)
    assert result.effect == pytest.approx(reference.slope)
    two_sided = stats.slope_test(sizes, values, -0.7, "two-sided")
    assert two_sided.p_value == pytest.approx(
        2 * scipy.stats.t.sf(abs((reference.slope + 0.7) / reference.stderr), 98), rel=1e-8)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope(sizes, -values)
    with pytest.raises(ValueError, match="level"):
        loglog_slope(sizes, values, level=1.0)


def test_every_is_the_intersection_union_test():
    results = [stats.binomial_test(k, 20) for k in (15, 17, 19)]
    combined = stats.every(results, "seeds")
    assert combined.p_value == max(r.p_value for r in results)
    assert combined.effect == 0.75 and combined.num_samples == 3
    assert "every one of 3 seeds" in combined.test
    with pytest.raises(ValueError, match="at least one"):
        stats.every([], "seeds")


def test_z_and_chebyshev_tests():
    z = stats.z_test(1.3, 1.0, 0.1, alternative="greater")
    assert z.p_value == pytest.approx(scipy.stats.norm.sf(3.0), rel=1e-12)
    assert z.effect == pytest.approx(0.3)
    assert stats.z_test(1.3, 1.0, 0.1).p_value == pytest.approx(2 * scipy.stats.norm.sf(3.0))
    chebyshev = stats.chebyshev_test(1.3, 1.0, 0.1)
    assert chebyshev.p_value == pytest.approx(1 / 9) and chebyshev.details["z"] == pytest.approx(3)
    assert stats.chebyshev_test(1.0, 1.0, 0.1).p_value == 1.0
    for test in (stats.z_test, stats.chebyshev_test):
        with pytest.raises(ValueError, match="standard_error"):
            test(1.0, 1.0, 0.0)


def test_worst_ratio_and_summary():
    measured, bound, ratio = stats.worst_ratio(t([1.0, 3.0, 2.0]), t([4.0, 5.0, 2.5]))
    assert (measured, bound, ratio) == (2.0, 2.5, 0.8)
    assert stats.worst_ratio(t([1.0, 3.0]), 4.0, where=[True, False])[2] == 0.25
    with pytest.raises(ValueError, match="no entry"):
        stats.worst_ratio(t([1.0]), 1.0, where=[False])
    text = stats.binomial_test(30, 40).summary()
    assert text.startswith("exact binomial test against 0.5: observed proportion 0.75")
    assert "p = " in text and "40 samples" in text
    assert stats.TestResult("t", 1e-9, 0.5, "e", 3).summary().endswith("p < 1e-06")


@pytest.mark.parametrize(("interval", "expected"), [
    ((-1.2, -0.8), True), ((-1.25, -0.75), True), ((-1.26, -0.9), False), ((-1.1, -0.7), False),
    ((float("nan"), -0.9), False)])
def test_within_margin(interval, expected):
    assert stats.within_margin(interval, -1.0, 0.25) is expected


def test_slope_summary_reads_the_slope_test():
    sizes = torch.tensor([100.0, 1000.0, 10000.0]).repeat_interleave(4)
    noise = torch.tensor([1.0, 1.1, 0.9, 1.05] * 3, dtype=F64)
    fit = stats.slope_test(sizes, noise / sizes, -1.0, "two-sided")
    row = stats.slope_summary(fit, -1.0, 0.25)
    low, high = fit.details["interval"]
    assert row == {"fitted slope": round(fit.effect, 3), "99% interval": f"[{low:.3f}, {high:.3f}]",
                   "inside -1 ± 0.25": stats.within_margin((low, high), -1.0, 0.25)}
