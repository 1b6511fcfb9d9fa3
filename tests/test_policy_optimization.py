"""Tests of gsfh_utils.policy_optimization: the KL-regularised policy-optimisation oracle in the
tabular and log-linear classes, against the Gibbs policy (closed form), autograd of an
independently written objective, and brute-force searches."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import log_uniform
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd.functional import hessian, jacobian

from gsfh_utils import policy_optimization as po
from gsfh_utils.gibbs import gibbs_policy, log_partition


def _problem(seed, *, batch=3, prompts=6, actions=5, dim=3, scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g)

    ref = torch.softmax(normal(batch, prompts, actions), -1)
    return normal(batch, prompts, actions, dim), ref, scale * normal(batch, prompts, actions), g


def _objective(w, psi, ref, rewards, eta, weights=None):
    """F(w) written from its definition, independently of the module's flattened version."""
    logits = torch.log(ref) + (psi * w[..., None, None, :]).sum(-1)
    policy = torch.softmax(logits, -1)
    kl = (policy * (torch.log_softmax(logits, -1) - torch.log(ref))).sum(-1)
    per_prompt = (policy * rewards).sum(-1) - eta * kl
    weights = torch.full(per_prompt.shape, 1 / per_prompt.shape[-1], dtype=torch.float64) \
        if weights is None else weights / weights.sum(-1, keepdim=True)
    return (weights * per_prompt).sum(-1)


@pytest.mark.parametrize("eta", [0.05, 0.5, 5.0])
def test_log_linear_oracle_returns_the_gibbs_policy_when_the_class_contains_it(eta):
    psi, ref, _, g = _problem(0)
    w_star = torch.randn(3, 3, dtype=torch.float64, generator=g)
    offsets = torch.randn(3, 6, 1, dtype=torch.float64, generator=g)  # c(x): no effect
    rewards = eta * (psi * w_star[:, None, None]).sum(-1) + offsets
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=eta, policy_features=psi)
    assert torch.allclose(fit.w, w_star, atol=1e-7)
    assert torch.allclose(fit.policy, gibbs_policy(ref, rewards, eta), atol=1e-9)
    # The optimum of F is eta sum_x q(x) log Z_r(x) (gap identity with KL = 0).
    expected = eta * log_partition(ref, rewards, eta).mean(-1)
    assert torch.allclose(fit.objective, expected, atol=1e-9)


def test_tabular_oracle_is_gibbs_on_weighted_prompts_and_pi0_elsewhere():
    _, ref, rewards, _ = _problem(1)
    weights = torch.tensor([[1.0, 0, 2, 0, 1, 1]] * 3, dtype=torch.float64)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=0.3, policy_class="tabular",
                             context_weights=weights)
    gibbs = gibbs_policy(ref, rewards, 0.3)
    prompted = weights > 0
    assert torch.allclose(fit.policy[prompted], gibbs[prompted], atol=1e-15)
    assert torch.equal(fit.policy[~prompted], ref[~prompted])
    assert torch.allclose(fit.w[~prompted], torch.zeros_like(fit.w[~prompted]))
    q = weights / weights.sum(-1, keepdim=True)
    assert torch.allclose(fit.objective, 0.3 * (q * log_partition(ref, rewards, 0.3)).sum(-1))


def test_derivatives_match_autograd_of_the_objective_written_out():
    psi, ref, rewards, g = _problem(2, scale=2.0)
    weights = torch.rand(3, 6, dtype=torch.float64, generator=g)
    w = torch.randn(3, 3, dtype=torch.float64, generator=g)
    value, gradient, hess = po.objective_derivatives(w, rewards=rewards, ref_probs=ref, eta=0.4,
                                                     policy_features=psi,
                                                     context_weights=weights)
    for i in range(3):
        def f(v, i=i):
            return _objective(v, psi[i], ref[i], rewards[i], 0.4, weights[i])
        assert value[i].item() == pytest.approx(f(w[i]).item(), abs=1e-14)
        assert torch.allclose(gradient[i], jacobian(f, w[i]), atol=1e-13)
        assert torch.allclose(hess[i], hessian(f, w[i]), atol=1e-12)


def test_gradient_matches_central_finite_differences():
    psi, ref, rewards, g = _problem(3)
    w = torch.randn(3, 3, dtype=torch.float64, generator=g)
    _, gradient, _ = po.objective_derivatives(w, rewards=rewards, ref_probs=ref, eta=1.3,
                                              policy_features=psi)
    step = 1e-6
    for j in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[j] = step
        difference = (_objective(w + e, psi, ref, rewards, 1.3) -
                      _objective(w - e, psi, ref, rewards, 1.3)) / (2 * step)
        assert torch.allclose(gradient[:, j], difference, atol=1e-8)


@pytest.mark.parametrize("eta", [0.3, 1.0, 3.0])
def test_misspecified_oracle_beats_a_brute_force_grid(eta):
    # One-parameter class: the grid resolves the maximiser of F(w) over [-6, 6].
    psi, ref, rewards, _ = _problem(4, dim=1, scale=1.5)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=eta, policy_features=psi)
    grid = torch.linspace(-6, 6, 24001, dtype=torch.float64)
    values = torch.stack([_objective(grid[:, None], psi[i:i + 1].expand(len(grid), -1, -1, -1),
                                     ref[i], rewards[i], eta) for i in range(3)])
    assert (fit.w.abs() < 6).all()
    assert (fit.objective >= values.max(-1).values - 1e-9).all()
    assert torch.allclose(fit.w[:, 0], grid[values.argmax(-1)], atol=1e-3)


def test_restarts_find_no_better_stationary_point_on_a_moderate_problem():
    psi, ref, rewards, g = _problem(5, batch=4, prompts=20, dim=3)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=1.0, policy_features=psi)
    for _ in range(5):
        start = 3 * torch.randn(4, 3, dtype=torch.float64, generator=g)
        other = po.optimize_policy(rewards, ref_probs=ref, eta=1.0, policy_features=psi,
                                   initial_w=start)
        assert (other.objective <= fit.objective + 1e-10).all()


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), eta=log_uniform(0.1, 100.0),
       scale=st.floats(0.0, 3.0))
def test_oracle_is_stationary_and_beats_pi0_and_is_beaten_by_the_tabular_class(seed, eta, scale):
    psi, ref, rewards, _ = _problem(seed, scale=scale)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=eta, policy_features=psi)
    assert (fit.grad_norm <= po.PO_TOLERANCE).all()
    at_pi0 = po.policy_objective(ref, rewards=rewards, ref_probs=ref, eta=eta)
    assert (fit.objective >= at_pi0 - 1e-12).all()
    tabular = po.optimize_policy(rewards, ref_probs=ref, eta=eta, policy_class="tabular")
    assert (tabular.objective >= fit.objective - 1e-12).all()
    assert torch.allclose(po.policy_objective(fit.policy, rewards=rewards, ref_probs=ref,
                                              eta=eta), fit.objective, atol=1e-12)


def test_actions_outside_the_support_of_pi0_keep_probability_zero():
    psi, ref, rewards, _ = _problem(6)
    ref = ref.clone()
    ref[..., 0] = 0
    ref = ref / ref.sum(-1, keepdim=True)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi)
    assert (fit.policy[..., 0] == 0).all()
    assert torch.isfinite(fit.objective).all()


def test_log_linear_policy_broadcasts_w_over_prompts():
    psi, ref, _, g = _problem(7)
    w = torch.randn(3, 3, dtype=torch.float64, generator=g)
    policy = po.log_linear_policy(ref, policy_features=psi, w=w)
    expected = torch.softmax(torch.log(ref) + torch.einsum("bxkd,bd->bxk", psi, w), -1)
    assert torch.allclose(policy, expected, atol=1e-15)


def test_too_few_steps_raise_runtime_error():
    psi, ref, rewards, _ = _problem(8, scale=3.0)
    with pytest.raises(RuntimeError, match="did not converge"):
        po.optimize_policy(rewards, ref_probs=ref, eta=0.1, policy_features=psi, max_iter=1)


@pytest.mark.parametrize("change, match", [
    (dict(policy_class="neural"), "policy_class"),
    (dict(policy_features=None), "policy_features"),
    (dict(policy_class="tabular"), "policy_features"),
    (dict(eta=0.0), "eta"),
    (dict(eta="big"), "eta"),
    (dict(tol=0.0), "tol"),
    (dict(context_weights=-torch.ones(6)), "context_weights"),
    (dict(context_weights=torch.zeros(6)), "context_weights"),
    (dict(context_weights=torch.ones(4)), "context_weights"),
    (dict(initial_w=torch.zeros(2)), "initial_w"),
    (dict(policy_features=torch.ones(3, 6, 4)), "policy_features"),
    (dict(policy_features=torch.full((3, 6, 5, 2), float("nan"))), "policy_features"),
    (dict(ref_probs=torch.ones(3, 6, 5)), "ref_probs"),
    (dict(rewards=torch.ones(5)), "rewards"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(change, match):
    psi, ref, rewards, _ = _problem(9)
    arguments = dict(rewards=rewards, ref_probs=ref, eta=0.5, policy_features=psi)
    arguments.update(change)
    with pytest.raises(ValueError, match=f"^{match}"):
        po.optimize_policy(arguments.pop("rewards"), **arguments)


# --- messages, shapes and the closed form's record (in answer to mutation testing) -------------


@pytest.mark.parametrize("change, message", [
    (dict(policy_features=torch.ones(6, 5)),
     "policy_features must have shape [..., X, K, d'] with d' >= 1, got (6, 5)"),
    (dict(policy_features=torch.ones(3, 6, 5, 0)),
     "policy_features must have shape [..., X, K, d'] with d' >= 1, got (3, 6, 5, 0)"),
    (dict(policy_features=torch.full((3, 6, 5, 2), float("nan"))),
     "policy_features must be finite"),
    (dict(ref_probs=torch.full((4, 5), 0.2)),
     "ref_probs (shape (4, 5)) and rewards (shape (3, 6, 5)) must have the same number of "
     "actions and broadcastable leading dimensions"),
    (dict(initial_w=torch.zeros(2)), "initial_w (shape (2,)) must broadcast against (3, 3)"),
    (dict(policy_features=None),
     "policy_features is required by the log-linear class and unused by the tabular one"),
    (dict(context_weights=torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, float("nan")])),
     "context_weights must be finite and non-negative"),
    (dict(context_weights=torch.zeros(6)),
     "context_weights must have a positive sum for every problem"),
])
def test_bad_inputs_are_described_in_full(change, message):
    import re

    psi, ref, rewards, _ = _problem(9)
    arguments = dict(ref_probs=ref, eta=0.5, policy_features=psi) | change
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        po.optimize_policy(rewards, **arguments)
    with pytest.raises(ValueError, match="^ref_probs must sum to 1"):
        po.log_linear_policy(2 * ref, policy_features=psi, w=torch.zeros(3))


def test_one_problem_without_a_batch_and_a_shared_parameter():
    """Rewards [X, K] with features [X, K, d'] (no batch dimension) are one problem, solved as
    the first problem of a batch; log_linear_policy with one w [d'] shared by a batch of
    features is pi0 exp(<w, psi>) normalised, written out by hand."""
    psi, ref, rewards, generator = _problem(10, scale=2.0)
    weights = torch.rand(6, dtype=torch.float64, generator=generator)
    single = po.optimize_policy(rewards[0], ref_probs=ref[0], eta=0.5, policy_features=psi[0],
                                context_weights=weights)
    batched = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi,
                                 context_weights=weights)
    assert single.policy.shape == (6, 5) and single.w.shape == (3,)
    assert isinstance(single.iterations, int) and single.iterations >= 1
    assert torch.allclose(single.w, batched.w[0], atol=1e-8)
    objective = po.policy_objective(single.policy, rewards=rewards[0], ref_probs=ref[0], eta=0.5,
                                    context_weights=weights)
    assert objective.shape == () and objective.item() == pytest.approx(single.objective.item(),
                                                                       rel=1e-12)
    # iterations counts the steps taken: that many steps are enough
    again = po.optimize_policy(rewards[0], ref_probs=ref[0], eta=0.5, policy_features=psi[0],
                               context_weights=weights, max_iter=single.iterations)
    assert torch.equal(again.w, single.w)
    w = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    tilted = ref * torch.exp((psi * w).sum(-1))
    torch.testing.assert_close(po.log_linear_policy(ref, policy_features=psi, w=w),
                               tilted / tilted.sum(-1, keepdim=True), rtol=1e-13, atol=0)


def test_tabular_answer_records_its_logits_and_a_zero_gradient():
    """The closed form: w = log pi - log pi0 on the support of pi0 and 0 outside it, a zero
    gradient norm, no iteration."""
    _, ref, rewards, _ = _problem(11)
    ref = ref.clone()
    ref[0, 0, 1] = ref[2, 3, 4] = 0.0
    ref = ref / ref.sum(-1, keepdim=True)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_class="tabular")
    gibbs = gibbs_policy(ref, rewards, 0.5)
    expected = torch.where(ref > 0, torch.log(gibbs) - torch.log(ref), torch.zeros(()))
    assert torch.allclose(fit.w, expected, atol=1e-12)
    assert fit.w[0, 0, 1] == 0 and fit.w[2, 3, 4] == 0
    assert torch.equal(fit.grad_norm, torch.zeros(3, dtype=torch.float64))
    assert fit.iterations == 0


def test_chunks_of_the_batch_are_solved_independently(monkeypatch):
    """Four problems split into chunks of one (a tiny cache budget) give the unchunked answers."""
    psi, ref, rewards, _ = _problem(12, batch=4, prompts=2)
    whole = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi)
    monkeypatch.setattr(po, "CHUNK_BYTES", 1)
    chunked = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi)
    assert torch.allclose(chunked.w, whole.w, atol=1e-12)
    assert torch.allclose(chunked.policy, whole.policy, atol=1e-12)
    assert chunked.iterations == whole.iterations


def test_one_unweighted_problem_and_its_objective():
    """Without context weights the prompts weigh 1/X each, batched or not; policy_objective of
    one problem [X, K] is a number, the fit's objective."""
    psi, ref, rewards, _ = _problem(13)
    single = po.optimize_policy(rewards[0], ref_probs=ref[0], eta=0.5, policy_features=psi[0])
    uniform = po.optimize_policy(rewards[0], ref_probs=ref[0], eta=0.5, policy_features=psi[0],
                                 context_weights=torch.ones(6))
    assert torch.allclose(single.w, uniform.w, atol=1e-12)
    objective = po.policy_objective(single.policy, rewards=rewards[0], ref_probs=ref[0], eta=0.5)
    assert objective.shape == () and objective.item() == pytest.approx(single.objective.item(),
                                                                       rel=1e-12)


def test_float32_inputs_are_read_in_float64():
    """Tensor inputs (features, w, prompt weights, a starting point) are read in float64: a
    float32 tensor gives exactly the result of its float64 copy."""
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 4, dtype=torch.float64, generator=g)
    ref = torch.softmax(torch.randn(3, 4, dtype=torch.float64, generator=g), -1)
    psi = torch.randn(3, 4, 2, generator=g)
    w = torch.randn(2, generator=g)
    weights = torch.rand(3, generator=g) + 0.5
    narrow = dict(policy_features=psi, context_weights=weights)
    wide = dict(policy_features=psi.double(), context_weights=weights.double())
    got = po.log_linear_policy(ref, policy_features=psi, w=w)
    assert got.dtype == torch.float64
    assert torch.equal(got, po.log_linear_policy(ref, policy_features=psi.double(),
                                                 w=w.double()))
    for a, b in zip(po.objective_derivatives(w, rewards=rewards, ref_probs=ref, eta=0.5, **narrow),
                    po.objective_derivatives(w.double(), rewards=rewards, ref_probs=ref, eta=0.5,
                                             **wide), strict=True):
        assert a.dtype == torch.float64 and torch.equal(a, b)
    fits = [po.optimize_policy(rewards, ref_probs=ref, eta=0.5, initial_w=start, **kwargs).w
            for start, kwargs in [(w, narrow), (w.double(), wide)]]
    assert fits[0].dtype == torch.float64 and torch.equal(*fits)


def test_log_linear_policy_reads_lists_in_float64():
    """Features and ``w`` given as Python lists of numbers that float32 cannot hold give the
    float64 softmax of ``log pi0 + <w, psi>`` written out by hand (float32 would be off by
    about 1e-8)."""
    psi = [[[0.1, 1 / 3], [-0.7, 1 / 7]], [[2 / 3, -0.2], [0.9, -1 / 9]]]
    w = [1 / 3, -2.7]
    ref = torch.tensor([[0.3, 0.7], [0.55, 0.45]], dtype=torch.float64)
    logits = [[math.log(ref[x, a].item()) + sum(p * v for p, v in zip(psi[x][a], w, strict=True))
               for a in range(2)] for x in range(2)]
    expected = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits]
    got = po.log_linear_policy(ref, policy_features=psi, w=w)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-14,
                               atol=0)


def test_a_feature_without_variance_leaves_its_weight_at_the_start():
    """A feature column of zeros has no variance under any policy, so the Fisher matrix and the
    Hessian are singular in its direction (the damping keeps the Cholesky factorisation
    defined); the gradient has no component there, so its weight stays at its start, and the
    other weights are the fit without the column."""
    psi, ref, rewards, _ = _problem(3)
    padded = torch.cat([psi, torch.zeros_like(psi[..., :1])], -1)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=padded)
    plain = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi)
    assert (fit.w[..., -1] == 0).all() and (fit.grad_norm <= po.PO_TOLERANCE).all()
    torch.testing.assert_close(fit.w[..., :-1], plain.w, rtol=0, atol=1e-8)


def test_each_problem_reports_its_own_gradient_and_the_batch_its_slowest_count():
    """``grad_norm`` is each problem's own ``||grad F||`` at its answer (autograd of the
    independently written objective; a loose tolerance keeps it well above round-off), and
    ``iterations`` the largest of the counts the problems take alone: a problem leaves the
    iteration once converged, so an easy one (rewards 0.01 times smaller) does not wait."""
    psi, ref, rewards, _ = _problem(4)
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi, tol=1e-3)
    for row in range(3):
        gradient = jacobian(lambda w, r=row: _objective(w, psi[r], ref[r], rewards[r], 0.5),
                            fit.w[row])
        assert fit.grad_norm[row].item() == pytest.approx(gradient.norm().item(), rel=1e-6)
    psi, ref, rewards, _ = _problem(5, batch=2)
    rewards = rewards * torch.tensor([0.01, 5.0], dtype=torch.float64)[:, None, None]
    fit = po.optimize_policy(rewards, ref_probs=ref, eta=0.1, policy_features=psi)
    alone = [po.optimize_policy(rewards[row], ref_probs=ref[row], eta=0.1,
                                policy_features=psi[row]) for row in range(2)]
    assert fit.iterations == max(one.iterations for one in alone)
    torch.testing.assert_close(fit.w, torch.stack([one.w for one in alone]), rtol=0, atol=1e-9)


def test_the_default_budget_is_five_hundred_steps():
    """A tolerance below round-off (1e-300) cannot be met: the error names the default budget."""
    psi, ref, rewards, _ = _problem(3, batch=1, prompts=2, actions=3, dim=2)
    with pytest.raises(RuntimeError, match="did not converge in 500 steps"):
        po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi, tol=1e-300)


def test_large_collinear_features_give_the_policy_of_their_independent_part():
    """A third feature that is (psi_1 + psi_2) / 3 adds no policy to the log-linear class, so
    with features of scale 100 (a Fisher matrix of entries up to about 1e4 / eta, singular) the
    optimum is the policy found on the first two features alone, on 20 random problems. A
    damping of the singular Fisher matrix not scaled to its diagonal failed to factorise."""
    generator = torch.Generator().manual_seed(0)
    base = 100 * torch.randn(20, 4, 5, 2, dtype=torch.float64, generator=generator)
    psi = torch.cat([base, base.sum(-1, keepdim=True) / 3], -1)
    ref = torch.softmax(torch.randn(20, 4, 5, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(20, 4, 5, dtype=torch.float64, generator=generator)
    with_copy = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=psi)
    alone = po.optimize_policy(rewards, ref_probs=ref, eta=0.5, policy_features=base)
    torch.testing.assert_close(with_copy.objective, alone.objective, rtol=1e-9, atol=1e-9)
