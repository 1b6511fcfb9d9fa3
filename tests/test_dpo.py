"""Tests of gsfh_utils.dpo: the DPO loss and its variants, the Newton trainers against
independent solvers, the pair selectors and the iterative loop."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.optimize import minimize

import gsfh_utils as gu
from gsfh_utils import dpo
from gsfh_utils.estimation import fit_bt_mle
from gsfh_utils.sampling import sample_categorical

finite = st.floats(-30, 30, allow_nan=False, allow_infinity=False)
positive_eta = st.floats(1e-3, 1e3)


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


@given(finite, finite, finite, finite, positive_eta, st.floats(0.0, 0.49))
def test_sigmoid_loss_matches_formula(pc, pr, rc, rr, eta, ls):
    h = _h(pc, pr, rc, rr)

    def nll(u):  # -log sigmoid(u) = log(1 + exp(-u)), computed stably in plain Python
        return max(-u, 0.0) + math.log1p(math.exp(-abs(u)))

    expected = (1 - ls) * nll(eta * h) + ls * nll(-eta * h)
    got = dpo.dpo_loss(*(torch.tensor(v, dtype=torch.float64) for v in (pc, pr, rc, rr)),
                       eta, "sigmoid", ls).item()
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(finite, finite, finite, finite, positive_eta)
def test_ipo_and_hinge_match_formulas(pc, pr, rc, rr, eta):
    h = _h(pc, pr, rc, rr)
    args = [torch.tensor(v, dtype=torch.float64) for v in (pc, pr, rc, rr)]
    assert dpo.dpo_loss(*args, eta, "ipo").item() == pytest.approx((h - 1 / (2 * eta)) ** 2,
                                                                    rel=1e-9, abs=1e-9)
    assert dpo.dpo_loss(*args, eta, "hinge").item() == pytest.approx(max(0.0, 1 - eta * h),
                                                                      rel=1e-9, abs=1e-9)


@given(finite, positive_eta)
def test_sigmoid_loss_antisymmetry(h, eta):
    # softplus(-x) - softplus(x) = -x: swapping winner and loser changes the loss by eta h
    zero = torch.tensor(0.0, dtype=torch.float64)
    forward = dpo.dpo_loss(torch.tensor(h, dtype=torch.float64), zero, zero, zero, eta)
    backward = dpo.dpo_loss(zero, torch.tensor(h, dtype=torch.float64), zero, zero, eta)
    assert (forward - backward).item() == pytest.approx(-eta * h, abs=1e-9 * (1 + abs(eta * h)))


def test_loss_is_exported_and_broadcasts():
    assert gu.dpo_loss is dpo.dpo_loss
    out = gu.dpo_loss(torch.zeros(3, 1), torch.zeros(1, 4), 0.0, torch.zeros(4), 0.5)
    assert out.shape == (3, 4)
    assert torch.allclose(out, torch.full((3, 4), math.log(2), dtype=out.dtype))


@given(finite, finite, finite, finite, positive_eta, st.floats(0.0, 0.49),
       st.sampled_from(["sigmoid", "ipo", "hinge"]))
def test_loss_gradient_matches_the_derivative_by_hand(pc, pr, rc, rr, eta, ls, loss_type):
    """Autograd of dpo_loss against the derivative written out by hand. With
    h = (pc - rc) - (pr - rr), dh/dpc = dh/drr = 1 and dh/dpr = dh/drc = -1, and dloss/dh is
    sigmoid: eta ((1 - ls)(sigmoid(eta h) - 1) + ls sigmoid(eta h)); ipo: 2 (h - 1/(2 eta));
    hinge: -eta where eta h < 1, else 0 (away from the kink)."""
    h = _h(pc, pr, rc, rr)
    if loss_type == "sigmoid":
        probability = 1 / (1 + math.exp(-eta * h)) if eta * h > -700 else 0.0
        slope = eta * ((1 - ls) * (probability - 1) + ls * probability)
    elif loss_type == "ipo":
        slope = 2 * (h - 1 / (2 * eta))
    else:
        assume(abs(1 - eta * h) > 1e-6)
        slope = -eta if eta * h < 1 else 0.0
    inputs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (pc, pr, rc, rr)]
    loss = dpo.dpo_loss(*inputs, eta, loss_type, ls if loss_type == "sigmoid" else 0.0)
    grads = torch.autograd.grad(loss, inputs)
    for grad, sign in zip(grads, (1, -1, -1, 1), strict=True):
        assert grad.item() == pytest.approx(sign * slope, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kwargs, word", [
    (dict(loss_type="kto"), "loss_type"),
    (dict(label_smoothing=-0.1), "label_smoothing"),
    (dict(label_smoothing=0.5), "label_smoothing"),
    (dict(label_smoothing=0.9), "label_smoothing"),
    (dict(loss_type="ipo", label_smoothing=0.1), "label_smoothing"),
    (dict(eta=0.0), "eta"),
    (dict(eta=float("nan")), "eta"),
])
def test_loss_bad_inputs(kwargs, word):
    params = dict(eta=1.0, loss_type="sigmoid", label_smoothing=0.0) | kwargs
    with pytest.raises(ValueError, match=f"^{word}"):
        dpo.dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), **params)


def test_loss_rejects_shapes_and_nan():
    with pytest.raises(ValueError, match="broadcast"):
        dpo.dpo_loss(torch.zeros(2), torch.zeros(3), 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        dpo.dpo_loss(torch.tensor([float("nan")]), 0.0, 0.0, 0.0, 1.0)


def _problem(seed, batch=(3,), num_pairs=40, dim=4):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(*batch, num_pairs, dim, dtype=torch.float64, generator=generator)
    return z, generator


def test_sigmoid_dpo_fit_is_the_bt_mle():
    z, generator = _problem(1)
    labels = torch.ones(z.shape[:-1], dtype=torch.float64)  # z = chosen - rejected
    labels[..., ::3] = 0.0
    signs = (2 * labels - 1).unsqueeze(-1)
    eta, reg = 0.3, 0.5
    fit = dpo.train_dpo_linear(signs * z, eta=eta, reg=reg)
    theta = fit_bt_mle(z, labels, reg)
    assert (fit.grad_norm <= dpo.DPO_TOLERANCE).all()
    assert torch.allclose(fit.theta, theta, atol=4 * dpo.DPO_TOLERANCE / reg)
    assert torch.allclose(fit.w * eta, fit.theta)


def test_ipo_fit_matches_normal_equations():
    z, _ = _problem(2, batch=(2,))
    eta, reg = 0.5, 0.3
    fit = dpo.train_dpo_linear(z, eta=eta, reg=reg, loss_type="ipo")
    # minimise sum (<w, z_i> - c)^2 + reg/2 eta^2 ||w||^2, c = 1/(2 eta)
    dim = z.shape[-1]
    lhs = 2 * z.transpose(-1, -2) @ z + reg * eta**2 * torch.eye(dim, dtype=torch.float64)
    rhs = 2 / (2 * eta) * z.sum(-2)
    expected = torch.linalg.solve(lhs, rhs.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(fit.w, expected, atol=1e-9)
    # The objective is quadratic: one exact Newton step (full step, exact Hessian) lands on the
    # minimiser, to round-off far below the tolerance.
    assert fit.iterations == 1


def test_label_smoothed_fit_matches_scipy():
    z, _ = _problem(3, batch=(), num_pairs=30, dim=3)
    eta, reg, ls = 0.8, 0.2, 0.15
    fit = dpo.train_dpo_linear(z, eta=eta, reg=reg, label_smoothing=ls, tol=1e-10)
    zn = z.numpy()

    def objective(w):
        h = eta * zn @ w
        return float(((1 - ls) * np.logaddexp(0, -h) + ls * np.logaddexp(0, h)).sum()
                     + 0.5 * reg * eta**2 * w @ w)

    result = minimize(objective, np.zeros(3), method="BFGS", options=dict(gtol=1e-10))
    assert np.allclose(fit.w.numpy(), result.x, atol=1e-6)
    assert dpo.dpo_objective_linear(fit.w, z, eta=eta, reg=reg, label_smoothing=ls).item() <= \
        result.fun + 1e-9


def test_batched_fit_equals_separate_fits():
    z, _ = _problem(4, batch=(2, 3))
    batched = dpo.train_dpo_linear(z, eta=0.4, reg=1.0)
    for i in range(2):
        for j in range(3):
            single = dpo.train_dpo_linear(z[i, j], eta=0.4, reg=1.0)
            assert torch.allclose(batched.w[i, j], single.w, atol=1e-8)


@pytest.mark.parametrize("kwargs, word", [
    (dict(loss_type="hinge"), "loss_type=.hinge. is not twice differentiable"),
    (dict(loss_type="nope"), "loss_type"),
    (dict(reg=0.0), "reg"),
    (dict(eta=-1.0), "eta"),
])
def test_trainer_bad_inputs(kwargs, word):
    z, _ = _problem(5)
    params = dict(eta=1.0, reg=1.0) | kwargs
    with pytest.raises(ValueError, match=f"^{word}"):
        dpo.train_dpo_linear(z, **params)


def test_tabular_fit_matches_scipy_and_gibbs_of_mle():
    generator = torch.Generator().manual_seed(6)
    num_contexts, num_actions, num_pairs, eta, reg = 2, 3, 25, 0.5, 0.7
    ref = torch.softmax(torch.randn(num_contexts, num_actions, dtype=torch.float64,
                                    generator=generator), -1)
    contexts = torch.randint(0, num_contexts, (num_pairs,), generator=generator)
    chosen = torch.randint(0, num_actions, (num_pairs,), generator=generator)
    rejected = (chosen + torch.randint(1, num_actions, (num_pairs,), generator=generator)) \
        % num_actions
    policy, fit = dpo.train_dpo_tabular(ref, contexts=contexts, chosen=chosen,
                                        rejected=rejected, eta=eta, reg=reg)
    assert policy.shape == (num_contexts, num_actions)
    c, a, b = contexts.numpy(), chosen.numpy(), rejected.numpy()

    def objective(flat):
        w = flat.reshape(num_contexts, num_actions)
        h = eta * (w[c, a] - w[c, b])
        return float(np.logaddexp(0, -h).sum() + 0.5 * reg * eta**2 * (flat**2).sum())

    result = minimize(objective, np.zeros(num_contexts * num_actions), method="BFGS",
                      options=dict(gtol=1e-10))
    expected = torch.softmax(torch.log(ref) + torch.tensor(result.x).reshape(num_contexts,
                                                                              num_actions), -1)
    assert torch.allclose(policy, expected, atol=1e-6)
    # and the same policy is the Gibbs policy of the tabular BT MLE
    features = dpo.one_hot_features(num_contexts, num_actions)
    theta = fit_bt_mle(dpo.pair_feature_diffs(features, contexts=contexts, first=chosen,
                                              second=rejected),
                       torch.ones(num_pairs, dtype=torch.float64), reg)
    gibbs = gu.gibbs_policy(ref, theta.reshape(num_contexts, num_actions), eta)
    assert torch.allclose(policy, gibbs, atol=1e-10)


def test_chosen_rejected_and_linear_policy():
    first, second = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    chosen, rejected = dpo.chosen_rejected(first=first, second=second,
                                           labels=torch.tensor([1.0, 0.0, 1.0]))
    assert chosen.tolist() == [0, 4, 2] and rejected.tolist() == [3, 1, 5]
    with pytest.raises(ValueError, match="labels"):
        dpo.chosen_rejected(first=first, second=second, labels=torch.tensor([0.5, 0.0, 1.0]))
    ref = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    features = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    policy = dpo.linear_policy(ref, features=features,
                               w=torch.tensor([0.0, math.log(2), 0.0], dtype=torch.float64))
    assert torch.allclose(policy, torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64))


def test_selectors():
    generator = torch.Generator().manual_seed(7)
    scores = torch.randn(4000, 5, dtype=torch.float64, generator=generator)
    first, second = dpo.select_pairs(scores, "max_min", generator)
    assert torch.equal(first, scores.argmax(-1)) and torch.equal(second, scores.argmin(-1))
    first, second = dpo.select_pairs(scores, "max_random", generator)
    assert torch.equal(first, scores.argmax(-1)) and (second != first).all()
    # the other response is uniform over the 4 remaining positions
    offsets = ((second - first) % 5).bincount(minlength=5)[1:].to(torch.float64)
    assert (offsets / 4000 - 0.25).abs().max() < 5 * math.sqrt(0.25 * 0.75 / 4000)
    first, second = dpo.select_pairs(scores, "random", generator)
    assert (first != second).all()
    counts = first.bincount(minlength=5).to(torch.float64)
    assert (counts / 4000 - 0.2).abs().max() < 5 * math.sqrt(0.2 * 0.8 / 4000)
    with pytest.raises(ValueError, match="selector"):
        dpo.select_pairs(scores, "best_of_n", generator)
    with pytest.raises(ValueError, match="at least 2"):
        dpo.select_pairs(scores[:, :1], "random", generator)


def _bandit(seed=8, eta=0.3):
    generator = torch.Generator().manual_seed(seed)
    bandit = gu.LinearBTBandit.random(num_contexts=3, num_actions=5, dim=3, norm_bound=2.0,
                                      eta=eta, generator=generator)
    return bandit, generator


def test_iterative_dpo_runs_and_is_reproducible():
    bandit, generator = _bandit()
    start = bandit.sample_preferences(20, bandit.ref_probs, bandit.ref_probs, generator, (4,))
    loop = dict(num_iterations=2, pairs_per_iteration=10, responses_per_prompt=4, reg=1.0)
    results = [dpo.iterative_dpo(bandit, start, **loop, selector="max_min",
                                 generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert results[0].policies.shape == (3, 4, 3, 5)
    assert results[0].num_pairs == [20, 30, 40]
    assert torch.equal(results[0].policies, results[1].policies)
    # the first policy is offline DPO on the start data, i.e. the Gibbs policy of its MLE
    assert torch.allclose(results[0].policies[0], dpo.mle_gibbs_policy(bandit, start, reg=1.0),
                          atol=1e-9)
    assert torch.allclose(results[0].policies[0], dpo.offline_dpo(bandit, start, reg=1.0),
                          atol=1e-12)
    moving = dpo.iterative_dpo(bandit, start, **loop, selector="random", generator=generator,
                               reference="previous")
    # with reference="previous", pi_t ∝ pi_{t-1} exp(<w_t, phi>), w_t the DPO fit on the
    # first num_pairs[t] comparisons against pi_{t-1}: recomputed from the collected data
    previous = bandit.ref_probs
    for t, size in enumerate(moving.num_pairs):
        prefix = gu.Preferences(*(getattr(moving.data, name)[..., :size] for name in (
            "contexts", "first_actions", "second_actions", "labels")),
            moving.data.feature_diffs[..., :size, :])
        signs = (2 * prefix.labels - 1).unsqueeze(-1)
        fit = dpo.train_dpo_linear(signs * prefix.feature_diffs, eta=bandit.eta, reg=1.0)
        expected = dpo.linear_policy(previous, features=bandit.features, w=fit.w)
        assert torch.allclose(moving.policies[t], expected, atol=1e-9)
        previous = expected


@pytest.mark.parametrize("selector", ["max_min", "max_random"])
def test_iterative_dpo_replays_its_docstring(selector):
    """The loop written out from the docstring on the same stream: DPO on all data so far (the
    Gibbs policy of the MLE, fixed reference), prompts from d0, n responses from the policy,
    scored by eta log(pi / pi0) (the MLE reward up to a constant per prompt), a pair by the
    selector, Bradley-Terry labels from r*; the policies and the collected data must agree."""
    bandit, generator = _bandit(seed=11)
    start = bandit.sample_preferences(15, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    result = dpo.iterative_dpo(bandit, start, num_iterations=2, pairs_per_iteration=6,
                               responses_per_prompt=3, selector=selector, reg=0.5,
                               generator=torch.Generator().manual_seed(2))
    replay = torch.Generator().manual_seed(2)
    data = start
    for t in range(3):
        policy = dpo.mle_gibbs_policy(bandit, data, reg=0.5)
        assert torch.allclose(result.policies[t], policy, atol=1e-8)
        assert result.num_pairs[t] == len(data)
        if t == 2:
            break
        contexts = bandit.sample_contexts(6, replay, (2,))
        responses = sample_categorical(policy[torch.arange(2)[:, None], contexts], 3, replay)
        scores = bandit.eta * torch.log(policy / bandit.ref_probs)
        scores = scores[torch.arange(2)[:, None, None], contexts[..., None], responses]
        first_pos, second_pos = dpo.select_pairs(scores, selector, replay)
        first = responses.gather(-1, first_pos[..., None]).squeeze(-1)
        second = responses.gather(-1, second_pos[..., None]).squeeze(-1)
        rewards = bandit.rewards()
        margin = rewards[contexts, first] - rewards[contexts, second]
        labels = (torch.rand(margin.shape, dtype=torch.float64, generator=replay)
                  < torch.sigmoid(margin)).to(torch.float64)
        new = gu.Preferences(contexts, first, second, labels,
                             bandit.features[contexts, first] - bandit.features[contexts, second])
        data = data.concat(new)
    for name in ("contexts", "first_actions", "second_actions", "labels", "feature_diffs"):
        assert torch.equal(getattr(result.data, name), getattr(data, name))


@pytest.mark.parametrize("kwargs, word", [
    (dict(reference="ema"), "reference"),
    (dict(selector="top2"), "selector"),
    (dict(responses_per_prompt=1), "responses_per_prompt"),
    (dict(num_iterations=0), "num_iterations"),
    (dict(pairs_per_iteration=0), "pairs_per_iteration must be a positive integer"),
    (dict(responses_per_prompt=0), "responses_per_prompt must be a positive integer"),
])
def test_iterative_dpo_bad_inputs(kwargs, word):
    bandit, generator = _bandit()
    start = bandit.sample_preferences(10, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    params = dict(num_iterations=1, pairs_per_iteration=5, responses_per_prompt=3,
                  selector="max_min", reg=1.0) | kwargs
    with pytest.raises(ValueError, match=f"^{word}"):
        dpo.iterative_dpo(bandit, start, generator=generator, **params)


def test_gibbs_frontier_against_the_gibbs_family_by_hand():
    """F(k) is the reward of the Gibbs policy pi_s ∝ pi0 exp(r*/s) whose KL is k: for a few
    coefficients s, pi_s, its mean KL and its mean reward are written out with numpy, and F at
    that KL must return that reward; beyond the largest reachable KL, F is the best reward."""
    bandit, generator = _bandit()
    ref, rewards, weights = (t.numpy() for t in (bandit.ref_probs, bandit.rewards(),
                                                 bandit.context_probs))
    kls, values = [], []
    for s in (0.05, 0.3, 2.0):
        unnormalised = ref * np.exp(rewards / s)
        policy = unnormalised / unnormalised.sum(-1, keepdims=True)
        kls.append(float((weights * (policy * np.log(policy / ref)).sum(-1)).sum()))
        values.append(float((weights * (policy * rewards).sum(-1)).sum()))
    frontier = dpo.gibbs_frontier_reward(bandit, torch.tensor(kls))
    assert np.allclose(frontier.numpy(), values, rtol=1e-7, atol=0)  # bisection on the KL
    best = float((weights * rewards.max(-1)).sum())
    assert dpo.gibbs_frontier_reward(bandit, 1e3).item() == pytest.approx(best, abs=1e-9)
    # no policy lies above the frontier at its own KL
    policies = gu.random_policies(bandit.ref_probs, 50, generator).transpose(0, 1)
    kl = (gu.kl_divergence(policies, bandit.ref_probs) * bandit.context_probs).sum(-1)
    reward = ((policies * bandit.rewards()).sum(-1) * bandit.context_probs).sum(-1)
    assert (dpo.gibbs_frontier_reward(bandit, kl) - reward >= -1e-9).all()


def test_rso_dpo_moves_towards_the_reward_model():
    """One context, three responses, comparisons that always prefer response 0: the reward model
    ranks 0 first, RSO's synthetic pairs are labelled by it, and the DPO step must raise the
    probability of response 0 above pi0's (labels flipped anywhere in the pipeline lower it)."""
    features = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    bandit = gu.LinearBTBandit(features, torch.zeros(3, dtype=torch.float64),
                               torch.full((1, 3), 1 / 3, dtype=torch.float64),
                               torch.ones(1, dtype=torch.float64), 0.5)
    first = torch.tensor([[0, 0, 0, 0, 1, 2] * 5])
    second = torch.tensor([[1, 2, 1, 2, 0, 0] * 5])
    labels = (first == 0).to(torch.float64)  # response 0 always wins
    data = gu.Preferences(torch.zeros_like(first), first, second, labels,
                          features[0, first[0]] - features[0, second[0]])
    policy = dpo.rso_dpo(bandit, data, reg=0.1, num_pairs=400, pool_size=8,
                         generator=torch.Generator().manual_seed(0))
    assert policy[0, 0, 0] > 0.5 > 1 / 3


def test_rso_dpo_against_a_hand_labelled_pair_set():
    """Two responses with phi = 0 and 1 and uniform pi0; 2000 comparisons prefer response 1, so
    the reward model's margin is theta_rm with 2000 sigmoid(-theta_rm) = reg theta_rm (about
    9.9: every synthetic label says "1 beats 0" with probability 1 - 5e-5). With a pool of two,
    RSO keeps both responses, so the synthetic pair set is n' copies of (chosen 1, rejected 0)
    plus pairs of a response with itself (z = 0, no effect), n' unknown. DPO on it is solved by
    hand: theta = eta log(pi(1)/pi(0)) satisfies n' sigmoid(-theta) = reg theta, so
    n' = reg theta (1 + e^theta) must be a whole number between 1 and num_pairs. Labels flipped
    anywhere (the pair order, the comparison with the uniforms, the margin's sign) make
    theta < 0 and n' negative."""
    eta, reg, num_pairs = 0.5, 0.01, 40
    features = torch.tensor([[[0.0], [1.0]]], dtype=torch.float64)
    bandit = gu.LinearBTBandit(features, torch.zeros(1, dtype=torch.float64),
                               torch.full((1, 2), 0.5, dtype=torch.float64),
                               torch.ones(1, dtype=torch.float64), eta)
    first = torch.ones(1, 2000, dtype=torch.long)
    data = gu.Preferences(torch.zeros_like(first), first, torch.zeros_like(first),
                          torch.ones(1, 2000, dtype=torch.float64),
                          torch.ones(1, 2000, 1, dtype=torch.float64))
    policy = dpo.rso_dpo(bandit, data, reg=reg, num_pairs=num_pairs, pool_size=2,
                         generator=torch.Generator().manual_seed(0), tol=1e-12)
    theta = eta * float(policy[0, 0, 1].log() - policy[0, 0, 0].log())
    pairs = reg * theta * (1 + math.exp(theta))
    assert 1 <= round(pairs) <= num_pairs
    assert pairs == pytest.approx(round(pairs), abs=1e-6)


def test_policy_summary_and_dpo_mle_agreement():
    bandit, generator = _bandit(eta=0.4)
    data = bandit.sample_preferences(60, bandit.ref_probs, bandit.ref_probs, generator, (3,))
    summary = dpo.policy_summary(bandit, bandit.optimal_policy())
    assert summary["J"].item() == pytest.approx(bandit.optimal_value().item(), abs=1e-12)
    assert summary["deficit"].item() == pytest.approx(0.0, abs=1e-9)  # pi* is on the frontier
    # a policy off the frontier, against numpy sums
    policy = gu.random_policies(bandit.ref_probs, 1, generator)[:, 0]
    summary = dpo.policy_summary(bandit, policy)
    p, ref, r, d0 = (t.numpy() for t in (policy, bandit.ref_probs, bandit.rewards(),
                                         bandit.context_probs))
    kl = float((d0 * (p * np.log(p / ref)).sum(-1)).sum())
    reward = float((d0 * (p * r).sum(-1)).sum())
    assert summary["kl"].item() == pytest.approx(kl, rel=1e-10)
    assert summary["reward"].item() == pytest.approx(reward, rel=1e-10, abs=1e-12)
    assert summary["J"].item() == pytest.approx(reward - 0.4 * kl, rel=1e-10, abs=1e-12)
    assert summary["deficit"].item() == pytest.approx(
        dpo.gibbs_frontier_reward(bandit, kl).item() - reward, rel=1e-9, abs=1e-12)
    assert summary["deficit"].item() > 0
    # DPO and the Gibbs policy of the MLE: the gap is max |log pi_DPO - log pi_MLE|, computed
    # here from the two policies, and it is within the bound the tolerances allow
    gap, bound = dpo.dpo_mle_agreement(bandit, data, reg=1.0)
    direct = (torch.log(dpo.offline_dpo(bandit, data, reg=1.0))
              - torch.log(dpo.mle_gibbs_policy(bandit, data, reg=1.0))).abs().amax((-1, -2))
    assert torch.allclose(gap, direct, atol=1e-12)
    assert (gap <= bound).all() and (bound < 1e-6).all()


def test_leaning_instance_is_the_random_bandit_with_a_leaning_reference():
    """Against the construction by hand from the same stream; pi0 puts less mass on the better
    responses (negative rank correlation with r* on average)."""
    bandit = dpo.leaning_instance(num_contexts=6, num_actions=9, dim=4, norm_bound=3.0, eta=0.2,
                              generator=torch.Generator().manual_seed(3), lean=2.0)
    generator = torch.Generator().manual_seed(3)
    base = gu.LinearBTBandit.random(num_contexts=6, num_actions=9, dim=4, norm_bound=3.0,
                                    eta=0.2, generator=generator)
    noise = torch.randn(6, 9, dtype=torch.float64, generator=generator)
    logits = -2.0 * base.rewards() + noise
    expected = torch.exp(logits - logits.logsumexp(-1, keepdim=True))
    assert torch.allclose(bandit.ref_probs, expected, rtol=1e-12, atol=0)
    assert torch.equal(bandit.features, base.features) and bandit.eta == 0.2
    centred = bandit.rewards() - bandit.rewards().mean(-1, keepdim=True)
    assert (centred * bandit.ref_probs.log()).sum() < 0
    with pytest.raises(ValueError, match="lean"):
        dpo.leaning_instance(num_contexts=2, num_actions=3, dim=2, norm_bound=1.0, eta=0.2,
                         generator=torch.Generator(), lean=float("nan"))


def test_weighted_pairs_equal_repeated_pairs():
    """Weight 2 on a pair is the same objective as the pair twice; bad pairs and weights are
    named."""
    z, _ = _problem(9, batch=(), num_pairs=12, dim=3)
    weights = torch.ones(12, dtype=torch.float64)
    weights[:5] = 2.0
    weighted = dpo.train_dpo_linear(z, eta=0.6, reg=0.4, weights=weights)
    repeated = dpo.train_dpo_linear(torch.cat([z, z[:5]]), eta=0.6, reg=0.4)
    assert torch.allclose(weighted.w, repeated.w, atol=1e-9)
    for pairs, kwargs, match in [
        (z[0], {}, r"^chosen_minus_rejected must have shape \[\.\.\., n, d\]"),
        (z[:, :0], {}, r"^chosen_minus_rejected must have shape"),
        (z * math.inf, {}, "^chosen_minus_rejected must be finite"),
        (z, dict(weights=torch.ones(5)), r"^weights \(shape \(5,\)\) must broadcast"),
        (z, dict(weights=-weights), "^weights must be finite and non-negative"),
        (z, dict(tol=0.0), "^tol must be positive"),
    ]:
        with pytest.raises(ValueError, match=match):
            dpo.train_dpo_linear(pairs, eta=0.6, reg=0.4, **kwargs)


def test_loss_reads_numbers_and_integer_tensors_and_names_the_rest():
    """Python numbers and integer tensors are read as float64 log-probabilities; anything else
    is a ValueError naming the argument."""
    value = dpo.dpo_loss(-1.0, torch.tensor([-2]), [0.0], 0, 0.5)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(math.log1p(math.exp(-0.5 * 1.0)), rel=1e-14)
    with pytest.raises(ValueError, match="^ref_rejected_logps must be a tensor"):
        dpo.dpo_loss(0.0, 0.0, 0.0, "zero", 0.5)


def test_bt_likelihood_identity_error_is_round_off():
    """The DPO loss on the policy's log-probabilities is the BT likelihood of theta = eta w:
    their difference is within the float64 bound for any w."""
    bandit, generator = _bandit(eta=0.4)
    data = bandit.sample_preferences(25, bandit.ref_probs, bandit.ref_probs, generator, (3,))
    w = 3 * torch.randn(3, bandit.dim, dtype=torch.float64, generator=generator)
    error = dpo.bt_likelihood_identity_error(bandit, data, w)
    assert error.shape == (3, 25) and (error <= 1).all()


def test_training_that_cannot_converge_says_so_and_bad_features_are_named():
    z, _ = _problem(10, batch=(), num_pairs=20, dim=3)
    with pytest.raises(RuntimeError, match="did not converge in 1 Newton steps"):
        dpo.train_dpo_linear(z, eta=0.5, reg=0.1, max_iter=1)
    # the documented default of 100 steps: a tolerance below round-off is never met
    with pytest.raises(RuntimeError, match="did not converge in 100 Newton steps"):
        dpo.train_dpo_linear(z, eta=0.5, reg=0.1, tol=1e-300)
    bandit, generator = _bandit()
    data = bandit.sample_preferences(5, bandit.ref_probs, bandit.ref_probs, generator)
    with pytest.raises(ValueError, match=r"^features must have shape \[3, 5, d\]"):
        dpo.offline_dpo(bandit, data, reg=1.0, features=torch.zeros(3, 4, 2))


# --------------------------------------------------------------------------------------------
# Options, shapes and messages pinned down (written in answer to mutation testing, issue 16).
# --------------------------------------------------------------------------------------------


def test_objective_matches_numpy_with_weights_smoothing_and_a_batch():
    """dpo_objective_linear against the formula written out in numpy, per problem of a batch:
    weighted per-pair losses plus reg/2 ||eta w||^2; by default the plain sigmoid loss with unit
    weights. Weights of shape [n] apply to every problem of the batch."""
    z, generator = _problem(12, batch=(2,), num_pairs=7, dim=3)
    w = torch.randn(2, 3, dtype=torch.float64, generator=generator)
    weights = torch.rand(7, dtype=torch.float64, generator=generator)
    eta, reg, ls = 0.7, 0.3, 0.2
    h = eta * np.einsum("bnd,bd->bn", z.numpy(), w.numpy())
    penalty = 0.5 * reg * eta**2 * (w.numpy() ** 2).sum(-1)
    smoothed = ((1 - ls) * np.logaddexp(0, -h) + ls * np.logaddexp(0, h)) @ weights.numpy()
    got = dpo.dpo_objective_linear(w, z, eta=eta, reg=reg, label_smoothing=ls, weights=weights)
    assert got.shape == (2,) and np.allclose(got.numpy(), smoothed + penalty, rtol=1e-12)
    plain = dpo.dpo_objective_linear(w, z, eta=eta, reg=reg)
    assert np.allclose(plain.numpy(), np.logaddexp(0, -h).sum(-1) + penalty, rtol=1e-12)


def test_pair_checks_accept_one_pair_and_zero_or_fractional_weights():
    """A single pair is a problem (n = 1), and weight 0 removes a pair: training on the first
    pair alone equals training on all pairs with weights (1, 0, ..., 0); fractional weights are
    allowed. Empty feature dimensions and the expected weight shape are named in full."""
    z, _ = _problem(13, batch=(2,), num_pairs=6, dim=3)
    alone = dpo.train_dpo_linear(z[:, :1], eta=0.5, reg=0.5)
    weights = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    weighted = dpo.train_dpo_linear(z, eta=0.5, reg=0.5, weights=weights)
    assert torch.allclose(alone.w, weighted.w, atol=1e-12)
    halves = dpo.train_dpo_linear(z, eta=0.5, reg=0.5, weights=torch.full((6,), 0.5))
    assert torch.allclose(halves.w, dpo.train_dpo_linear(z, eta=0.5, reg=1.0).w, atol=1e-9)
    with pytest.raises(ValueError, match=r"^chosen_minus_rejected must have shape"):
        dpo.train_dpo_linear(torch.zeros(2, 4, 0), eta=0.5, reg=0.5)
    with pytest.raises(ValueError, match=r"^weights \(shape \(5,\)\) must broadcast against "
                                         r"\(2, 6\)$"):
        dpo.train_dpo_linear(z, eta=0.5, reg=0.5, weights=torch.ones(5))


def test_a_loose_tolerance_stops_early_and_reports_the_gradient_in_theta_units():
    """With tol = 1e-2 the trainer stops after a few Newton steps, at a point whose gradient is
    not round-off: fit.grad_norm must be the norm of the autograd gradient of
    dpo_objective_linear at fit.w, divided by eta (theta = eta w units), and at most tol."""
    z, _ = _problem(14, batch=(2,), num_pairs=30, dim=3)
    eta, reg = 0.3, 0.5
    fit = dpo.train_dpo_linear(z, eta=eta, reg=reg, tol=1e-2)
    assert isinstance(fit.iterations, int) and 1 <= fit.iterations < 10
    w = fit.w.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(dpo.dpo_objective_linear(w, z, eta=eta, reg=reg).sum(), w)
    expected = gradient.norm(dim=-1) / eta
    assert torch.allclose(fit.grad_norm, expected, rtol=1e-6, atol=0)
    assert (fit.grad_norm <= 1e-2).all() and (fit.grad_norm > 1e-9).any()


def test_tabular_trainer_passes_its_options_on_and_keeps_the_batch():
    """train_dpo_tabular is train_dpo_linear on one-hot pair features, reshaped to [S, X, K]:
    the same fit for the IPO loss, label smoothing and a loose tolerance, the policy
    pi0 exp(w) normalised over the actions, max_iter passed on, bad ref_probs named."""
    generator = torch.Generator().manual_seed(14)
    eta, reg = 0.5, 0.4
    ref = torch.softmax(torch.randn(2, 3, dtype=torch.float64, generator=generator), -1)
    contexts = torch.randint(0, 2, (2, 9), generator=generator)
    chosen = torch.randint(0, 3, (2, 9), generator=generator)
    rejected = (chosen + torch.randint(1, 3, (2, 9), generator=generator)) % 3
    pairs = dict(contexts=contexts, chosen=chosen, rejected=rejected)
    z = dpo.pair_feature_diffs(dpo.one_hot_features(2, 3), contexts=contexts, first=chosen,
                               second=rejected)
    for options in (dict(loss_type="ipo"), dict(label_smoothing=0.2), dict(tol=1e-2)):
        policy, fit = dpo.train_dpo_tabular(ref, **pairs, eta=eta, reg=reg, **options)
        linear = dpo.train_dpo_linear(z, eta=eta, reg=reg, **options)
        w = linear.w.reshape(2, 2, 3)
        assert torch.equal(fit.w, w) and torch.equal(fit.theta, eta * w)
        assert torch.equal(fit.grad_norm, linear.grad_norm)
        assert fit.iterations == linear.iterations
        tilted = ref.numpy() * np.exp(w.numpy())
        expected = tilted / tilted.sum(-1, keepdims=True)
        assert policy.shape == (2, 2, 3) and np.allclose(policy.numpy(), expected, atol=1e-13)
    with pytest.raises(RuntimeError, match="in 1 Newton steps"):
        dpo.train_dpo_tabular(ref, **pairs, eta=eta, reg=reg, max_iter=1)
    with pytest.raises(RuntimeError, match="in 100 Newton steps"):  # the documented default
        dpo.train_dpo_tabular(ref, **pairs, eta=eta, reg=reg, tol=1e-300)
    with pytest.raises(ValueError, match="^ref_probs"):
        dpo.train_dpo_tabular(-ref, **pairs, eta=eta, reg=reg)
    with pytest.raises(ValueError, match="^ref_probs"):
        dpo.linear_policy(-ref, features=dpo.one_hot_features(2, 3), w=torch.zeros(6))


def test_pairs_without_signal_stop_at_zero():
    """Pairs whose feature differences are all zero: the gradient vanishes at w = 0, so the
    trainer stops there at once, per problem of the batch, in float64; one-hot features are
    float64 too."""
    fit = dpo.train_dpo_linear(torch.zeros(2, 3, 4, dtype=torch.float64), eta=0.5, reg=1.0)
    assert fit.iterations == 0 and fit.w.dtype == torch.float64
    assert torch.equal(fit.w, torch.zeros(2, 4, dtype=torch.float64))
    assert dpo.one_hot_features(2, 3).dtype == torch.float64


def test_helpers_name_their_bad_arguments():
    for kwargs, word in [(dict(num_contexts=0, num_actions=2), "num_contexts"),
                         (dict(num_contexts=2, num_actions=0), "num_actions")]:
        with pytest.raises(ValueError, match=f"^{word} must be a positive integer"):
            dpo.one_hot_features(**kwargs)
    with pytest.raises(ValueError, match="^labels must be 0 or 1$"):
        dpo.chosen_rejected(first=torch.tensor([0]), second=torch.tensor([1]),
                            labels=torch.tensor([2.0]))
    with pytest.raises(ValueError, match="^label_smoothing must be a number"):
        dpo.dpo_loss(0.0, 0.0, 0.0, 0.0, 1.0, label_smoothing="some")
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
             "ref_rejected_logps")
    with pytest.raises(ValueError, match=re.escape(f"the tensors {list(names)} must broadcast")):
        dpo.dpo_loss(torch.zeros(2), torch.zeros(3), 0.0, 0.0, 1.0)
    for position, name in enumerate(names):
        inputs = [torch.zeros(2) for _ in names]
        inputs[position] = torch.tensor([0.0, float("nan")])
        with pytest.raises(ValueError, match=f"^{name} must not contain NaN"):
            dpo.dpo_loss(*inputs, 1.0)
    bandit, _ = _bandit()
    data = bandit.sample_preferences(5, bandit.ref_probs, bandit.ref_probs,
                                     torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^features must have shape \[3, 5, d\]"):
        dpo.offline_dpo(bandit, data, reg=1.0, features=torch.zeros(3, 5, 2, 1))


def test_loss_keeps_float32_and_reads_integer_tensors_as_float64():
    """Floating inputs keep their precision; integer tensors and Python numbers (all four)
    become float64."""
    numbers = dpo.dpo_loss(0.1, 0.0, 0.0, 0.0, 1.0)
    assert numbers.dtype == torch.float64
    assert numbers.item() == pytest.approx(math.log1p(math.exp(-0.1)), rel=1e-15)
    single = dpo.dpo_loss(*(torch.tensor([v], dtype=torch.float32) for v in (1, 0, 0, 0)), 0.5)
    assert single.dtype == torch.float32
    integer = dpo.dpo_loss(*(torch.tensor([v]) for v in (1, 0, 0, 0)), 0.5)
    assert integer.dtype == torch.float64
    assert integer.item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-15)
    assert single.item() == pytest.approx(integer.item(), rel=1e-6)


def test_one_hot_features_make_the_linear_helpers_tabular():
    """With features = one_hot_features, offline DPO, the Gibbs policy of the MLE and their
    agreement are those of the tabular class (train_dpo_tabular), not of the bandit's features;
    the agreement's gap and bound are per seed and the bound is the docstring's formula."""
    from gsfh_utils.estimation import bt_gradient
    from gsfh_utils.lab.stats import roundoff_tolerance

    bandit, generator = _bandit(eta=0.4)
    data = bandit.sample_preferences(30, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    onehot = dpo.one_hot_features(3, 5)
    chosen, rejected = dpo.chosen_rejected(first=data.first_actions,
                                           second=data.second_actions, labels=data.labels)
    tabular, fit = dpo.train_dpo_tabular(bandit.ref_probs, contexts=data.contexts, chosen=chosen,
                                         rejected=rejected, eta=0.4, reg=1.0)
    assert torch.allclose(dpo.offline_dpo(bandit, data, reg=1.0, features=onehot), tabular,
                          atol=1e-12)
    mle = dpo.mle_gibbs_policy(bandit, data, reg=1.0, features=onehot)
    assert torch.allclose(mle, tabular, atol=1e-8)
    assert not torch.allclose(mle, dpo.mle_gibbs_policy(bandit, data, reg=1.0), atol=1e-3)
    gap, bound = dpo.dpo_mle_agreement(bandit, data, reg=1.0, features=onehot)
    assert gap.shape == bound.shape == (2,) and (gap <= bound).all()
    assert torch.allclose(gap, (tabular.log() - mle.log()).abs().amax((-1, -2)), atol=1e-12)
    signs = (2 * data.labels - 1).unsqueeze(-1)
    for features in (onehot, bandit.features):
        _, bound = dpo.dpo_mle_agreement(bandit, data, reg=1.0, features=features)
        z = dpo.pair_feature_diffs(features, contexts=data.contexts, first=data.first_actions,
                                   second=data.second_actions)
        fit = dpo.train_dpo_linear(signs * z, eta=0.4, reg=1.0)
        theta = fit_bt_mle(z, data.labels, 1.0)
        grad_mle = torch.stack([bt_gradient(theta[s], z[s], data.labels[s], 1.0).norm()
                                for s in range(2)])
        mle_log = torch.log(dpo.mle_gibbs_policy(bandit, data, reg=1.0, features=features))
        roundoff = roundoff_tolerance(5, mle_log.abs().amax((-1, -2)) + 1)
        scale = 2 * features.norm(dim=-1).max()
        expected = scale * (fit.grad_norm + grad_mle) / (1.0 * 0.4) + roundoff
        # the batched and the per-seed gradient norms differ by round-off (about 1e-16): the
        # check allows a fiftieth of the round-off term, which each variant of that term exceeds
        assert ((bound - expected).abs() <= 0.02 * roundoff).all()


def test_iterative_dpo_with_two_responses_one_hot_features_and_a_loose_tolerance():
    """Every policy of the loop is offline DPO (same features, same tolerance) on the data
    collected before it; two responses per prompt suffice to form a pair."""
    bandit, generator = _bandit()
    start = bandit.sample_preferences(12, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    onehot = dpo.one_hot_features(3, 5)
    result = dpo.iterative_dpo(bandit, start, num_iterations=1, pairs_per_iteration=4,
                               responses_per_prompt=2, selector="random", reg=1.0,
                               generator=generator, features=onehot, tol=1e-3)
    assert result.num_pairs == [12, 16]
    for policy, data in [(result.policies[0], start), (result.policies[1], result.data)]:
        assert torch.allclose(policy, dpo.offline_dpo(bandit, data, reg=1.0, features=onehot,
                                                      tol=1e-3), atol=1e-14, rtol=0)


def test_rso_dpo_replays_its_docstring():
    """RSO written out from its docstring on the same stream, with one-hot features and a loose
    tolerance: reward model, prompts, pools from pi0, rso_select, Bradley-Terry labels by the
    reward model, tabular DPO on the synthetic pairs."""
    from gsfh_utils.sampling import rso_select

    bandit, generator = _bandit(seed=12, eta=0.5)
    data = bandit.sample_preferences(40, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    onehot = dpo.one_hot_features(3, 5)
    policy = dpo.rso_dpo(bandit, data, reg=0.5, num_pairs=6, pool_size=4, features=onehot,
                         generator=torch.Generator().manual_seed(5), tol=1e-3)
    replay = torch.Generator().manual_seed(5)
    z = dpo.pair_feature_diffs(onehot, contexts=data.contexts, first=data.first_actions,
                               second=data.second_actions)
    rewards = fit_bt_mle(z, data.labels, 0.5).reshape(2, 3, 5)
    seeds = torch.arange(2)[:, None]
    contexts = bandit.sample_contexts(6, replay, (2,))
    pool = sample_categorical(bandit.ref_probs[contexts], 4, replay)
    picked = rso_select(rewards[seeds[..., None], contexts[..., None], pool], 2, 0.5, replay)
    first, second = pool.gather(-1, picked).unbind(-1)
    margin = rewards[seeds, contexts, first] - rewards[seeds, contexts, second]
    wins = torch.rand(margin.shape, dtype=torch.float64, generator=replay) < torch.sigmoid(margin)
    expected, _ = dpo.train_dpo_tabular(bandit.ref_probs, contexts=contexts,
                                        chosen=torch.where(wins, first, second),
                                        rejected=torch.where(wins, second, first), eta=0.5,
                                        reg=0.5, tol=1e-3)
    assert torch.allclose(policy, expected, atol=1e-13, rtol=0)


def test_select_pairs_with_two_responses_is_reproducible():
    scores = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    draws = [dpo.select_pairs(scores, "random", torch.Generator().manual_seed(2))
             for _ in range(2)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert (draws[0][0] != draws[0][1]).all() and 0 < int(draws[0][0].sum()) < 50


def test_policy_summary_is_per_seed_and_the_lean_defaults_to_one_half():
    bandit, generator = _bandit(eta=0.4)
    policies = gu.random_policies(bandit.ref_probs, 2, generator).transpose(0, 1)  # [2, X, K]
    summary = dpo.policy_summary(bandit, policies)
    for seed in range(2):
        single = dpo.policy_summary(bandit, policies[seed])
        for name, value in summary.items():
            assert value.shape == (2,)
            assert value[seed].item() == pytest.approx(single[name].item(), rel=1e-12, abs=1e-15)
    shape = dict(num_contexts=2, num_actions=3, dim=2, norm_bound=1.0, eta=0.2)
    default, half = (dpo.leaning_instance(**shape, generator=torch.Generator().manual_seed(4),
                                          **extra) for extra in ({}, dict(lean=0.5)))
    assert torch.equal(default.ref_probs, half.ref_probs)


def test_bt_likelihood_identity_error_over_two_batch_dimensions_and_on_inconsistent_data():
    """Batch shape [2, 2]: each pair against its own row; with the pairs' feature differences
    flipped (data that disagree with their labels) the error is far above the round-off bound."""
    bandit, generator = _bandit(eta=0.4)
    data = bandit.sample_preferences(6, bandit.ref_probs, bandit.ref_probs, generator, (2, 2))
    w = 2 * torch.randn(2, 2, bandit.dim, dtype=torch.float64, generator=generator)
    error = dpo.bt_likelihood_identity_error(bandit, data, w)
    assert error.shape == (2, 2, 6) and (error <= 1).all()
    flipped = gu.Preferences(data.contexts, data.first_actions, data.second_actions,
                             data.labels, -data.feature_diffs)
    assert dpo.bt_likelihood_identity_error(bandit, flipped, w).max() > 1e6


def test_float32_inputs_are_read_in_float64():
    """Pair differences, weights, features and scores given as float32 tensors give exactly the
    result of their float64 copies (they are read with ``as_tensor(..., dtype=float64)``)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 3, generator=g)
    weights = torch.rand(2, 5, generator=g) + 0.5
    fits = [dpo.train_dpo_linear(pairs, eta=0.7, reg=0.3, weights=w).w
            for pairs, w in [(z, weights), (z.double(), weights.double())]]
    assert fits[0].dtype == torch.float64 and torch.equal(*fits)
    features = torch.randn(3, 4, 2, generator=g)
    index = dict(contexts=torch.tensor([0, 2, 1]), first=torch.tensor([1, 0, 3]),
                 second=torch.tensor([2, 3, 0]))
    diffs = [dpo.pair_feature_diffs(f, **index) for f in (features, features.double())]
    assert diffs[0].dtype == torch.float64 and torch.equal(*diffs)
    scores = [[0.1, 0.3 + 1e-9, 0.3]]  # a list: 0.3 + 1e-9 and 0.3 tie in float32 only
    picks = [dpo.select_pairs(s, "max_min", torch.Generator().manual_seed(1))
             for s in (scores, torch.tensor(scores, dtype=torch.float64))]
    assert all(torch.equal(a, b) for a, b in zip(*picks, strict=True))


@pytest.mark.parametrize("offset", [-6.0, -3.0])
def test_label_smoothed_fit_with_a_margin_offset_solves_its_stationarity_equation(offset):
    """One pair ``z = 1`` whose margin starts at ``offset`` (low curvature): the smoothed
    objective's derivative in ``w``, ``eta [ls sigmoid(eta h) - (1 - ls) sigmoid(-eta h)]
    + reg eta^2 w`` with ``h = w + offset``, is increasing, and its root (scipy's brentq) is
    the minimiser. The first Newton steps overshoot past it, where the smoothed and the plain
    objectives disagree about which way is down."""
    from scipy.optimize import brentq

    eta, reg, ls = 1.0, 0.01, 0.4

    def derivative(w):
        h = w + offset
        return eta * (ls * _sigmoid(eta * h) - (1 - ls) * _sigmoid(-eta * h)) + reg * eta**2 * w

    expected = brentq(derivative, 0.0, 100.0, xtol=1e-14)
    fit = dpo.train_dpo_linear(torch.ones(1, 1, dtype=torch.float64), eta=eta, reg=reg,
                               label_smoothing=ls, margin_offsets=torch.tensor([offset]))
    assert fit.w.item() == pytest.approx(expected, abs=1e-9 / reg)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_lists_are_read_in_float64():
    """Weights, features and scores given as Python lists of numbers that float32 cannot hold
    (0.1, 1/3) give exactly the result of their float64 tensors (``as_tensor(..., float64)``)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 5, 2, dtype=torch.float64, generator=g)
    weights = [[0.1, 1 / 3, 0.7, 0.9, 1.1]]
    fits = [dpo.train_dpo_linear(z, eta=0.7, reg=0.3, weights=w).w
            for w in (weights, torch.tensor(weights, dtype=torch.float64))]
    assert torch.equal(*fits)
    bandit, generator = _bandit(eta=0.4)
    data = bandit.sample_preferences(8, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    policies = [dpo.offline_dpo(bandit, data, reg=1.0, features=f)
                for f in (bandit.features.tolist(), bandit.features)]
    assert torch.equal(*policies)
    # 0.3 + 1e-9 is the largest score in float64 only: in float32 it ties with 0.3 (position 0).
    first, second = dpo.select_pairs([[0.3, 0.3 + 1e-9, 0.1]], "max_min",
                                     torch.Generator().manual_seed(1))
    assert first.tolist() == [1] and second.tolist() == [2]


def test_two_batch_dimensions_are_the_flattened_batch():
    """``rso_dpo`` and ``dpo_mle_agreement`` on data of batch shape [2, 2] return exactly the
    results on the same data flattened to [4] (same random stream), reshaped."""
    bandit, generator = _bandit(seed=5, eta=0.5)
    data = bandit.sample_preferences(10, bandit.ref_probs, bandit.ref_probs, generator, (2, 2))
    flat = gu.Preferences(*(getattr(data, name).flatten(0, 1) for name in (
        "contexts", "first_actions", "second_actions", "labels", "feature_diffs")))
    policies = [dpo.rso_dpo(bandit, d, reg=0.5, num_pairs=5, pool_size=3, tol=1e-6,
                            generator=torch.Generator().manual_seed(2)) for d in (data, flat)]
    assert policies[0].shape == (2, 2, 3, 5)
    assert torch.equal(policies[0].flatten(0, 1), policies[1])
    batched, flattened = dpo.dpo_mle_agreement(bandit, data, reg=0.5), \
        dpo.dpo_mle_agreement(bandit, flat, reg=0.5)
    for value, expected in zip(batched, flattened, strict=True):
        assert value.shape == (2, 2) and torch.equal(value.flatten(), expected)


def test_iterations_are_the_largest_count_of_the_problems_alone():
    """Each problem of a batch backtracks on its own Armijo test, so the batch takes exactly the
    Newton steps of its slowest problem alone, and each ends at its own fit (two problems of
    very different scales and a small ridge, where coupled line searches would slow the easy
    one down)."""
    z = torch.tensor([[[0.4, -1.5], [7.0, 10.8], [-1.2, -3.6], [-9.4, 0.8], [5.0, 1.5]],
                      [[101.3, 8.6], [14.5, -32.9], [-66.7, 61.0], [51.4, 12.6],
                       [-49.8, -37.8]]], dtype=torch.float64)
    fit = dpo.train_dpo_linear(z, eta=0.5, reg=0.0016)
    alone = [dpo.train_dpo_linear(z[row], eta=0.5, reg=0.0016) for row in range(2)]
    assert fit.iterations == max(one.iterations for one in alone)
    assert torch.allclose(fit.w, torch.stack([one.w for one in alone]), rtol=0,
                          atol=1e-9 / (0.0016 * 0.5))
