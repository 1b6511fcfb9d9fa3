"""Tests of gsfh_utils.online against independent computations (closed forms, brute force)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gsfh_utils as gu
from gsfh_utils import online
from gsfh_utils.estimation import fit_bt_mle


def small_instance(eta=0.1, seed=0, num_contexts=3, num_actions=5, dim=4):
    generator = torch.Generator().manual_seed(seed)
    return online.undercovered_instance(num_contexts, num_actions, dim, num_rare=2,
                                        rare_mass=0.05, norm_bound=2.0, eta=eta,
                                        generator=generator)


def random_sigma(num, dim, generator):
    z = torch.randn(num, 3 * dim, dim, dtype=torch.float64, generator=generator)
    return torch.eye(dim, dtype=torch.float64) + z.transpose(-1, -2) @ z


# --- the accuracy measure -------------------------------------------------------------------


@given(st.integers(0, 10**6), st.floats(0.02, 5.0))
def test_target_accuracy_closed_form(seed, eta):
    """J(pi*) - J(pi1) + eta KL(pi*||pi1) = <theta* - theta, E[phi | pi*] - E[phi | pi1]>."""
    instance = small_instance(eta=eta, seed=seed % 97)
    generator = torch.Generator().manual_seed(seed)
    theta = 2 * torch.randn(6, instance.dim, dtype=torch.float64, generator=generator)
    main = gu.gibbs_policy(instance.ref_probs, instance.rewards(theta), eta)
    value = online.target_accuracy(instance, main)
    mean_star = online.policy_mean_features(instance.optimal_policy(), instance.features,
                                            instance.context_probs)
    mean_main = online.policy_mean_features(main, instance.features, instance.context_probs)
    closed = ((instance.theta_star - theta) * (mean_star - mean_main)).sum(-1)
    assert torch.allclose(value, closed, rtol=1e-9, atol=1e-11)
    assert (value >= -1e-12).all()


def test_target_accuracy_zero_at_optimum():
    instance = small_instance()
    assert abs(float(online.target_accuracy(instance, instance.optimal_policy()))) < 1e-12


# --- the enhancer ---------------------------------------------------------------------------


def enhancer_problem(seed, beta=5.0, eta=0.1, num=4):
    instance = small_instance(eta=eta, seed=seed % 50)
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(num, instance.dim, dtype=torch.float64, generator=generator)
    main = gu.gibbs_policy(instance.ref_probs, instance.rewards(theta), eta)
    sigma = random_sigma(num, instance.dim, generator)
    return instance, main, sigma, generator


@given(st.integers(0, 10**6), st.floats(0.05, 50.0), st.floats(0.01, 10.0))
def test_enhancer_satisfies_budget(seed, beta, eta):
    instance, main, sigma, generator = enhancer_problem(seed, beta, eta)
    result = online.enhancer_policy(main, instance.features, instance.context_probs, sigma, beta,
                                    eta, generator)
    # independent recomputation: Cholesky-solve norm and gu.kl_divergence
    diff = (online.policy_mean_features(main, instance.features, instance.context_probs)
            - online.policy_mean_features(result.policy, instance.features,
                                          instance.context_probs))
    gamma = beta * torch.sqrt((diff * torch.linalg.solve(sigma, diff)).sum(-1))
    kl = gu.kl_divergence(result.policy, main) @ instance.context_probs
    assert (eta * kl <= gamma + 1e-10).all()
    assert torch.allclose(result.gamma, gamma, rtol=1e-8, atol=1e-12)
    assert (result.slack >= 0).all()
    assert torch.allclose(result.policy.sum(-1), torch.ones(()).double())


def brute_force_tilt_maximum(main, features, context_probs, sigma, beta, eta, num_angles=720):
    """Largest feasible Gamma over tilts pi1 exp(s <u, phi>) with u on a fine circle (d = 2)."""
    angles = torch.linspace(0, 2 * math.pi, num_angles + 1, dtype=torch.float64)[:-1]
    scales = torch.logspace(-2, 3, 200, dtype=torch.float64)
    directions = torch.stack([angles.cos(), angles.sin()], -1)  # [A, 2]
    shift = scales[:, None, None, None] * torch.einsum("xkd,ad->axk", features, directions)
    policy = torch.softmax(torch.log(main) + shift, -1)  # [G, A, X, K]
    means = torch.einsum("gaxk,xkd->gad", policy * context_probs[:, None], features)
    diff = online.policy_mean_features(main, features, context_probs) - means
    gamma = beta * torch.sqrt((diff * torch.linalg.solve(sigma, diff.unsqueeze(-1))
                               .squeeze(-1)).sum(-1))
    kl = gu.kl_divergence(policy, main) @ context_probs
    return torch.where(eta * kl <= gamma, gamma, 0.0).max()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.3, 3.0])
def test_enhancer_close_to_brute_force_in_two_dimensions(seed, beta):
    """On d = 2 the tilt family is a circle of directions: a dense brute-force search is the
    reference. The package's search (float32, few directions) must come within 1%."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(3, 6, 2, dtype=torch.float64, generator=generator)
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1.0)
    context_probs = torch.full((3,), 1 / 3, dtype=torch.float64)
    main = torch.softmax(torch.randn(3, 6, dtype=torch.float64, generator=generator), -1)
    sigma = random_sigma(1, 2, generator)[0]
    eta = 0.2
    reference = brute_force_tilt_maximum(main, features, context_probs, sigma, beta, eta)
    result = online.enhancer_policy(main[None], features, context_probs, sigma[None], beta, eta,
                                    generator)
    assert float(result.gamma[0]) >= 0.99 * float(reference)
    assert float(result.slack[0]) >= 0


def test_enhancer_falls_back_to_main_when_nothing_is_feasible():
    """With a tiny radius and a large eta only pi1 itself (Gamma = KL = 0) is affordable."""
    instance, main, sigma, generator = enhancer_problem(3, beta=1e-9, eta=1e3)
    result = online.enhancer_policy(main, instance.features, instance.context_probs, sigma,
                                    1e-9, 1e3, generator)
    assert (result.slack >= 0).all()
    tilted = result.scale > 0
    assert torch.equal(result.policy[~tilted], main[~tilted])


def test_enhancer_bad_input():
    instance, main, sigma, generator = enhancer_problem(0)
    args = (main, instance.features, instance.context_probs, sigma)
    with pytest.raises(ValueError, match="beta"):
        online.enhancer_policy(*args, 0.0, 0.1, generator)
    with pytest.raises(ValueError, match="eta"):
        online.enhancer_policy(*args, 1.0, -1.0, generator)
    with pytest.raises(ValueError, match="scales"):
        online.enhancer_policy(*args, 1.0, 0.1, generator, scales=(1.0, -2.0))
    with pytest.raises(ValueError, match="main"):
        online.enhancer_policy(main[0], *args[1:], 1.0, 0.1, generator)


# --- the online loop ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs():
    instance = small_instance()
    return instance, {
        method: online.run_online(instance, method, 3, 20, 5, torch.Generator().manual_seed(1),
                                  beta=5.0, validation_size=50)
        for method in online.METHODS
    }


def test_run_online_shapes_and_consistency(tiny_runs):
    instance, runs = tiny_runs
    for run in runs.values():
        assert run.theta_hat.shape == (4, 5, instance.dim)
        assert run.target.shape == run.output_target.shape == (4, 5)
        assert len(run.data) == 60
        # theta_hat[k] is the MLE on the first k batches; Sigma_k their design matrix
        for k in (1, 3):
            data_z = run.data.feature_diffs[:, : 20 * k]
            data_y = run.data.labels[:, : 20 * k]
            assert torch.allclose(run.theta_hat[k], fit_bt_mle(data_z, data_y, 1.0), atol=1e-8)
            sigma = torch.eye(instance.dim, dtype=torch.float64) + data_z.transpose(1, 2) @ data_z
            assert torch.allclose(run.sigma[k], sigma)
        assert torch.equal(run.theta_hat[0], torch.zeros_like(run.theta_hat[0]))
        assert torch.allclose(run.target, online.target_accuracy(instance, run.main_policies))
        # the output is the best iterate so far on the validation pairs
        best = torch.stack([run.validation_loglik[: k + 1].argmax(0) for k in range(4)])
        assert torch.equal(run.output_index, best)
        assert (run.output_index <= torch.arange(4)[:, None]).all()


def test_run_online_pairs_come_from_the_right_policies(tiny_runs):
    instance, runs = tiny_runs
    self_play = runs["self_play"]
    assert (self_play.kl.abs() < 1e-12).all() and (self_play.gamma == 0).all()
    offline = runs["offline"]
    assert (offline.gamma == 0).all()  # pi0 against pi0: no expected difference
    assert torch.allclose(offline.second_policies, instance.ref_probs.expand_as(
        offline.second_policies))
    assert (runs["enhancer"].slack >= 0).all()


def test_run_online_is_deterministic():
    instance = small_instance()
    first = online.run_online(instance, "enhancer", 2, 10, 3, torch.Generator().manual_seed(5),
                              beta=2.0, validation_size=20)
    second = online.run_online(instance, "enhancer", 2, 10, 3, torch.Generator().manual_seed(5),
                               beta=2.0, validation_size=20)
    assert torch.equal(first.target, second.target)
    assert torch.equal(first.data.labels, second.data.labels)


def test_run_online_hybrid_start_enters_sigma_and_mle():
    instance = small_instance()
    generator = torch.Generator().manual_seed(2)
    offline = instance.sample_preferences(30, instance.ref_probs, instance.ref_probs, generator,
                                          (4,))
    run = online.run_online(instance, "reference", 2, 10, 4, generator, beta=2.0,
                            initial_data=offline, validation_size=20)
    assert run.initial_size == 30 and len(run.data) == 50
    assert torch.allclose(run.theta_hat[0], fit_bt_mle(offline.feature_diffs, offline.labels, 1.0),
                          atol=1e-8)
    sigma0 = torch.eye(instance.dim, dtype=torch.float64) + (
        offline.feature_diffs.transpose(1, 2) @ offline.feature_diffs)
    assert torch.allclose(run.sigma[0], sigma0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-3), "batch_size"),
        (dict(num_iterations=0), "num_iterations"),
        (dict(num_iterations=2.5), "num_iterations"),
        (dict(method="explore"), "method"),
        (dict(beta=0.0), "beta"),
        (dict(reg=-1.0), "reg"),
        (dict(num_seeds=0), "num_seeds"),
    ],
)
def test_run_online_bad_input(kwargs, match):
    instance = small_instance()
    arguments = dict(method="enhancer", num_iterations=2, batch_size=5, num_seeds=2,
                     generator=torch.Generator().manual_seed(0), beta=1.0)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        online.run_online(instance, **arguments)


def test_run_online_rejects_initial_data_of_wrong_batch():
    instance = small_instance()
    generator = torch.Generator().manual_seed(0)
    offline = instance.sample_preferences(5, instance.ref_probs, instance.ref_probs, generator,
                                          (3,))
    with pytest.raises(ValueError, match="initial_data"):
        online.run_online(instance, "enhancer", 1, 5, 2, generator, beta=1.0,
                          initial_data=offline)


# --- log det and the elliptical potential ---------------------------------------------------


@given(st.integers(0, 10**6), st.integers(1, 40), st.floats(0.1, 10.0))
def test_elliptical_potentials_match_direct_solves(seed, num_pairs, reg):
    generator = torch.Generator().manual_seed(seed)
    z = 2 * torch.rand(2, num_pairs, 3, dtype=torch.float64, generator=generator) - 1
    potentials = online.elliptical_potentials(z, reg)
    for s in range(num_pairs):
        sigma = reg * torch.eye(3, dtype=torch.float64) + z[:, :s].transpose(1, 2) @ z[:, :s]
        direct = (z[:, s] * torch.linalg.solve(sigma, z[:, s])).sum(-1)
        assert torch.allclose(potentials[:, s], direct, rtol=1e-9, atol=1e-12)
    # determinant lemma and the elliptical potential lemma
    sigma_n = reg * torch.eye(3, dtype=torch.float64) + z.transpose(1, 2) @ z
    log_ratio = torch.linalg.slogdet(sigma_n)[1] - 3 * math.log(reg)
    assert torch.allclose(torch.log1p(potentials).sum(-1), log_ratio, rtol=1e-9, atol=1e-10)
    assert (potentials.clamp_max(1).sum(-1) <= 2 * log_ratio + 1e-10).all()
    bound = online.log_det_bound(num_pairs, 3, reg, float(z.norm(dim=-1).max()))
    assert (log_ratio <= bound + 1e-10).all()


def test_elliptical_potentials_with_initial_sigma():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2, dtype=torch.float64, generator=generator)
    sigma0 = random_sigma(1, 2, generator)[0]
    potentials = online.elliptical_potentials(z, 1.0, sigma0)
    direct = (z[0] * torch.linalg.solve(sigma0, z[0])).sum()
    assert torch.allclose(potentials[0], direct)


# --- helpers of the claims ------------------------------------------------------------------


def test_batches_to_reach():
    curve = torch.tensor([[1.0, 1.0], [0.5, 0.9], [0.2, 0.8]], dtype=torch.float64)
    assert online.batches_to_reach(curve, 0.5).tolist() == [1.0, math.inf]


def test_undercovered_instance_structure():
    instance = small_instance(num_contexts=4, num_actions=6, dim=6)
    assert torch.allclose(instance.ref_probs[:, :2].sum(-1), torch.full((4,), 0.05).double())
    assert (instance.features[:, 2:, 3:] == 0).all()  # common actions: no rare coordinates
    assert (instance.features.norm(dim=-1) <= 1 + 1e-12).all()
    assert instance.theta_star.norm().item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="rare_mass"):
        online.undercovered_instance(2, 4, 4, 1, 1.5, 1.0, 0.1, torch.Generator())
    with pytest.raises(ValueError, match="num_rare"):
        online.undercovered_instance(2, 4, 4, 4, 0.1, 1.0, 0.1, torch.Generator())
