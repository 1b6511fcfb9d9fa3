"""Tests of pessimism inside DPO (``gsfh_utils.dpo``: ``pessimistic_dpo_loss`` and the ``bonus``
of ``train_dpo_tabular``).

Independent computations: the loss written out with ``math`` (``log(1 + exp(-m))``), its gradient
differentiated by hand, the plain ``dpo_loss`` at ``beta = 0``, and, for the trainer, the tabular
ridge Bradley-Terry MLE (``fit_bt_mle`` on one-hot features) followed by the Gibbs policy of its
pointwise-pessimistic reward (``offline.pointwise_pessimistic_policy``).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import examples
from hypothesis import given
from hypothesis import strategies as st

import gsfh_utils as gu
from gsfh_utils import dpo, estimation, offline

values = st.floats(-20.0, 20.0)
uncertainties = st.floats(0.0, 10.0)
positive_eta = st.floats(0.01, 10.0)
radii = st.floats(0.0, 5.0)


def by_hand(pc, pr, rc, rr, bw, bl, eta, beta):
    """``-log sigmoid(eta h + beta (b_w - b_l))`` with ``math``: ``log(1 + exp(-m))``."""
    m = eta * ((pc - rc) - (pr - rr)) + beta * (bw - bl)
    return math.log1p(math.exp(-m)) if m > -30 else -m + math.log1p(math.exp(m))


def loss(pc, pr, rc, rr, bw, bl, eta, beta):
    as_tensor = (lambda v: torch.tensor(v, dtype=torch.float64))  # noqa: E731
    return dpo.pessimistic_dpo_loss(as_tensor(pc), as_tensor(pr), as_tensor(rc), as_tensor(rr),
                                    chosen_uncertainty=as_tensor(bw),
                                    rejected_uncertainty=as_tensor(bl), eta=eta, beta=beta)


@given(values, values, values, values, uncertainties, uncertainties, positive_eta, radii)
def test_loss_against_the_formula_by_hand(pc, pr, rc, rr, bw, bl, eta, beta):
    """To a relative 1e-9: like ``dpo_loss``, the loss is torch's softplus, which returns its
    argument beyond 20 (relative error below exp(-20) / 20)."""
    assert loss(pc, pr, rc, rr, bw, bl, eta, beta).item() == pytest.approx(
        by_hand(pc, pr, rc, rr, bw, bl, eta, beta), rel=1e-9, abs=1e-300)


@given(values, values, values, values, uncertainties, uncertainties, positive_eta, radii)
def test_gradient_against_the_derivative_by_hand(pc, pr, rc, rr, bw, bl, eta, beta):
    """With ``m`` the argument and ``s = sigmoid(-m)``: d/d log pi(a_w) = -eta s,
    d/d log pi(a_l) = eta s, d/d b_w = -beta s, d/d b_l = beta s. Beyond an argument of 20,
    torch's softplus (shared with ``dpo_loss``) is linear, which moves s by at most exp(-20)."""
    inputs = [torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for v in (pc, pr, bw, bl)]
    ref = [torch.tensor(v, dtype=torch.float64) for v in (rc, rr)]
    value = dpo.pessimistic_dpo_loss(inputs[0], inputs[1], *ref,
                                     chosen_uncertainty=inputs[2],
                                     rejected_uncertainty=inputs[3], eta=eta, beta=beta)
    gradient = torch.autograd.grad(value, inputs)
    m = eta * ((pc - rc) - (pr - rr)) + beta * (bw - bl)
    s = 1 / (1 + math.exp(min(m, 700)))
    for measured, expected in zip(gradient, (-eta * s, eta * s, -beta * s, beta * s),
                                  strict=True):
        assert measured.item() == pytest.approx(expected, rel=1e-10,
                                                abs=(eta + beta) * math.exp(-20))


@given(values, values, values, values, uncertainties, uncertainties, positive_eta)
def test_beta_zero_is_dpo(pc, pr, rc, rr, bw, bl, eta):
    plain = dpo.dpo_loss(*(torch.tensor(v, dtype=torch.float64) for v in (pc, pr, rc, rr)), eta)
    assert torch.equal(loss(pc, pr, rc, rr, bw, bl, eta, 0.0), plain)


@given(values, values, uncertainties, uncertainties, st.floats(-5.0, 5.0), positive_eta, radii,
       st.floats(0.01, 5.0))
def test_properties(pc, pr, bw, bl, shift, eta, beta, more):
    """A common shift of both uncertainties changes nothing; more uncertainty on the chosen
    response lowers the loss (its reward counts as pessimism removed), more on the rejected one
    raises it; the loss is positive."""
    base = loss(pc, pr, 0.0, 0.0, bw, bl, eta, beta)
    shifted = loss(pc, pr, 0.0, 0.0, bw + abs(shift), bl + abs(shift), eta, beta)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-9, abs=1e-12)
    assert loss(pc, pr, 0.0, 0.0, bw + more, bl, eta, beta) <= base
    assert loss(pc, pr, 0.0, 0.0, bw, bl + more, eta, beta) >= base
    assert base >= 0


def test_loss_broadcasts_without_reduction():
    value = dpo.pessimistic_dpo_loss(torch.zeros(4, 1), torch.zeros(3), 0.0, 0.0,
                                     chosen_uncertainty=torch.ones(3),
                                     rejected_uncertainty=0.0, eta=0.5, beta=2.0)
    assert value.shape == (4, 3)
    assert torch.allclose(value, torch.full((4, 3), math.log1p(math.exp(-2.0)),
                                            dtype=torch.float64))


@pytest.mark.parametrize("changes, word", [
    (dict(eta=0.0), "eta"), (dict(beta=-1.0), "beta"), (dict(beta=math.inf), "beta"),
    (dict(beta="big"), "beta"), (dict(chosen_uncertainty=torch.tensor([-1.0])),
                                 "chosen_uncertainty"),
    (dict(rejected_uncertainty=torch.tensor([math.inf])), "rejected_uncertainty"),
    (dict(rejected_uncertainty=torch.tensor([math.nan])), "rejected_uncertainty"),
    (dict(chosen_uncertainty=torch.ones(5)), "broadcast"),
    (dict(chosen_uncertainty="x"), "chosen_uncertainty"),
])
def test_bad_inputs_raise_naming_the_argument(changes, word):
    arguments = dict(chosen_uncertainty=torch.zeros(3), rejected_uncertainty=torch.zeros(3),
                     eta=0.5, beta=1.0, **{})
    arguments.update(changes)
    with pytest.raises(ValueError, match=word):
        dpo.pessimistic_dpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3),
                                 **arguments)
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        dpo.pessimistic_dpo_loss(torch.zeros(3), torch.tensor([math.nan] * 3), 0.0, 0.0,
                                 chosen_uncertainty=0.0, rejected_uncertainty=0.0, eta=1.0,
                                 beta=1.0)


def tabular_problem(seed, *, eta, num_contexts=3, num_actions=4, seeds=3, num_pairs=60):
    """A random linear bandit, its tabular twin (one-hot features, theta* = the reward table)
    and comparisons from a behaviour that rarely plays action 0."""
    generator = torch.Generator().manual_seed(seed)
    bandit = gu.LinearBTBandit.random(num_contexts=num_contexts, num_actions=num_actions, dim=3,
                                      norm_bound=2.0, eta=eta, generator=generator)
    features = dpo.one_hot_features(num_contexts, num_actions)
    tabular = gu.LinearBTBandit(features, bandit.rewards().reshape(-1), bandit.ref_probs,
                                bandit.context_probs, eta)
    behaviour = torch.full((num_contexts, num_actions), 1.0)
    behaviour[:, 0] = 0.05
    behaviour = behaviour / behaviour.sum(-1, keepdim=True)
    data = bandit.sample_preferences(num_pairs, behaviour, behaviour, generator, (seeds,))
    return tabular, data


@given(st.integers(0, 10_000), st.floats(0.05, 5.0), st.floats(0.0, 4.0),
       st.floats(0.1, 10.0))
@examples(15)
def test_tabular_minimiser_is_the_gibbs_policy_of_the_pessimistic_mle_reward(seed, eta, beta,
                                                                             reg):
    """The ridge on the total reward eta w + u makes the objective, in r = eta w + u, the
    tabular ridge BT objective: the minimiser is Gibbs(r_hat - beta b) for the tabular MLE and
    its Sigma_D, within the two solvers' tolerance (log-policies differ by at most
    2 (tol/reg + tol/reg) / eta)."""
    tabular, data = tabular_problem(seed, eta=eta)
    z = dpo.pair_feature_diffs(tabular.features, contexts=data.contexts,
                               first=data.first_actions, second=data.second_actions)
    theta_hat = estimation.fit_bt_mle(z, data.labels, reg)
    sigma = estimation.sigma_d(z, reg)
    expected = offline.pointwise_pessimistic_policy(tabular, theta_hat=theta_hat, sigma=sigma,
                                                    beta=beta)
    bonus = beta * offline.action_uncertainty(tabular, sigma)
    chosen, rejected = dpo.chosen_rejected(first=data.first_actions,
                                           second=data.second_actions, labels=data.labels)
    policy, fit = dpo.train_dpo_tabular(tabular.ref_probs, contexts=data.contexts, chosen=chosen,
                                        rejected=rejected, eta=eta, reg=reg, bonus=bonus)
    tolerance = 4 * (estimation.MLE_TOLERANCE + dpo.DPO_TOLERANCE) / (reg * eta)
    assert (policy.log() - expected.log()).abs().max() <= tolerance
    assert fit.grad_norm.max() <= dpo.DPO_TOLERANCE


def test_zero_bonus_is_plain_tabular_dpo():
    tabular, data = tabular_problem(4, eta=0.5)
    chosen, rejected = dpo.chosen_rejected(first=data.first_actions,
                                           second=data.second_actions, labels=data.labels)
    common = dict(contexts=data.contexts, chosen=chosen, rejected=rejected, eta=0.5, reg=1.0)
    plain, _ = dpo.train_dpo_tabular(tabular.ref_probs, **common)
    zero, _ = dpo.train_dpo_tabular(tabular.ref_probs, **common,
                                    bonus=torch.zeros_like(tabular.ref_probs))
    assert torch.allclose(plain, zero, rtol=0, atol=1e-12)


def test_trained_objective_is_the_sum_of_pessimistic_losses_at_its_minimum():
    """The trainer minimises sum_i pessimistic_dpo_loss + reg/2 ||eta w + u||^2: a small step
    of w in any direction from its result does not lower that objective (written with the pure
    loss)."""
    eta, reg = 0.7, 1.0
    tabular, data = tabular_problem(9, eta=eta, seeds=1)
    chosen, rejected = dpo.chosen_rejected(first=data.first_actions[0],
                                           second=data.second_actions[0], labels=data.labels[0])
    contexts = data.contexts[0]
    uncertainty = torch.rand(tabular.ref_probs.shape, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0))
    policy, fit = dpo.train_dpo_tabular(tabular.ref_probs, contexts=contexts, chosen=chosen,
                                        rejected=rejected, eta=eta, reg=reg,
                                        bonus=1.5 * uncertainty)

    def objective(w):
        log_policy = torch.log_softmax(torch.log(tabular.ref_probs) + w, -1)
        ref = torch.log(tabular.ref_probs)
        losses = dpo.pessimistic_dpo_loss(
            log_policy[contexts, chosen], log_policy[contexts, rejected], ref[contexts, chosen],
            ref[contexts, rejected], chosen_uncertainty=uncertainty[contexts, chosen],
            rejected_uncertainty=uncertainty[contexts, rejected], eta=eta, beta=1.5)
        return losses.sum() + 0.5 * reg * ((eta * w + 1.5 * uncertainty) ** 2).sum()

    best = objective(fit.w)
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        step = 1e-3 * torch.randn(fit.w.shape, dtype=torch.float64, generator=generator)
        assert objective(fit.w + step) >= best - 1e-12


@pytest.mark.parametrize("changes, word", [
    (dict(bonus=torch.zeros(2, 2)), "bonus"), (dict(bonus=torch.full((3, 4), math.nan)), "bonus"),
    (dict(bonus=torch.zeros(3, 4), loss_type="ipo"), "sigmoid"),
    (dict(bonus=torch.zeros(3, 4), label_smoothing=0.1), "label_smoothing"),
])
def test_trainer_rejects_a_bad_bonus(changes, word):
    tabular, data = tabular_problem(2, eta=0.5, seeds=1)
    with pytest.raises(ValueError, match=word):
        dpo.train_dpo_tabular(tabular.ref_probs, contexts=data.contexts, chosen=data.first_actions,
                              rejected=data.second_actions, eta=0.5, reg=1.0, **changes)


def test_tabular_bandit_has_the_same_rewards_with_one_logit_per_response():
    generator = torch.Generator().manual_seed(3)
    bandit = gu.LinearBTBandit.random(num_contexts=3, num_actions=4, dim=2, norm_bound=2.0,
                                      eta=0.3, generator=generator)
    tabular = dpo.tabular_bandit(bandit)
    assert tabular.features.shape == (3, 4, 12)
    assert torch.equal(tabular.rewards(), bandit.rewards())
    assert torch.equal(tabular.optimal_policy(), bandit.optimal_policy())
    assert (tabular.ref_probs, tabular.eta) == (bandit.ref_probs, bandit.eta)


def test_tabular_pessimistic_dpo_against_its_steps_done_by_hand():
    """The plain fit is train_dpo_tabular, the radius the bootstrap of the tabular MLE (same
    random stream), the pessimistic fit the Gibbs policy of the pessimistic MLE reward."""
    tabular, data = tabular_problem(6, eta=0.4, seeds=4, num_pairs=80)
    result = dpo.tabular_pessimistic_dpo(tabular, data, reg=1.0, delta=0.1, num_bootstrap=8,
                                         generator=torch.Generator().manual_seed(0))
    z = dpo.pair_feature_diffs(tabular.features, contexts=data.contexts,
                               first=data.first_actions, second=data.second_actions)
    theta_hat = estimation.fit_bt_mle(z, data.labels, 1.0)
    radius = estimation.bootstrap_radius(z, theta_hat=theta_hat, reg=1.0, delta=0.1,
                                         num_bootstrap=8,
                                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(result.radius, radius, rtol=1e-12)
    chosen, rejected = dpo.chosen_rejected(first=data.first_actions,
                                           second=data.second_actions, labels=data.labels)
    plain, _ = dpo.train_dpo_tabular(tabular.ref_probs, contexts=data.contexts, chosen=chosen,
                                     rejected=rejected, eta=0.4, reg=1.0)
    assert torch.allclose(result.plain, plain, rtol=0, atol=1e-14)
    gibbs = offline.pointwise_pessimistic_policy(
        tabular, theta_hat=theta_hat, sigma=estimation.sigma_d(z, 1.0), beta=radius)
    tolerance = 4 * (estimation.MLE_TOLERANCE + dpo.DPO_TOLERANCE) / (1.0 * 0.4)
    assert (result.gibbs.log() - gibbs.log()).abs().max() <= 1e-12
    assert (result.pessimistic.log() - gibbs.log()).abs().max() <= tolerance


def test_errors_name_the_argument_first():
    """Each message starts with the name of the bad argument (the loss, the trainer's bonus and
    its eta, the linear trainer's offsets and centre), and says what the bonus needs."""
    zeros = torch.zeros(3)
    loss_inputs = dict(chosen_uncertainty=zeros, rejected_uncertainty=zeros, eta=0.5, beta=1.0)
    for changes, start in ((dict(eta=0.0), "eta must"),
                           (dict(chosen_uncertainty=-torch.ones(3)), "chosen_uncertainty must"),
                           (dict(rejected_uncertainty=torch.full((3,), math.inf)),
                            "rejected_uncertainty must")):
        with pytest.raises(ValueError, match=f"^{start}"):
            dpo.pessimistic_dpo_loss(zeros, zeros, zeros, zeros, **(loss_inputs | changes))
    tabular, data = tabular_problem(2, eta=0.5, seeds=1)
    pairs = dict(contexts=data.contexts, chosen=data.first_actions, rejected=data.second_actions,
                 reg=1.0)
    for eta in (-1.0, None):
        with pytest.raises(ValueError, match="^eta must"):
            dpo.train_dpo_tabular(tabular.ref_probs, **pairs, eta=eta,
                                  bonus=torch.zeros(3, 4))
    message = "^bonus \\(pessimistic DPO\\) needs loss_type='sigmoid' without label_smoothing$"
    with pytest.raises(ValueError, match=message):
        dpo.train_dpo_tabular(tabular.ref_probs, **pairs, eta=0.5, label_smoothing=0.1,
                              bonus=torch.zeros(3, 4))
    z = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="^margin_offsets"):
        dpo.train_dpo_linear(z, eta=1.0, reg=1.0, margin_offsets=torch.zeros(4))
    with pytest.raises(ValueError, match="^ridge_center"):
        dpo.train_dpo_linear(z, eta=1.0, reg=1.0, ridge_center=torch.full((3,), math.inf))


def test_python_lists_are_read_in_float64():
    """A bonus, margin offsets and a ridge centre given as Python lists (float64 numbers) give
    exactly the fit of the same float64 tensors (not a float32 reading of them)."""
    tabular, data = tabular_problem(3, eta=0.5, seeds=1)
    pairs = dict(contexts=data.contexts[0], chosen=data.first_actions[0],
                 rejected=data.second_actions[0], eta=0.5, reg=1.0)
    bonus = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    from_tensor, _ = dpo.train_dpo_tabular(tabular.ref_probs, **pairs, bonus=bonus)
    from_list, _ = dpo.train_dpo_tabular(tabular.ref_probs, **pairs, bonus=bonus.tolist())
    assert torch.equal(from_list, from_tensor)
    z = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    offsets = [0.1 * i for i in range(6)]
    center = [0.3, -0.7]
    tensors = dpo.train_dpo_linear(z, eta=0.5, reg=1.0, tol=1e-12,
                                   margin_offsets=torch.tensor(offsets, dtype=torch.float64),
                                   ridge_center=torch.tensor(center, dtype=torch.float64))
    lists = dpo.train_dpo_linear(z, eta=0.5, reg=1.0, tol=1e-12, margin_offsets=offsets,
                                 ridge_center=center)
    assert torch.equal(lists.w, tensors.w)


def test_tabular_pessimistic_dpo_passes_its_tolerance_to_the_trainers():
    """A tolerance above every starting gradient norm stops both DPO fits at w = 0: the policies
    are the reference policy (the default tolerance would move them)."""
    tabular, data = tabular_problem(6, eta=0.4, seeds=2, num_pairs=40)
    result = dpo.tabular_pessimistic_dpo(tabular, data, reg=1.0, delta=0.1, num_bootstrap=4,
                                         generator=torch.Generator().manual_seed(0), tol=1e6)
    reference = tabular.ref_probs.expand(2, 3, 4)
    assert torch.allclose(result.plain, reference, rtol=0, atol=1e-15)
    assert torch.allclose(result.pessimistic, reference, rtol=0, atol=1e-15)


def test_linear_trainer_reports_the_starting_gradient_when_it_stops_at_zero():
    """With a tolerance above the starting gradient the trainer stops at w = 0 and reports the
    gradient there, in theta units: ``|| -sum_i sigmoid(-eta o_i) z_i - reg c ||`` (``o`` the
    margin offsets, ``c`` the ridge centre; ``||sum_i z_i|| / 2`` by default), in float64; and
    a tolerance equal to that norm is met ("at most tol")."""
    eta, reg = 0.7, 1.3
    z = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    offsets = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    center = torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64)
    for margin_offsets, ridge_center in ((None, None), (offsets, center)):
        fit = dpo.train_dpo_linear(z, eta=eta, reg=reg, tol=1e6, margin_offsets=margin_offsets,
                                   ridge_center=ridge_center)
        assert fit.iterations == 0 and torch.equal(fit.w, torch.zeros(2, 3, dtype=torch.float64))
        for b in range(2):
            o = [0.0] * 5 if margin_offsets is None else offsets.tolist()
            c = [0.0] * 3 if ridge_center is None else center.tolist()
            gradient = [-sum(z[b, i, j].item() / (1 + math.exp(eta * o[i])) for i in range(5))
                        - reg * c[j] for j in range(3)]
            expected = math.sqrt(sum(g * g for g in gradient))
            assert fit.grad_norm.dtype == torch.float64
            assert abs(fit.grad_norm[b].item() - expected) <= 1e-14 * expected
    # "converged when the gradient norm is at most tol": a tolerance equal to the starting
    # gradient norm stops at w = 0 (one problem, so its norm is the largest)
    start = dpo.train_dpo_linear(z[0], eta=eta, reg=reg, tol=1e6).grad_norm.item()
    fit = dpo.train_dpo_linear(z[0], eta=eta, reg=reg, tol=start)
    assert fit.iterations == 0 and fit.grad_norm.item() == start
