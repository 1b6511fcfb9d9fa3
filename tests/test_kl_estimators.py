"""Tests of gsfh_utils.kl_estimators against direct formulas and brute-force enumeration."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import EPS, distributions
from hypothesis import given
from hypothesis import strategies as st

import gsfh_utils as gu
from gsfh_utils.kl_estimators import (
    bias_test,
    kl_estimates,
    kl_estimates_from_samples,
    kl_estimator_moments,
    mean_error_ratio,
    monte_carlo_means,
)
from gsfh_utils.sampling import sample_categorical


@given(st.floats(-20, 20), st.floats(-20, 20))
def test_estimates_match_formulas(log_p, log_q):
    values = kl_estimates(torch.tensor(log_p, dtype=torch.float64),
                          torch.tensor(log_q, dtype=torch.float64))
    ratio = math.exp(log_q - log_p)  # q/p
    assert values["k1"].item() == pytest.approx(log_p - log_q, abs=1e-12)
    assert values["k2"].item() == pytest.approx(0.5 * (log_p - log_q) ** 2, rel=1e-12, abs=1e-12)
    assert values["k3"].item() == pytest.approx(ratio - 1 - math.log(ratio), rel=1e-9, abs=1e-9)
    assert values["k3"].item() >= 0


@st.composite
def pairs(draw):
    num_actions = draw(st.integers(1, 6))
    p = draw(distributions(num_actions, allow_zeros=True, min_prob=1e-6))
    q = draw(distributions(num_actions, allow_zeros=False, min_prob=1e-6))
    return torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)


@given(pairs())
def test_moments_by_enumeration(pq):
    p, q = pq
    moments = kl_estimator_moments(p, q)
    kl = gu.kl_divergence(p, q).item()
    # brute force in plain Python over the actions
    for name in ("k1", "k2", "k3"):
        values = []
        for pa, qa in zip(p.tolist(), q.tolist(), strict=True):
            if pa == 0:
                continue
            delta = math.log(pa / qa)
            values.append((pa, {"k1": delta, "k2": delta**2 / 2,
                                "k3": math.exp(-delta) - 1 + delta}[name]))
        mean = sum(w * v for w, v in values)
        var = sum(w * (v - mean) ** 2 for w, v in values)
        scale = 1 + sum(w * abs(v) for w, v in values)
        assert moments[name][0].item() == pytest.approx(mean, abs=1e-9 * scale)
        assert moments[name][1].item() == pytest.approx(var, rel=1e-7, abs=1e-9 * scale**2)
    # k1 is unbiased; k3 is unbiased up to the q-mass outside the support of p
    assert moments["k1"][0].item() == pytest.approx(kl, abs=1e-9 * (1 + kl))
    missing = q[p == 0].sum().item()
    assert moments["k3"][0].item() == pytest.approx(kl - missing, abs=1e-9 * (1 + kl) + 1e-9)


def test_k2_is_second_order_accurate():
    generator = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(6, dtype=torch.float64, generator=generator), -1)
    direction = torch.randn(6, dtype=torch.float64, generator=generator)
    biases = []
    for scale in (0.1, 0.05):
        p = torch.softmax(torch.log(q) + scale * direction, -1)
        biases.append(abs(kl_estimator_moments(p, q)["k2"][0].item()
                          - gu.kl_divergence(p, q).item()))
    # |E k2 - KL| = O(scale^3): halving the scale divides it by about 8
    assert biases[0] / biases[1] == pytest.approx(8, rel=0.2)


def test_monte_carlo_means():
    generator = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(2, 5, dtype=torch.float64, generator=generator), -1)
    q = torch.softmax(torch.randn(2, 5, dtype=torch.float64, generator=generator), -1)
    samples = torch.multinomial(p, 50000, replacement=True, generator=generator)
    estimates = kl_estimates_from_samples(samples, p, q)
    moments = kl_estimator_moments(p, q)
    for name, values in estimates.items():
        z = (values.mean(-1) - moments[name][0]) / (moments[name][1] / 50000).sqrt()
        assert z.abs().max() < 5


def test_bad_inputs():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^q must be positive wherever p is \(otherwise KL\(p"):
        kl_estimator_moments(p, torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="^samples"):
        kl_estimates_from_samples(torch.tensor([0.0, 1.0]), p, p)
    with pytest.raises(ValueError, match=r"^log_p must be finite at samples of p \(a sample"):
        kl_estimates(torch.tensor([-math.inf]), torch.tensor([0.0]))


def test_bias_test_against_a_direct_chebyshev_computation():
    """The p-value is the largest over rows of min(1, 1/z^2), z from the same draws; k2 is
    detected far from q, k1 (unbiased) is not."""
    q = torch.softmax(torch.randn(3, 6, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(2)), -1)
    p = torch.softmax(4 * torch.randn(3, 6, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(3)), -1)
    for name in ("k1", "k2"):
        result = bias_test(p, q, name, 20000, torch.Generator().manual_seed(4))
        draws = torch.multinomial(p, 20000, replacement=True,
                                  generator=torch.Generator().manual_seed(4))
        mean = kl_estimates_from_samples(draws, p, q)[name].mean(-1)
        z = (mean - gu.kl_divergence(p, q)).abs() / (
            kl_estimator_moments(p, q)[name][1] / 20000).sqrt()
        assert result.p_value == pytest.approx(min(1.0, float((1 / z**2).max())), rel=1e-9)
    detected = bias_test(p, q, "k2", 20000, torch.Generator().manual_seed(4))
    assert detected.p_value < 0.01 and "in every one of 3 rows" in detected.test
    assert bias_test(p, q, "k1", 20000, torch.Generator().manual_seed(4)).p_value > 0.01
    with pytest.raises(ValueError, match="^name"):
        bias_test(p, q, "k4", 10, torch.Generator())
    with pytest.raises(ValueError, match="^p must have shape"):
        bias_test(p[0], q[0], "k1", 10, torch.Generator())


def test_python_numbers_are_read_in_float64():
    """log p and log q given as Python numbers are float64: k1 = log p - log q to round-off."""
    values = kl_estimates([math.log(0.1)], [math.log(0.2)])
    assert values["k1"].dtype == torch.float64
    assert abs(values["k1"].item() - math.log(0.5)) <= 4 * EPS
    with pytest.raises(ValueError, match="^log_p and log_q must not contain NaN$"):
        kl_estimates([0.0], [math.nan])
    with pytest.raises(ValueError, match="^log_p and log_q must not contain NaN$"):
        kl_estimates([math.nan], [0.0])


def test_batched_samples_pick_their_own_rows():
    """kl_estimates_from_samples on p, q [2, 3] with samples [2, n]: row r of the samples indexes
    row r of p and q (along the action dimension)."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    q = torch.tensor([[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]], dtype=torch.float64)
    samples = torch.tensor([[0, 2], [2, 1]])
    k1 = kl_estimates_from_samples(samples, p, q)["k1"]
    expected = [[math.log(0.5 / 0.2), math.log(0.2 / 0.6)],
                [math.log(0.8 / 0.4), math.log(0.1 / 0.3)]]
    assert torch.allclose(k1, torch.tensor(expected, dtype=torch.float64), rtol=1e-14)
    with pytest.raises(ValueError, match=r"samples must be integer indices of shape \[\(2,\), n\]"):
        kl_estimates_from_samples(samples[:1], p, q)
    # two batch dimensions [2, 2, 3]: each (i, j) row of samples indexes row (i, j)
    p3, q3 = torch.stack([p, p.flip(0)]), torch.stack([q, q.flip(0)])
    samples3 = torch.stack([samples, samples.flip(0)])
    k1 = kl_estimates_from_samples(samples3, p3, q3)["k1"]
    assert torch.allclose(k1, torch.stack([k1[0], k1[0].flip(0)]))
    assert torch.allclose(k1[0], torch.tensor(expected, dtype=torch.float64), rtol=1e-14)
    message = re.escape("samples must be integer indices of shape [(2, 2), n]")
    with pytest.raises(ValueError, match=f"^{message}"):
        kl_estimates_from_samples(samples, p3, q3)


def test_monte_carlo_means_and_their_standardised_errors_by_hand():
    """The means of the draws' estimates (draws replayed from the same seed) and their distance
    to the exact means in standard errors sqrt(variance / n)."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64).expand(2, 2, 3)
    q = torch.tensor([[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]], dtype=torch.float64).expand(2, 2, 3)
    means, errors = monte_carlo_means(p, q, 500, torch.Generator().manual_seed(0))
    draws = sample_categorical(p, 500, torch.Generator().manual_seed(0))
    moments = kl_estimator_moments(p, q)
    for name, values in kl_estimates_from_samples(draws, p, q).items():
        assert torch.allclose(means[name], values.mean(-1), rtol=1e-14)
        mean, variance = moments[name]
        expected = (values.mean(-1) - mean).abs() / (variance / 500).sqrt()
        assert torch.allclose(errors[name], expected, rtol=1e-12)


@pytest.mark.parametrize("function", ["from_samples", "moments", "monte_carlo", "bias_test",
                                      "mean_error_ratio"])
def test_bad_distributions_are_named(function):
    good = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    bad = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    three = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
    call = {
        "from_samples": lambda p, q: kl_estimates_from_samples(torch.zeros(1, 2, dtype=torch.long),
                                                               p, q),
        "moments": kl_estimator_moments,
        "monte_carlo": lambda p, q: monte_carlo_means(p, q, 10, torch.Generator()),
        "bias_test": lambda p, q: bias_test(p, q, "k1", 10, torch.Generator()),
        "mean_error_ratio": lambda p, q: mean_error_ratio(p, q, "k1"),
    }[function]
    with pytest.raises(ValueError, match="^p must"):
        call(bad, good)
    with pytest.raises(ValueError, match="^q must"):
        call(good, bad)
    if function in ("from_samples", "moments"):
        with pytest.raises(ValueError, match=r"^p \(shape \(1, 2\)\) and q \(shape \(1, 3\)\)"):
            call(good, three)


def test_mean_error_ratio_is_round_off_for_k1_only():
    """E_p k1 = KL(p || q) to round-off (ratio <= 1); k2 is biased far beyond it."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    q = torch.tensor([[0.2, 0.2, 0.6], [0.3, 0.3, 0.4]], dtype=torch.float64)
    assert (mean_error_ratio(p, q, "k1") <= 1).all()
    assert (mean_error_ratio(p, q, "k2") > 1e6).all()
    # batched over rows: each row is the ratio of its own distribution (its own bound)
    for name in ("k1", "k2"):
        batched = mean_error_ratio(p, q, name)
        for row in range(2):
            single = mean_error_ratio(p[row], q[row], name)
            assert batched[row].item() == pytest.approx(single.item(), rel=1e-12)
    # the value by hand, p with a zero: |E k2 - KL| / ((K + 8) u sum_a p (|log p/q| + q/p + 1))
    p0 = [0.0, 0.4, 0.6]
    q0 = [0.2, 0.3, 0.5]
    terms = [(a, b) for a, b in zip(p0, q0, strict=True) if a > 0]
    kl = sum(a * math.log(a / b) for a, b in terms)
    k2 = sum(a * math.log(a / b) ** 2 / 2 for a, b in terms)
    magnitude = sum(a * (abs(math.log(a / b)) + b / a + 1) for a, b in terms)
    expected = abs(k2 - kl) / ((3 + 8) * 2.0**-53 * magnitude)
    value = mean_error_ratio(torch.tensor(p0, dtype=torch.float64),
                             torch.tensor(q0, dtype=torch.float64), "k2")
    assert value.item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="^name must be one of"):
        mean_error_ratio(p, q, "k4")
