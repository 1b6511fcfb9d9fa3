"""Tests of gsfh_utils.estimation: the Bradley-Terry MLE, Sigma_D, gamma, beta, nu and the norms.

Every function is checked against an independent computation: scipy's L-BFGS for the MLE,
finite differences for the gradient, explicit sums and inverses for the closed forms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize

import gsfh_utils as gu
from gsfh_utils import estimation


def random_problem(batch, num_pairs, dim, seed, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, dtype=torch.float64, generator=generator)
    theta = scale * theta / theta.norm()
    z = torch.randn(*batch, num_pairs, dim, dtype=torch.float64, generator=generator) / dim**0.5
    labels = (torch.rand(*batch, num_pairs, dtype=torch.float64, generator=generator)
              < torch.sigmoid(z @ theta)).to(torch.float64)
    return z, labels


def scipy_fit(z, labels, reg):
    """Independent reference: L-BFGS-B with the analytic gradient, to a tight tolerance."""
    z, signs = z.numpy(), (2 * labels - 1).numpy()

    def objective(w):
        margins = signs * (z @ w)
        value = np.logaddexp(0, -margins).sum() + 0.5 * reg * w @ w
        return value, -z.T @ (signs / (1 + np.exp(margins))) + reg * w

    result = minimize(objective, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B",
                      options=dict(gtol=1e-11, ftol=0, maxiter=10_000))
    return torch.from_numpy(result.x)


def test_fit_bt_mle_is_exported():
    assert gu.fit_bt_mle is estimation.fit_bt_mle


@pytest.mark.parametrize("num_pairs,dim,reg", [(5, 2, 1.0), (50, 4, 0.1), (300, 8, 1.0),
                                               (40, 6, 1e-3)])
def test_fit_matches_scipy(num_pairs, dim, reg):
    z, labels = random_problem((6,), num_pairs, dim, seed=num_pairs + dim)
    theta = estimation.fit_bt_mle(z, labels, reg)
    for row in range(6):
        reference = scipy_fit(z[row], labels[row], reg)
        # Both are within (gradient norm) / reg of the unique minimiser (strong convexity).
        assert torch.allclose(theta[row], reference, atol=1e-6 / min(reg, 1.0) ** 0.5, rtol=0)


def test_fit_converges_to_stated_tolerance_and_is_stationary():
    z, labels = random_problem((3, 4), 200, 5, seed=1)
    theta = estimation.fit_bt_mle(z, labels, 0.5)
    assert theta.shape == (3, 4, 5)
    gradient = estimation.bt_gradient(theta, z, labels, 0.5)
    assert gradient.norm(dim=-1).max() <= estimation.MLE_TOLERANCE


def test_batched_fit_equals_single_fits():
    z, labels = random_problem((5,), 120, 4, seed=2)
    batched = estimation.fit_bt_mle(z, labels, 1.0)
    single = torch.stack([estimation.fit_bt_mle(z[i], labels[i], 1.0) for i in range(5)])
    assert torch.allclose(batched, single, atol=1e-9, rtol=0)


def test_fit_chunks_give_the_same_answer(monkeypatch):
    z, labels = random_problem((7,), 64, 3, seed=3)
    whole = estimation.fit_bt_mle(z, labels, 1.0)
    monkeypatch.setattr(estimation, "CHUNK_BYTES", 1)  # one problem per chunk
    assert torch.allclose(estimation.fit_bt_mle(z, labels, 1.0), whole, atol=1e-9, rtol=0)


def test_fit_separable_data_with_small_ridge():
    # Labels all agree with <theta, z> > 0: the plain MLE diverges, the ridge keeps it finite.
    z = torch.tensor([[1.0, 0.0], [0.5, 0.2], [2.0, -0.1]], dtype=torch.float64)
    labels = torch.ones(3, dtype=torch.float64)
    theta = estimation.fit_bt_mle(z, labels, 1e-4)
    assert torch.isfinite(theta).all() and theta[0] > 1
    assert estimation.bt_gradient(theta, z, labels, 1e-4).norm() <= estimation.MLE_TOLERANCE


def test_gradient_matches_finite_differences():
    z, labels = random_problem((), 30, 3, seed=4)
    theta = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    gradient = estimation.bt_gradient(theta, z, labels, 0.7)
    step = 1e-6
    numeric = torch.stack([
        (estimation.bt_objective(theta + step * e, z, labels, 0.7)
         - estimation.bt_objective(theta - step * e, z, labels, 0.7)) / (2 * step)
        for e in torch.eye(3, dtype=torch.float64)])
    assert torch.allclose(gradient, numeric, atol=1e-6, rtol=1e-6)


@examples(25)
@given(num_pairs=st.integers(1, 40), dim=st.integers(1, 5),
       log_reg=st.floats(-2, 1), seed=st.integers(0, 10_000), scale=st.floats(0.1, 8.0))
def test_fit_property_stationary_and_minimal(num_pairs, dim, log_reg, seed, scale):
    reg = 10.0**log_reg
    z, labels = random_problem((2,), num_pairs, dim, seed, scale)
    theta = estimation.fit_bt_mle(z, labels, reg)
    assert estimation.bt_gradient(theta, z, labels, reg).norm(dim=-1).max() <= 1e-9
    # No random perturbation has a smaller objective (convexity: the stationary point is the min).
    generator = torch.Generator().manual_seed(seed)
    perturbed = theta.unsqueeze(0) + 1e-3 * torch.randn(16, 2, dim, dtype=torch.float64,
                                                        generator=generator)
    base = estimation.bt_objective(theta, z, labels, reg)
    assert (estimation.bt_objective(perturbed, z, labels, reg) >= base - 1e-12).all()


def test_fit_bad_inputs():
    z, labels = random_problem((), 10, 3, seed=5)
    with pytest.raises(ValueError, match="empty"):
        estimation.fit_bt_mle(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0), 1.0)
    with pytest.raises(ValueError, match="^labels"):
        estimation.fit_bt_mle(z, labels + 1, 1.0)
    with pytest.raises(ValueError, match="^labels"):
        estimation.fit_bt_mle(z, torch.full((10,), 0.5), 1.0)
    with pytest.raises(ValueError, match="^labels"):
        estimation.fit_bt_mle(z, labels[:-1], 1.0)  # mismatched n
    with pytest.raises(ValueError, match="^feature_diffs"):
        estimation.fit_bt_mle(z[0], labels, 1.0)  # no pair dimension
    with pytest.raises(ValueError, match="^feature_diffs"):
        estimation.fit_bt_mle(z * float("nan"), labels, 1.0)
    for reg in (0.0, -1.0, float("nan"), float("inf"), "a"):
        with pytest.raises(ValueError, match="^reg"):
            estimation.fit_bt_mle(z, labels, reg)


def test_fit_reports_non_convergence():
    z, labels = random_problem((), 50, 3, seed=6)
    with pytest.raises(RuntimeError, match="did not converge"):
        estimation.fit_bt_mle(z, labels, 1.0, max_iter=1)


def test_sigma_d_closed_form():
    z, _ = random_problem((2,), 17, 4, seed=7)
    sigma = estimation.sigma_d(z, 0.3)
    for row in range(2):
        explicit = 0.3 * torch.eye(4, dtype=torch.float64) + sum(
            torch.outer(z[row, i], z[row, i]) for i in range(17))
        assert torch.allclose(sigma[row], explicit, atol=1e-12)
    with pytest.raises(ValueError, match="^reg"):
        estimation.sigma_d(z, 0.0)


def test_slope_bound_is_the_minimum_slope():
    for margin in (0.0, 0.5, 4.0, 30.0):
        grid = torch.linspace(-margin, margin, 10_001, dtype=torch.float64)
        slopes = torch.sigmoid(grid) * torch.sigmoid(-grid)
        assert math.isclose(estimation.slope_bound(margin), slopes.min().item(), rel_tol=1e-12)
        assert math.isclose(estimation.slope_bound(margin),
                            1 / (2 + math.exp(margin) + math.exp(-margin)), rel_tol=1e-12)
    assert 0 < estimation.slope_bound(700.0) < 1e-300  # no overflow
    with pytest.raises(ValueError, match="^margin_bound"):
        estimation.slope_bound(-1.0)


def test_confidence_radius_closed_form_and_bad_inputs():
    gamma = estimation.slope_bound(4.0)
    args = dict(dim=8, delta=0.05, gamma=gamma, reg=1.0, norm_bound=4.0)
    beta = estimation.confidence_radius(**args)
    assert math.isclose(beta, math.sqrt((8 + math.log(20)) / gamma**2 + 16), rel_tol=1e-14)
    assert math.isclose(estimation.confidence_radius(**args, constant=0.1), 0.1 * beta,
                        rel_tol=1e-14)
    for delta in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="^delta"):
            estimation.confidence_radius(**{**args, "delta": delta})
    for name, bad in [("reg", 0.0), ("gamma", 0.0), ("dim", 0), ("norm_bound", -1.0)]:
        with pytest.raises(ValueError, match=f"^{name}"):
            estimation.confidence_radius(**{**args, name: bad})
    with pytest.raises(TypeError):  # five numbers side by side: keyword-only
        estimation.confidence_radius(8, 0.05, gamma, 1.0, 4.0)


def test_reward_difference_bound_by_brute_force():
    generator = torch.Generator().manual_seed(21)
    features = torch.randn(3, 4, 2, dtype=torch.float64, generator=generator)
    largest = max((features[x, a] - features[x, b]).norm().item()
                  for x in range(3) for a in range(4) for b in range(4))
    assert math.isclose(estimation.reward_difference_bound(features, 2.5), 2.5 * largest,
                        rel_tol=1e-14)
    unit = features / features.norm(dim=-1, keepdim=True)
    assert estimation.reward_difference_bound(unit, 1.0) <= 2 + 1e-12  # at most 2B
    with pytest.raises(ValueError, match="^features"):
        estimation.reward_difference_bound(features[0], 1.0)
    with pytest.raises(ValueError, match="^norm_bound"):
        estimation.reward_difference_bound(features, -1.0)


def test_bootstrap_at_the_truth_is_the_sampling_law_of_the_mle():
    """Redrawn at theta* itself, the parametric bootstrap is the MLE's sampling law on the same
    pairs: its quantile must match the quantile of ||MLE - theta*||_Sigma over independent label
    draws (two Monte-Carlo estimates of one number, 600 draws each)."""
    generator = torch.Generator().manual_seed(22)
    z = torch.randn(1, 150, 3, dtype=torch.float64, generator=generator) / 2
    theta_star = torch.tensor([[1.0, -0.5, 0.3]], dtype=torch.float64)
    radius = estimation.bootstrap_radius(z, theta_hat=theta_star, reg=1.0, delta=0.2,
                                         num_bootstrap=600, generator=generator)
    probs = torch.sigmoid(z[0] @ theta_star[0])
    labels = (torch.rand(600, 150, dtype=torch.float64, generator=generator) < probs).double()
    fits = estimation.fit_bt_mle(z[0].expand(600, 150, 3), labels, 1.0)
    direct = estimation.sigma_norm(fits - theta_star[0], estimation.sigma_d(z[0], 1.0))
    assert radius.shape == (1,)
    assert math.isclose(radius.item(), direct.quantile(0.8).item(), rel_tol=0.08)


def test_bootstrap_radius_shapes_determinism_and_bad_inputs():
    generator = torch.Generator().manual_seed(23)
    z = torch.randn(2, 3, 40, 2, dtype=torch.float64, generator=generator)
    labels = (torch.rand(2, 3, 40, generator=generator) < 0.5).double()
    theta = estimation.fit_bt_mle(z, labels, 1.0)
    first = estimation.bootstrap_radius(z, theta_hat=theta, reg=1.0, delta=0.1,
                                        num_bootstrap=7, generator=torch.Generator().manual_seed(1))
    again = estimation.bootstrap_radius(z, theta_hat=theta, reg=1.0, delta=0.1, num_bootstrap=7,
                                        generator=torch.Generator().manual_seed(1), chunk=3)
    assert first.shape == (2, 3) and (first > 0).all()
    assert torch.equal(first, again)  # chunking changes memory, not the numbers
    with pytest.raises(ValueError, match="^theta_hat"):
        estimation.bootstrap_radius(z, theta_hat=theta[0], reg=1.0, delta=0.1, num_bootstrap=7,
                                    generator=generator)
    with pytest.raises(ValueError, match="^delta"):
        estimation.bootstrap_radius(z, theta_hat=theta, reg=1.0, delta=1.0, num_bootstrap=7,
                                    generator=generator)
    with pytest.raises(ValueError, match="^num_bootstrap"):
        estimation.bootstrap_radius(z, theta_hat=theta, reg=1.0, delta=0.1, num_bootstrap=0,
                                    generator=generator)


def test_whitener_gives_the_inverse_norm():
    generator = torch.Generator().manual_seed(24)
    root = torch.randn(3, 4, 4, dtype=torch.float64, generator=generator)
    sigma = root @ root.transpose(-1, -2) + torch.eye(4, dtype=torch.float64)
    whitener = estimation.whitener(sigma)
    assert torch.allclose(whitener.transpose(-1, -2) @ whitener, torch.linalg.inv(sigma),
                          atol=1e-12)


def test_reference_vectors_and_norms():
    generator = torch.Generator().manual_seed(8)
    features = torch.randn(3, 5, 4, dtype=torch.float64, generator=generator)
    ref = torch.softmax(torch.randn(3, 5, dtype=torch.float64, generator=generator), -1)
    nu = estimation.reference_vectors(features, ref)
    assert torch.allclose(nu, (ref.unsqueeze(-1) * features).sum(1), atol=1e-14)
    with pytest.raises(ValueError, match="^features"):
        estimation.reference_vectors(features[:, :4], ref)
    root = torch.randn(2, 4, 4, dtype=torch.float64, generator=generator)
    sigma = root @ root.transpose(-1, -2) + torch.eye(4, dtype=torch.float64)
    vectors = torch.randn(2, 4, dtype=torch.float64, generator=generator)
    explicit = torch.einsum("bi,bij,bj->b", vectors, torch.linalg.inv(sigma), vectors).sqrt()
    assert torch.allclose(estimation.inverse_sigma_norm(vectors, sigma), explicit, atol=1e-12)
    explicit = torch.einsum("bi,bij,bj->b", vectors, sigma, vectors).sqrt()
    assert torch.allclose(estimation.sigma_norm(vectors, sigma), explicit, atol=1e-12)
    with pytest.raises(ValueError, match="d ="):
        estimation.inverse_sigma_norm(vectors[:, :3], sigma)
    with pytest.raises(ValueError, match="d ="):
        estimation.sigma_norm(vectors[:, :3], sigma)


@pytest.mark.parametrize(("feature_diffs", "match"), [
    ("not numbers", r"^feature_diffs must be a tensor of numbers"),
    ([1.0, 2.0], r"^feature_diffs must have shape \[\.\.\., n, d\], got \(2,\)"),
    (torch.zeros(0, 2), "^feature_diffs is empty"),
    (torch.zeros(3, 0), r"^feature_diffs must have at least one feature"),
    (torch.tensor([[math.nan, 1.0]]), "^feature_diffs must be finite"),
])
def test_bad_feature_diffs_are_named(feature_diffs, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        estimation.fit_bt_mle(feature_diffs, torch.ones(1), 1.0)


def test_other_bad_arguments_are_named():
    z = torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="^tol must be positive"):
        estimation.fit_bt_mle(z, torch.ones(2), 1.0, tol=0.0)
    with pytest.raises(ValueError, match="^constant must be positive and finite"):
        estimation.confidence_radius(dim=2, delta=0.1, gamma=0.2, reg=1.0, norm_bound=1.0,
                                     constant=0.0)
    with pytest.raises(ValueError, match=r"^sigma must have shape \[\.\.\., d, d\]"):
        estimation.sigma_norm(torch.ones(2), torch.ones(2, 3))


# --- replays, shapes and argument checks (in answer to mutation testing) -----------------------


def test_bootstrap_radius_replays_its_docstring():
    """num_bootstrap label vectors from the fitted model on the same pairs, drawn chunk at a
    time, each refitted; the 1 - delta quantile of the Sigma_D distances to theta_hat, per data
    set, on the same stream."""
    generator = torch.Generator().manual_seed(31)
    z = torch.randn(2, 15, 3, dtype=torch.float64, generator=generator)
    labels = (torch.rand(2, 15, generator=generator) < 0.6).to(torch.float64)
    theta_hat = estimation.fit_bt_mle(z, labels, 1.0)
    radius = estimation.bootstrap_radius(z, theta_hat=theta_hat, reg=1.0, delta=0.2,
                                         num_bootstrap=7, chunk=3,
                                         generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    probs = torch.sigmoid((z * theta_hat.unsqueeze(-2)).sum(-1))
    sigma = estimation.sigma_d(z, 1.0)
    distances = []
    for size in (3, 3, 1):
        draws = (torch.rand(size, 2, 15, dtype=torch.float64, generator=replay)
                 < probs).to(torch.float64)
        refit = estimation.fit_bt_mle(z.expand(size, 2, 15, 3), draws, 1.0)
        distances.append(estimation.sigma_norm(refit - theta_hat, sigma))
    expected = torch.quantile(torch.cat(distances), 0.8, dim=0)
    assert radius.shape == (2,) and torch.allclose(radius, expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"^delta must be in \(0, 1\)"):
        estimation.bootstrap_radius(z, theta_hat=theta_hat, reg=1.0, delta=0.0, num_bootstrap=2,
                                    generator=replay)
    with pytest.raises(ValueError, match=r"^theta_hat must have shape \(2,\) \+ \[3\], got "
                                         r"\(3,\)$"):
        estimation.bootstrap_radius(z, theta_hat=theta_hat[0], reg=1.0, delta=0.2,
                                    num_bootstrap=2, generator=replay)


def test_radius_arguments_at_their_limits():
    """dim = 1 and norm_bound = 0 or 1/2 are allowed (a one-dimensional problem, a known zero
    reward); a boolean dim is not a dimension."""
    common = dict(delta=0.1, gamma=0.2, reg=1.0)
    for dim, norm_bound in [(1, 0.5), (3, 0.0)]:
        value = estimation.confidence_radius(dim=dim, norm_bound=norm_bound, **common)
        expected = math.sqrt((dim + math.log(10)) / 0.2**2 + norm_bound**2)
        assert value == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="^dim must be a positive integer"):
        estimation.confidence_radius(dim=True, norm_bound=1.0, **common)
    features = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)
    assert estimation.reward_difference_bound(features, 0.5) == pytest.approx(1.0, rel=1e-15)
    assert estimation.reward_difference_bound(features, 0.0) == 0.0


def test_objective_and_inverse_norm_keep_their_batches():
    """bt_objective per problem of a batch [2]; inverse_sigma_norm broadcasts vectors [2, 3, d]
    against sigma [3, d, d] and one vector [d] against sigma [3, d, d], each against a solve."""
    generator = torch.Generator().manual_seed(32)
    z = torch.randn(2, 6, 3, dtype=torch.float64, generator=generator)
    labels = (torch.rand(2, 6, generator=generator) < 0.5).to(torch.float64)
    theta = torch.randn(2, 3, dtype=torch.float64, generator=generator)
    batched = estimation.bt_objective(theta, z, labels, 0.7)
    assert batched.shape == (2,)
    for i in range(2):
        assert batched[i].item() == pytest.approx(
            estimation.bt_objective(theta[i], z[i], labels[i], 0.7).item(), rel=1e-14)
    roots = torch.randn(3, 3, 3, dtype=torch.float64, generator=generator)
    sigma = roots @ roots.transpose(-1, -2) + torch.eye(3, dtype=torch.float64)
    vectors = torch.randn(2, 3, 3, dtype=torch.float64, generator=generator)
    norms = estimation.inverse_sigma_norm(vectors, sigma)
    assert norms.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            quad = vectors[i, j] @ torch.linalg.solve(sigma[j], vectors[i, j])
            assert norms[i, j].item() == pytest.approx(quad.sqrt().item(), rel=1e-12)
    single = estimation.inverse_sigma_norm(vectors[0, 0], sigma)
    assert single.shape == (3,)
    assert single[0].item() == pytest.approx(norms[0, 0].item(), rel=1e-12)


def test_asymptotic_radius_against_the_chi_square_quantile():
    """sqrt(chi2_{d, 1-delta} / gamma + reg B^2), with the quantile of a chi-square with d = 2
    degrees of freedom in closed form, -2 log(delta); arguments checked as for the other radius."""
    value = estimation.asymptotic_radius(dim=2, delta=0.05, gamma=0.25, reg=0.5, norm_bound=3.0)
    assert value == pytest.approx(math.sqrt(-2 * math.log(0.05) / 0.25 + 0.5 * 9.0), rel=1e-12)
    assert estimation.asymptotic_radius(dim=1, delta=0.5, gamma=1.0, reg=1.0,
                                        norm_bound=0.0) == pytest.approx(0.6744897501960817,
                                                                         rel=1e-9)
    for changes, word in [(dict(dim=0), "dim"), (dict(delta=1.0), "delta"),
                          (dict(gamma=0.0), "gamma"), (dict(reg=0.0), "reg"),
                          (dict(norm_bound=-1.0), "norm_bound")]:
        arguments = dict(dim=2, delta=0.05, gamma=0.25, reg=0.5, norm_bound=2.0) | changes
        with pytest.raises(ValueError, match=f"^{word}"):
            estimation.asymptotic_radius(**arguments)


def test_norm_checks_and_small_norms():
    """A norm below 1 is not clamped; shapes are checked and the two dimensions named."""
    eye = torch.eye(2, dtype=torch.float64)
    assert estimation.sigma_norm(torch.tensor([0.1, 0.0]), eye).item() == pytest.approx(0.1)
    for vectors, sigma in [(torch.tensor(1.0), torch.eye(1)), (torch.ones(2), torch.ones(2))]:
        with pytest.raises(ValueError, match=r"^sigma must have shape \[\.\.\., d, d\]"):
            estimation.sigma_norm(vectors, sigma)
    with pytest.raises(ValueError, match="^vectors have d = 3 but sigma has d = 4$"):
        estimation.inverse_sigma_norm(torch.ones(2, 5, 3), torch.eye(4))
    fit = estimation.fit_bt_mle(torch.zeros(2, 4, 3, dtype=torch.float64),
                                torch.ones(2, 4, dtype=torch.float64), 1.0)
    assert fit.dtype == torch.float64 and torch.equal(fit, torch.zeros(2, 3, dtype=torch.float64))


def test_data_checks_are_described_in_full(monkeypatch):
    """Messages name the argument and the shapes; reference vectors of one context (pi0 [K],
    features [K, d]); a batch split into chunks of one problem (a tiny cache budget) gives the
    unchunked fits."""
    z = torch.ones(2, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^labels must have shape \(2, 3\) \(the leading "
                                         r"dimensions of feature_diffs\), got \(3,\)$"):
        estimation.fit_bt_mle(z, torch.ones(3), 1.0)
    with pytest.raises(ValueError, match=r"^feature_diffs must be finite \(no NaN or inf\)$"):
        estimation.fit_bt_mle(z * math.nan, torch.ones(2, 3), 1.0)
    with pytest.raises(ValueError, match=r"^feature_diffs must have at least one feature"):
        estimation.fit_bt_mle(torch.ones(2, 3, 0), torch.ones(2, 3), 1.0)
    with pytest.raises(ValueError, match=r"^features \(3, 3\) must be ref_probs \(2,\) plus a "
                                         r"feature dimension$"):
        estimation.reference_vectors(torch.ones(3, 3), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="^ref_probs must"):
        estimation.reference_vectors(torch.ones(2, 3), -torch.full((2,), 0.5))
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    ref = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert estimation.reference_vectors(features, ref).tolist() == [0.75, 0.75]
    generator = torch.Generator().manual_seed(33)
    z = torch.randn(4, 2, 3, dtype=torch.float64, generator=generator)
    labels = (torch.rand(4, 2, generator=generator) < 0.5).to(torch.float64)
    whole = estimation.fit_bt_mle(z, labels, 1.0)
    monkeypatch.setattr(estimation, "CHUNK_BYTES", 1)
    assert torch.allclose(estimation.fit_bt_mle(z, labels, 1.0), whole, atol=1e-12)


def test_float32_inputs_are_read_in_float64():
    """Tensor inputs are read with ``as_tensor(..., dtype=float64)``: a float32 tensor gives
    exactly the result of its float64 copy, in float64."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 3, generator=g)
    labels = (torch.rand(6, generator=g) < 0.5).float()
    theta = torch.randn(3, generator=g)
    features = torch.randn(2, 4, 3, generator=g)
    ref = torch.softmax(torch.randn(2, 4, generator=g), -1)
    root = torch.randn(3, 3, generator=g)
    sigma = root @ root.T + torch.eye(3)

    def both(function, *args, **kwargs):
        wide = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
        return function(*args, **kwargs), function(*wide, **kwargs)

    def labels_only(function):  # these read only the labels themselves
        return (function(theta.double(), z.double(), labels, 0.5),
                function(theta.double(), z.double(), labels.double(), 0.5))

    for got, expected in [labels_only(estimation.bt_objective),
                          labels_only(estimation.bt_gradient),
                          both(estimation.fit_bt_mle, z, labels, 0.5),
                          both(estimation.sigma_d, z, 0.5),
                          both(estimation.sigma_norm, features, sigma),
                          both(estimation.inverse_sigma_norm, features, sigma),
                          both(estimation.whitener, sigma),
                          both(estimation.reference_vectors, features, ref)]:
        assert got.dtype == torch.float64 and torch.equal(got, expected)
    got, expected = both(estimation.reward_difference_bound, features, 1.0)
    assert got == expected
    radii = [estimation.bootstrap_radius(diffs, theta_hat=center, reg=0.5, delta=0.1,
                                         num_bootstrap=4,
                                         generator=torch.Generator().manual_seed(1))
             for diffs, center in [(z, theta), (z.double(), theta.double())]]
    assert radii[0].dtype == torch.float64 and torch.equal(*radii)


def test_lists_and_labels_of_any_dtype_are_read_in_float64():
    """Feature differences given as a Python list of numbers that float32 cannot hold give the
    float64 closed form of ``Sigma_D`` (with ``reg = 0.1`` added in float64) and the fit of their
    float64 tensor; labels 0/1 given as uint8, bool, int64, float32 or a list give the objective,
    gradient and fit of float64 labels (in uint8, ``2 y - 1`` and its negation would wrap around
    to 255)."""
    rows = [[0.1, 1 / 3], [-0.7, 0.2], [1 / 7, -0.9], [0.3, 0.6]]
    expected = 0.1 * np.eye(2) + np.array(rows).T @ np.array(rows)  # 0.1: not exact in float32
    assert np.allclose(estimation.sigma_d(rows, 0.1).numpy(), expected, rtol=1e-15, atol=0)
    z = torch.tensor(rows, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    fit = estimation.fit_bt_mle(z, labels, 0.5)
    assert torch.equal(estimation.fit_bt_mle(rows, labels, 0.5), fit)
    theta = torch.tensor([0.4, -1.3], dtype=torch.float64)
    signs = [1, -1, 1, 1]
    margins = [sum(t * v for t, v in zip(theta.tolist(), row, strict=True)) for row in rows]
    objective = sum(math.log1p(math.exp(-s * m)) for s, m in zip(signs, margins, strict=True))
    for other in (labels.to(torch.uint8), labels.bool(), labels.long(), labels.float(),
                  labels.tolist()):
        assert estimation.bt_objective(theta, z, other, 0.0).item() == pytest.approx(
            objective, rel=1e-14)
        assert torch.equal(estimation.bt_gradient(theta, z, other, 0.5),
                           estimation.bt_gradient(theta, z, labels, 0.5))
        assert torch.equal(estimation.fit_bt_mle(z, other, 0.5), fit)


def test_a_loose_tolerance_bounds_the_euclidean_norm_of_each_gradient():
    """The stopping rule is the Euclidean norm of each problem's gradient: at ``theta = 0`` the
    gradient of two orthogonal pairs, both labelled 0, is ``(1/2, 1/2)``, of norm 0.707 above
    ``tol = 0.6`` though each coordinate is below it, so the fit must take a step."""
    z = torch.eye(2, dtype=torch.float64)
    labels = torch.zeros(2, dtype=torch.float64)
    assert torch.equal(estimation.bt_gradient(torch.zeros(2, dtype=torch.float64), z, labels, 1.0),
                       torch.tensor([0.5, 0.5], dtype=torch.float64))
    theta = estimation.fit_bt_mle(z, labels, 1.0, tol=0.6)
    assert estimation.bt_gradient(theta, z, labels, 1.0).norm() <= 0.6


def _pseudo_huber(margins, point):
    """``sqrt(1 + x^2)`` per problem (the margins are the point itself here)."""
    return torch.sqrt(1 + margins[:, 0] ** 2)


def test_backtracking_step_follows_the_armijo_rule_written_out():
    """Each problem of the batch against the rule of the docstring written out as a loop: sizes
    1, 1/2, 1/4, ... (at most ``max_halvings`` = 60 of them), the first with ``f(x - s step) <=
    f(x) - 1e-4 s decrement``; the full step when ``decrement <= 1e-8``; none accepted: the point
    stays. Pseudo-Huber ``sqrt(1 + x^2)`` makes Newton's step overshoot by far: at x = 1000 the
    Newton step is ``x (1 + x^2)``; at x = 1 a step of 1.5 2^60 lands in the basin only at the
    61st size, 2^-60, one too many; on ``x^2 + 1e12`` near 0 a decrease of one unit in the last
    place passes the test at the full step, and a decrement of 2e-10 takes it untested."""

    def huber_plus(margins, point):
        return margins[:, 0] ** 2 + 1e12

    def rule(f, x, step, decrement):
        if decrement <= 1e-8:
            return x - step
        for k in range(60):
            if f(x - step / 2**k) <= f(x) - 1e-4 * decrement / 2**k:
                return x - step / 2**k
        return x

    huber = [(1000.0, 1000.0 * (1 + 1000.0**2)), (1.0, 1.5 * 2.0**60), (3.0, 30.0)]
    cases = [(_pseudo_huber, x, step, step * x / math.sqrt(1 + x * x)) for x, step in huber]
    cases += [(huber_plus, 0.01, 0.01, 2e-4), (huber_plus, 1e-5, 1e-5, 2e-10)]
    for objective_at, x, step, decrement in cases:
        scalar = lambda v, f=objective_at: f(torch.tensor([[v]], dtype=torch.float64), None).item()  # noqa: E731
        point = torch.tensor([[x]], dtype=torch.float64)
        new_point, new_margins, objective = estimation.backtracking_step(
            objective_at, point, torch.tensor([[step]], dtype=torch.float64), point,
            torch.tensor([[step]], dtype=torch.float64), objective_at(point, point),
            torch.tensor([decrement], dtype=torch.float64))
        expected = rule(scalar, x, step, decrement)
        assert new_point.item() == expected and new_margins.item() == expected
        assert objective.item() == scalar(expected)
    # x^2 at 1 with twice the Newton step: -1 is no lower, the half step reaches 0.
    point, _, objective = estimation.backtracking_step(
        lambda m, p: m[:, 0] ** 2, torch.ones(1, 1, dtype=torch.float64),
        torch.full((1, 1), 2.0, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
        torch.full((1, 1), 2.0, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
        torch.full((1,), 4.0, dtype=torch.float64))
    assert point.item() == 0.0 and objective.item() == 0.0


def test_the_default_iteration_budget_is_one_hundred_newton_steps():
    """A tolerance below round-off (1e-300: a gradient of exactly 0) cannot be met on 50 pairs:
    the error names the default budget."""
    z, labels = random_problem((), 50, 3, seed=6)
    with pytest.raises(RuntimeError, match="did not converge in 100 Newton steps"):
        estimation.fit_bt_mle(z, labels, 1.0, tol=1e-300)


@pytest.mark.parametrize("feature_diffs,labels,reg", [
    ([[0.0036327007387751704, 0.173134174657892]], [1.0], 5.2725736223820145e-14),
    ([[-0.03222520673132608, 0.006146188283714372, -0.0026884975913194107],
      [-0.010777825765734272, -0.028881434068257442, 0.017681991283769252]], [1.0, 0.0],
     1.659010859631454e-12)])
def test_a_hessian_indefinite_by_float32_round_off_is_retried(feature_diffs, labels, reg):
    """Fewer pairs than features and a ridge below the float32 round-off of the Hessian: its
    Cholesky factorisation fails by round-off (found by a random search over such problems),
    the retry, with the Hessian formed in float64, succeeds, and the fit reaches the
    tolerance."""
    z, y = (torch.tensor(v, dtype=torch.float64) for v in (feature_diffs, labels))
    theta = estimation.fit_bt_mle(z, y, reg)
    assert estimation.bt_gradient(theta, z, y, reg).norm() <= estimation.MLE_TOLERANCE


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_a_small_ridge_on_rank_deficient_data_still_fits(scale):
    """The objective is ``reg``-strongly convex for every ``reg > 0``, so the fit must reach the
    tolerance (or raise the documented RuntimeError); on one pair in three features with
    ``reg = 1e-9`` the float32 Hessian is indefinite by more than a fixed damping of 1e-12 I,
    whose retry failed with LinAlgError (here also with the feature differences scaled by 30)."""
    z = scale * torch.tensor([[0.3, 0.7, 0.9]], dtype=torch.float64)
    y = torch.ones(1, dtype=torch.float64)
    theta = estimation.fit_bt_mle(z, y, 1e-9)
    assert estimation.bt_gradient(theta, z, y, 1e-9).norm() <= estimation.MLE_TOLERANCE


def test_a_ridge_below_float32_round_off_fits_like_float64_newton():
    """2202 pairs on a rank-one design (plus noise of 8e-5 relative) with reg = 1.9e-15: Newton
    with its Hessian in float64 reaches the tolerance in 2 steps. A retry that damps the float32
    Hessian by float32's round-off bound (about 1e-3 of its trace here) instead of forming it in
    float64 crawled along the weak directions and ran out of its budget."""
    generator = torch.Generator().manual_seed(481)
    basis = torch.randn(1, 3, dtype=torch.float64, generator=generator)
    z = 1.1406e-4 * (torch.randn(2202, 1, dtype=torch.float64, generator=generator) @ basis
                     + 8.382e-5 * torch.randn(2202, 3, dtype=torch.float64, generator=generator))
    y = (torch.rand(2202, dtype=torch.float64, generator=generator) < 0.5).to(torch.float64)
    reg = 1.9451e-15
    theta = estimation.fit_bt_mle(z, y, reg)
    assert estimation.bt_gradient(theta, z, y, reg).norm() <= estimation.MLE_TOLERANCE


def test_large_feature_differences_on_nearly_separable_data_fit_to_the_tolerance():
    """Feature differences of scale 30 with labels drawn from BT at a random theta make the data
    nearly separable, so the MLE sits far out and damped Newton needs its line search on the
    true objective (softplus losses plus reg |theta|^2 / 2): every problem of the batch reaches
    the tolerance. With the line search's objective wrong (the ridge term subtracted, or reg
    divided by |theta|^2) the fit ran out of its budget."""
    generator = torch.Generator().manual_seed(4)
    z = 30 * torch.randn(8, 20, 3, dtype=torch.float64, generator=generator)
    theta_star = torch.randn(8, 3, dtype=torch.float64, generator=generator)
    probs = torch.sigmoid(torch.einsum("bnd,bd->bn", z, theta_star))
    y = (torch.rand(8, 20, dtype=torch.float64, generator=generator) < probs).to(torch.float64)
    theta = estimation.fit_bt_mle(z, y, 1e-3)
    assert (estimation.bt_gradient(theta, z, y, 1e-3).norm(dim=-1)
            <= estimation.MLE_TOLERANCE).all()


def test_a_ridge_below_float64_round_off_raises_the_documented_error():
    """1592 pairs on a rank-three design in five features, the other two directions at 6e-9 of
    its scale, and reg = 2.3e-14: their curvature (about 3e-18 of the Hessian's trace) is below
    float64's resolution, so even a float64 Hessian is indefinite by round-off and Newton cannot
    reach the tolerance; the fit must end with the documented RuntimeError (no LinAlgError
    from a retry whose damping does not cover float64's round-off)."""
    generator = torch.Generator().manual_seed(23)
    basis = torch.randn(3, 5, dtype=torch.float64, generator=generator)
    z = 0.29885 * (torch.randn(1592, 3, dtype=torch.float64, generator=generator) @ basis
                   + 5.98e-9 * torch.randn(1592, 5, dtype=torch.float64, generator=generator))
    y = (torch.rand(1592, dtype=torch.float64, generator=generator) < 0.5).to(torch.float64)
    with pytest.raises(RuntimeError, match="^fit_bt_mle did not converge in 100 Newton steps"):
        estimation.fit_bt_mle(z, y, 2.3458e-14)


def test_newton_steps_from_the_float64_retry_reach_the_tolerance():
    """985 pairs on a rank-one design of scale 780 (other directions at 1.5e-11 of it) with
    reg = 7.2e-6: the float32 Hessian fails to factorise on almost every step, so nearly every
    direction comes from the float64 retry, which must be the Newton direction of
    sum_i c_i z_i z_i^T + reg I for the fit to reach the tolerance in its budget (else it raises
    RuntimeError; the gradient recomputed from scratch differs from the fit's running one by
    round-off of these large differences, 2e-9, so the fit's own stopping test is the check)."""
    generator = torch.Generator().manual_seed(56)
    basis = torch.randn(1, 3, dtype=torch.float64, generator=generator)
    z = 783.9188327677697 * (
        torch.randn(985, 1, dtype=torch.float64, generator=generator) @ basis
        + 1.4984942485531318e-11 * torch.randn(985, 3, dtype=torch.float64, generator=generator))
    y = (torch.rand(985, dtype=torch.float64, generator=generator) < 0.5).to(torch.float64)
    theta = estimation.fit_bt_mle(z, y, 7.22107302480234e-06)
    assert torch.isfinite(theta).all()
