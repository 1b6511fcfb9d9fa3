"""Offline learning with pessimism (Xiong et al., arXiv:2312.11456, section 3 "Offline
Learning with Pessimism"; derived in notebook 02).

Every function takes the ``LinearBTBandit`` whose features ``phi``, reference policy ``pi0``,
context law ``d0`` and coefficient ``eta`` the learner knows; none reads ``theta*``. Estimates are
``theta_hat [..., d]`` (the MLE), ``sigma [..., d, d]`` (the design matrix ``Sigma_D``) and
``beta`` (the confidence radius: a number or a tensor broadcasting against the leading
dimensions); every function is batched over those leading dimensions (seeds, data sizes, radii).
Uncertainty is measured against the reference vectors ``nu(x) = E_{a ~ pi0} phi(x, a)``
(Bradley-Terry identifies only reward differences).

- Pointwise pessimism: ``r_hat(x,a) = <theta_hat, phi(x,a)> - beta ||phi(x,a) - nu(x)||_{Sigma^-1}``
  and its Gibbs policy.
- Expected (policy-level) pessimism: the maximiser over ``pi`` of
  ``f(pi) = <theta_hat, v(pi)> - beta ||v(pi)||_{Sigma^-1} - eta E_x KL(pi || pi0)`` with
  ``v(pi) = E_{x ~ d0, a ~ pi}[phi(x,a) - nu(x)]``, solved through its dual with a certified
  duality gap.
- The bounds of both on the event ``||theta_hat - theta*||_Sigma <= beta`` (value-difference lemma),
  the pointwise one optionally with its KL term.
- The fast rate of MLE then Gibbs: ``asymptotic_suboptimality`` (``lim n E[SubOpt]``) from the
  Fisher information of one comparison.
- ``trap_instance``: a bandit whose coverage is a dial; ``fit_offline_grid`` and
  ``evaluate_offline``: the experiment of notebook 02, batched over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import as_float64, check_positive_int, check_probs
from .estimation import (
    bootstrap_radius,
    fit_bt_mle,
    reference_vectors,
    sigma_d,
    sigma_norm,
    whitener,
)
from .gibbs import gibbs_log_policy, gibbs_policy, mirror_ascent
from .instance import LinearBTBandit, reference_policy

#: Stopping tolerance of the expected-pessimism solver on the duality gap (in units of reward).
DUALITY_GAP_TOLERANCE = 1e-9


def _beta(beta, leading: torch.Size) -> torch.Tensor:
    beta = as_float64(beta)
    if not torch.isfinite(beta).all() or (beta < 0).any():
        raise ValueError(f"beta must be finite and non-negative, got {beta}")
    try:
        torch.broadcast_shapes(beta.shape, leading)
    except RuntimeError as exc:
        raise ValueError(
            f"beta (shape {tuple(beta.shape)}) must broadcast against {tuple(leading)}"
        ) from exc
    return beta


def _estimates(bandit: LinearBTBandit, theta_hat, sigma):
    """``theta_hat``, ``sigma`` as float64 with their shapes checked against the bandit and
    against each other."""
    theta_hat, sigma = as_float64(theta_hat), as_float64(sigma)
    dim = bandit.dim
    if theta_hat.shape[-1:] != (dim,):
        raise ValueError(f"theta_hat must have last dimension {dim}, got {tuple(theta_hat.shape)}")
    if sigma.shape[-2:] != (dim, dim):
        raise ValueError(f"sigma must have shape [..., {dim}, {dim}], got {tuple(sigma.shape)}")
    try:
        torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(f"theta_hat {tuple(theta_hat.shape)} and sigma {tuple(sigma.shape)} "
                         "must have broadcastable leading dimensions") from exc
    return theta_hat, sigma


def _diffs(bandit: LinearBTBandit) -> torch.Tensor:
    """``phi(x, a) - nu(x)``: ``[X, K, d]``."""
    return bandit.features - reference_vectors(bandit.features, bandit.ref_probs).unsqueeze(-2)


def action_uncertainty(bandit: LinearBTBandit, sigma) -> torch.Tensor:
    """``b(x, a) = ||phi(x,a) - nu(x)||_{Sigma^{-1}}`` for every ``sigma [..., d, d]``:
    shape ``[..., X, K]``."""
    whitened = torch.einsum("...ij,xkj->...xki", whitener(sigma), _diffs(bandit))
    return whitened.norm(dim=-1)


def pointwise_pessimistic_rewards(bandit: LinearBTBandit, *, theta_hat, sigma,
                                  beta) -> torch.Tensor:
    """``r_hat(x,a) = <theta_hat, phi(x,a)> - beta ||phi(x,a) - nu(x)||_{Sigma^{-1}}``:
    ``[..., X, K]``."""
    theta_hat, sigma = _estimates(bandit, theta_hat, sigma)
    beta = _beta(beta, torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2]))
    rewards = torch.einsum("xkd,...d->...xk", bandit.features, theta_hat)
    return rewards - beta.unsqueeze(-1).unsqueeze(-1) * action_uncertainty(bandit, sigma)


def pointwise_pessimistic_policy(bandit: LinearBTBandit, *, theta_hat, sigma,
                                 beta) -> torch.Tensor:
    """Gibbs policy of the pointwise-pessimistic reward at the bandit's ``eta`` (``beta = 0``:
    MLE then Gibbs, which is what offline DPO computes in the ideal limit): ``[..., X, K]``."""
    rewards = pointwise_pessimistic_rewards(bandit, theta_hat=theta_hat, sigma=sigma, beta=beta)
    return gibbs_policy(bandit.ref_probs, rewards, bandit.eta)


def policy_direction(bandit: LinearBTBandit, policy) -> torch.Tensor:
    """``v(pi) = E_{x ~ d0, a ~ pi}[phi(x,a) - nu(x)]``: ``policy [..., X, K] -> [..., d]``."""
    return torch.einsum("x,...xk,xkd->...d", bandit.context_probs, as_float64(policy),
                        _diffs(bandit))


def expected_pessimism_objective(bandit: LinearBTBandit, policy, *, theta_hat, sigma,
                                 beta) -> torch.Tensor:
    """``f(pi) = <theta_hat, v(pi)> - beta ||v(pi)||_{Sigma^{-1}} - eta E_x KL(pi || pi0)``."""
    theta_hat, sigma = _estimates(bandit, theta_hat, sigma)
    policy = as_float64(policy)
    beta = _beta(beta, torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2],
                                              policy.shape[:-2]))
    direction = policy_direction(bandit, policy)
    norm = torch.einsum("...ij,...j->...i", whitener(sigma), direction).norm(dim=-1)
    return (theta_hat * direction).sum(-1) - beta * norm - bandit.eta * bandit.expected_kl(policy)


def expected_pessimism_dual(bandit: LinearBTBandit, theta) -> torch.Tensor:
    """``F(theta) = eta E_x log sum_a pi0(a|x) exp(<theta, phi(x,a) - nu(x)>/eta)``.

    ``F(theta) = max_pi <theta, v(pi)> - eta E KL(pi || pi0)`` (Gibbs variational formula), so
    for every ``theta`` with ``||theta - theta_hat||_Sigma <= beta``, ``F(theta) >= f(pi)`` for
    all ``pi``: weak duality, used to certify the solver.
    """
    scores = torch.einsum("xkd,...d->...xk", _diffs(bandit), as_float64(theta))
    logits = torch.log(bandit.ref_probs) + scores / bandit.eta
    return bandit.eta * (torch.logsumexp(logits, -1) * bandit.context_probs).sum(-1)


@dataclass(frozen=True)
class ExpectedPessimism:
    """Solution of the expected-pessimism problem.

    ``policy [..., X, K]``; ``parameter [..., d]``: the pessimistic parameter ``theta_tilde`` in
    the confidence ellipsoid whose Gibbs policy is ``policy``; ``duality_gap [...]``: a certified
    upper bound on ``max f - f(policy)`` (>= 0 up to round-off).
    """

    policy: torch.Tensor
    parameter: torch.Tensor
    duality_gap: torch.Tensor


def _dual_pieces(theta, features, ref_probs, context_probs, diffs, eta, outer=None):
    """Gibbs policy of ``<theta, phi>``, ``grad F = v``, ``Hessian F = E_x Cov_pi(phi) / eta``.

    ``outer [X*K, d*d]`` (optional) holds the products ``(phi - nu)(phi - nu)^T``.
    """
    num_contexts, num_actions, dim = diffs.shape
    if outer is None:
        outer = torch.einsum("xkd,xke->xkde", diffs, diffs).reshape(-1, dim * dim)
    rewards = torch.einsum("xkd,...d->...xk", features, theta)
    policy = gibbs_policy(ref_probs, rewards, eta)
    weighted = policy * context_probs.unsqueeze(-1)
    flat = weighted.reshape(*weighted.shape[:-2], num_contexts * num_actions)
    gradient = flat @ diffs.reshape(-1, dim)
    mean = torch.einsum("...xk,xkd->...xd", policy, diffs)
    second = (flat @ outer).reshape(*flat.shape[:-1], dim, dim)
    spread = torch.einsum("...xd,...xe->...de", mean * context_probs.unsqueeze(-1), mean)
    return policy, gradient, (second - spread) / eta


def _proximal_point(theta, multiplier, theta_hat, sigma, features, ref_probs, context_probs,
                    diffs, eta, outer, num_steps=50):
    """argmin_theta F(theta) + multiplier/2 ||theta - theta_hat||_Sigma^2 by damped Newton."""

    def _dual_value(t):
        logits = torch.log(ref_probs) + torch.einsum("xkd,...d->...xk", diffs, t) / eta
        return eta * (torch.logsumexp(logits, -1) * context_probs).sum(-1)

    def objective(t):
        u = t - theta_hat
        return _dual_value(t) + 0.5 * multiplier * torch.einsum("...i,...ij,...j->...", u, sigma, u)

    current = objective(theta)
    for _ in range(num_steps):
        _, grad_f, hess_f = _dual_pieces(theta, features, ref_probs, context_probs, diffs, eta,
                                         outer)
        m = multiplier.unsqueeze(-1)
        gradient = grad_f + m * torch.einsum("...ij,...j->...i", sigma, theta - theta_hat)
        hessian = hess_f + m.unsqueeze(-1) * sigma
        step = torch.linalg.solve(hessian, gradient.unsqueeze(-1)).squeeze(-1)
        decrement = (gradient * step).sum(-1)
        # Converged when the Newton decrement is at round-off; below 1e-10 (relative) the full
        # step is taken without line search (quadratic convergence region, where the change of
        # the objective is below its own round-off and cannot be tested).
        scale = 1 + current.abs()
        done = decrement <= 1e-28 * scale
        if bool(done.all()):
            break
        size = torch.ones_like(decrement)
        pending = ~done
        for _ in range(40):
            trial = objective(theta - size.unsqueeze(-1) * step)
            accept = (trial <= current - 1e-4 * size * decrement) | (decrement <= 1e-10 * scale)
            pending = pending & ~accept
            if not bool(pending.any()):
                break
            size = torch.where(pending, size / 2, size)
        size = torch.where(pending | done, 0.0, size)
        if not bool((size > 0).any()):
            break
        theta = theta - size.unsqueeze(-1) * step
        current = objective(theta)
    _, grad_f, hess_f = _dual_pieces(theta, features, ref_probs, context_probs, diffs, eta, outer)
    return theta, hess_f


def _solve_active(theta_hat, sigma, beta, features, ref_probs, context_probs, diffs, eta,
                  max_outer):
    """theta_tilde for problems whose constraint is active: find mu > 0 with
    ``||theta(mu) - theta_hat||_Sigma = beta`` by safeguarded Newton on
    ``phi = 1/||theta(mu) - theta_hat||_Sigma - 1/beta`` in ``log mu`` (as in trust-region
    methods), inside a bracket on ``log mu`` that every iterate shrinks."""
    dim = diffs.shape[-1]
    outer = torch.einsum("xkd,xke->xkde", diffs, diffs).reshape(-1, dim * dim)

    def distance(t):
        u = t - theta_hat
        return torch.einsum("...i,...ij,...j->...", u, sigma, u).clamp_min(0).sqrt()

    # At the solution v + mu Sigma (theta - theta_hat) = 0 and ||theta - theta_hat||_Sigma = beta,
    # so mu = ||v||_{Sigma^{-1}} / beta <= max ||phi - nu|| / (sqrt(lambda_min(Sigma)) beta).
    reach = diffs.norm(dim=-1).max() / torch.linalg.eigvalsh(sigma)[..., 0].sqrt()
    log_high = torch.log(2 * reach / beta)
    log_low = log_high - 60 * torch.log(torch.tensor(2.0, dtype=torch.float64))
    log_mu = log_high.clone()
    theta = theta_hat.clone()
    for _ in range(max_outer):
        mu = log_mu.exp()
        theta, hess_f = _proximal_point(theta, mu, theta_hat, sigma, features, ref_probs,
                                        context_probs, diffs, eta, outer)
        dist = distance(theta)
        converged = (dist - beta).abs() <= 1e-13 * beta
        if bool(converged.all()):
            break
        feasible = dist <= beta
        log_high = torch.where(feasible, log_mu, log_high)
        log_low = torch.where(feasible, log_low, log_mu)
        # Newton step on phi(mu): (H + mu Sigma) du/dmu = -Sigma u.
        u = theta - theta_hat
        sigma_u = torch.einsum("...ij,...j->...i", sigma, u)
        du = -torch.linalg.solve(hess_f + mu.unsqueeze(-1).unsqueeze(-1) * sigma,
                                 sigma_u.unsqueeze(-1)).squeeze(-1)
        # Newton in t = log mu: d phi / dt = mu d phi / d mu = -mu <Sigma u, du/dmu> / ||u||^3.
        slope = -mu * (sigma_u * du).sum(-1) / dist.clamp_min(1e-300) ** 3
        value = 1 / dist.clamp_min(1e-300) - 1 / beta
        proposal = log_mu - value / slope
        ok = torch.isfinite(proposal)
        # Outside the bracket: halve the way from the current point to the bracket's end.
        toward = torch.where(value > 0, log_low, log_high)
        fallback = (log_mu + toward) / 2
        inside_bracket = ok & (proposal > log_low) & (proposal < log_high)
        log_mu = torch.where(converged, log_mu,
                             torch.where(inside_bracket, proposal, fallback))
    return theta


def expected_pessimism_policy(bandit: LinearBTBandit, *, theta_hat, sigma, beta,
                              tol: float = DUALITY_GAP_TOLERANCE,
                              max_outer: int = 100) -> ExpectedPessimism:
    """Maximise ``f(pi) = <theta_hat, v(pi)> - beta ||v(pi)||_{Sigma^{-1}} - eta E KL(pi||pi0)``.

    Method (derived in notebook 02). Since ``-beta ||v||_{Sigma^{-1}} = min_{||u||_Sigma <=
    beta} <u, v>`` and ``f`` is concave in ``pi``, the minimax theorem gives
    ``max_pi f = min_{||theta - theta_hat||_Sigma <= beta} F(theta)`` with ``F`` of
    ``expected_pessimism_dual``; the maximiser is the Gibbs policy of the minimising
    ``theta_tilde`` (a pessimistic parameter of the confidence ellipsoid). ``F`` is smooth and
    convex with ``F(0) = 0 = min F``, so:

    - if ``||theta_hat||_Sigma <= beta`` then ``theta_tilde = 0`` and the policy is ``pi0``;
    - otherwise ``theta_tilde = argmin F(theta) + mu/2 ||theta - theta_hat||_Sigma^2`` (damped
      Newton) for the multiplier ``mu > 0`` where the constraint is active, found by safeguarded
      Newton on ``1/||theta(mu) - theta_hat||_Sigma - 1/beta`` inside a bisection bracket.

    Convergence check: weak duality. For the returned ``pi`` with ``v = v(pi)``, the point
    ``theta_br = theta_hat - beta Sigma^{-1} v / ||v||_{Sigma^{-1}}`` is feasible, so
    ``gap = F(theta_br) - f(pi) >= max f - f(pi) >= 0`` certifies how far ``pi`` is from optimal
    (``theta_tilde`` itself is used too where it is feasible). A ``RuntimeError`` is raised if the
    gap exceeds ``tol * (1 + |f(pi)|)``; it is returned as ``duality_gap``.
    """
    theta_hat, sigma = _estimates(bandit, theta_hat, sigma)
    features, ref_probs, context_probs, eta = (bandit.features, bandit.ref_probs,
                                               bandit.context_probs, bandit.eta)
    beta = _beta(beta, torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2]))
    leading = torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2], beta.shape)
    beta = beta.expand(leading)
    theta_hat = theta_hat.expand(*leading, theta_hat.shape[-1])
    sigma = sigma.expand(*leading, *sigma.shape[-2:])
    diffs = _diffs(bandit)

    def distance(t):
        u = t - theta_hat
        return torch.einsum("...i,...ij,...j->...", u, sigma, u).clamp_min(0).sqrt()

    inside = distance(torch.zeros_like(theta_hat)) <= beta
    parameter = torch.zeros_like(theta_hat)
    active = ~inside
    if bool(active.any()):
        parameter[active] = _solve_active(theta_hat[active], sigma[active], beta[active],
                                          features, ref_probs, context_probs, diffs, eta,
                                          max_outer)
    policy = gibbs_policy(ref_probs, torch.einsum("xkd,...d->...xk", features, parameter), eta)
    direction = policy_direction(bandit, policy)
    value = expected_pessimism_objective(bandit, policy, theta_hat=theta_hat, sigma=sigma,
                                         beta=beta)
    # Certificate: the best response theta_br = theta_hat - beta Sigma^{-1} v / ||v||_{Sigma^{-1}}
    # is feasible, so F(theta_br) >= max f >= f(policy) (weak duality); gap = F(theta_br) - f.
    scaled = torch.cholesky_solve(direction.unsqueeze(-1), torch.linalg.cholesky(sigma))
    scaled = scaled.squeeze(-1)
    dual_norm = (direction * scaled).sum(-1).clamp_min(0).sqrt()
    best_response = theta_hat - (beta / dual_norm.clamp_min(1e-300)).unsqueeze(-1) * scaled
    best_response = torch.where((dual_norm > 0).unsqueeze(-1), best_response, parameter)
    dual_value = expected_pessimism_dual(bandit, best_response)
    # theta_tilde itself is a second dual point where it is feasible (theta_tilde = 0 inside).
    own = expected_pessimism_dual(bandit, parameter)
    dual_value = torch.minimum(dual_value, torch.where(distance(parameter) <= beta, own, torch.inf))
    gap = (dual_value - value).clamp_min(0)
    if bool((gap > tol * (1 + value.abs())).any()):
        raise RuntimeError(
            f"expected pessimism did not converge: largest duality gap {gap.max().item():.3g}"
        )
    return ExpectedPessimism(policy, parameter, gap)


def expected_pessimism_mirror_ascent(bandit: LinearBTBandit, *, theta_hat, sigma, beta,
                                     step_size: float = 0.1,
                                     num_steps: int = 2000) -> torch.Tensor:
    """The same maximiser by exponentiated-gradient (mirror) ascent on the simplex of each
    context (``gsfh_utils.mirror_ascent``), started at the MLE's Gibbs policy; a slower,
    independent check of ``expected_pessimism_policy`` (the tests use it).

    The gradient of ``f`` in ``pi(.|x)``, divided by ``d0(x)`` (a per-context step size), is
    ``<theta_hat - beta Sigma^{-1} v / ||v||_{Sigma^{-1}}, phi - nu> - eta (log(pi/pi0) + 1)``.
    """
    theta_hat, sigma = _estimates(bandit, theta_hat, sigma)
    beta = _beta(beta, torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2]))
    diffs, eta = _diffs(bandit), bandit.eta
    sigma_inverse = torch.cholesky_inverse(torch.linalg.cholesky(sigma))

    def gradient(policy):
        direction = policy_direction(bandit, policy)
        scaled = torch.einsum("...ij,...j->...i", sigma_inverse, direction)
        norm = (direction * scaled).sum(-1).clamp_min(1e-300).sqrt()
        weight = theta_hat - (beta / norm).unsqueeze(-1) * scaled
        linear = torch.einsum("xkd,...d->...xk", diffs, weight)
        return linear - eta * (torch.log(policy) - torch.log(bandit.ref_probs) + 1)

    start = gibbs_policy(bandit.ref_probs, bandit.rewards(theta_hat), eta)
    policy, _ = mirror_ascent(gradient, start, step_size / eta, num_steps)
    return policy


def pointwise_bound(bandit: LinearBTBandit, comparator, *, sigma, beta,
                    theta_hat=None) -> torch.Tensor:
    """``2 beta E_{x ~ d0, a ~ pi} ||phi(x,a) - nu(x)||_{Sigma^{-1}}``: on the confidence event,
    an upper bound on ``J(pi) - J(pi_hat)`` for the pointwise-pessimistic ``pi_hat`` and any
    comparator ``pi`` (section 3 of the paper; derived in notebook 02).

    With ``theta_hat`` (the estimate ``pi_hat`` is built from) the bound keeps the KL term of the
    value-difference lemma, ``- eta E_x KL(pi || pi_hat)``: the tighter bound, also valid on the
    event (the lemma is an equality; only its reward terms are bounded). The KL is computed from
    ``log pi_hat`` (``gibbs_log_policy``), finite even where a large ``beta`` underflows
    ``pi_hat`` itself.
    """
    bonus = action_uncertainty(bandit, sigma)
    comparator = check_probs(as_float64(comparator), "comparator")
    expected = (bonus * comparator * bandit.context_probs.unsqueeze(-1)).sum((-1, -2))
    bound = 2 * as_float64(beta) * expected
    if theta_hat is None:
        return bound
    rewards = pointwise_pessimistic_rewards(bandit, theta_hat=theta_hat, sigma=sigma, beta=beta)
    log_policy = gibbs_log_policy(bandit.ref_probs, rewards, bandit.eta)
    inside = comparator > 0
    kl = (torch.xlogy(comparator, comparator)
          - torch.where(inside, comparator * log_policy, 0.0)).sum(-1)
    return bound - bandit.eta * (kl * bandit.context_probs).sum(-1)


def comparison_fisher_information(bandit: LinearBTBandit, behaviour) -> torch.Tensor:
    """Fisher information of one Bradley-Terry comparison about ``theta`` at ``theta*``,
    ``I = E_{x ~ d0, a, a' ~ mu(.|x)}[sigma'(<theta*, z>) z z^T]`` with ``z = phi(x,a) -
    phi(x,a')`` and ``sigma' = sigmoid (1 - sigmoid)``, for pairs drawn from ``behaviour = mu
    [X, K]`` as in ``fit_offline_grid``: shape ``[d, d]``. ``n I`` is the expected Hessian of
    the negative log-likelihood of ``n`` comparisons, so ``sqrt(n) (theta_hat - theta*)`` tends
    to ``N(0, I^+)`` on the directions the comparisons identify."""
    behaviour = check_probs(as_float64(behaviour), "behaviour")
    if behaviour.shape != bandit.ref_probs.shape:
        raise ValueError(f"behaviour must have shape {tuple(bandit.ref_probs.shape)}, got "
                         f"{tuple(behaviour.shape)}")
    features = bandit.features
    diffs = features.unsqueeze(-2) - features.unsqueeze(-3)  # [X, K, K, d]
    margins = torch.einsum("xabd,d->xab", diffs, bandit.theta_star)
    weights = (bandit.context_probs[:, None, None] * behaviour.unsqueeze(-1)
               * behaviour.unsqueeze(-2) * torch.sigmoid(margins) * torch.sigmoid(-margins))
    return torch.einsum("xab,xabd,xabe->de", weights, diffs, diffs)


def asymptotic_suboptimality(bandit: LinearBTBandit, behaviour) -> float:
    """``lim_{n -> inf} n E[J(pi*) - J(pi_hat)]`` for MLE then Gibbs (``pi_hat`` the Gibbs policy
    of ``<theta_hat, phi>``) from ``n`` comparisons drawn from ``behaviour = mu``:
    ``tr(C I^+) / (2 eta)``.

    Derivation (notebook 02): by the gap identity the suboptimality is ``eta E_x KL(pi_hat ||
    pi*)``; with ``Delta = theta_hat - theta*`` its second-order expansion is ``Delta^T C Delta /
    (2 eta)``, ``C = E_x Cov_{pi*(.|x)}[phi(x, .)]`` (the same for either direction of the KL),
    and ``n E[Delta Delta^T] -> I^+`` (``comparison_fisher_information``; the ridge's bias is
    ``O(1/n)``, so its share of ``n E[SubOpt]`` vanishes). ``C`` must live on the directions the
    comparisons identify (``mu`` covering the support of ``pi*``), else the limit is infinite and
    a ``ValueError`` is raised (Zhao et al., arXiv:2411.04625, for the ``1/n`` rate).

    Both matrices are first scaled by ``S = diag(I)^{-1/2}`` (1 where ``I_jj = 0``), which leaves
    ``tr(C I^+)`` unchanged when ``C`` lives on the range of ``I`` (write ``C = I A I``; both sides
    equal ``tr(I A)``), so that telling identified directions from round-off does not depend on
    the units of each feature. Each entry of the scaled ``I`` sums ``X K^2`` terms whose absolute
    values add up to at most 1 (Cauchy-Schwarz), so round-off moves its eigenvalues by at most
    ``d`` times that sum's error bound, and the symmetric eigensolver by about ``d u ||I||_2 <=
    d^2 u`` more (the scaled diagonal is 1); an eigenvalue below the two counts as an
    unidentified direction, and ``tr(C I^+) = sum_k v_k^T C v_k / lambda_k`` over the others.
    ``C``'s part outside the kept directions is judged relative to its norm (above ``1e-8`` of it,
    the ``ValueError``).
    """
    from .lab.stats import roundoff_tolerance

    information = comparison_fisher_information(bandit, behaviour)
    # Hessian of F(theta) = eta E_x log E_{pi0} exp(<theta, phi - nu>/eta) at theta* is C / eta.
    _, _, curvature = _dual_pieces(bandit.theta_star, bandit.features, bandit.ref_probs,
                                   bandit.context_probs, _diffs(bandit), bandit.eta)
    diagonal = information.diagonal()
    scale = torch.where(diagonal > 0, diagonal.rsqrt(), 1.0)
    information = scale[:, None] * information * scale
    curvature = scale[:, None] * curvature * scale
    num_contexts, num_actions, dim = bandit.features.shape
    eigenvalues, eigenvectors = torch.linalg.eigh(information)
    kept = eigenvalues > roundoff_tolerance(num_contexts * num_actions**2 + dim, dim)
    identified = eigenvectors[:, kept]  # an orthonormal basis of the identified directions
    on_identified = identified.T @ curvature @ identified
    outside = (curvature - identified @ on_identified @ identified.T).norm()
    if outside > 1e-8 * curvature.norm():
        raise ValueError("behaviour does not identify the directions pi* plays: the comparisons "
                         "must cover the support of pi*")
    return float(0.5 * (on_identified.diagonal() / eigenvalues[kept]).sum())


def expected_bound(bandit: LinearBTBandit, comparator, *, sigma, beta) -> torch.Tensor:
    """``2 beta ||E_{x ~ d0, a ~ pi}[phi(x,a) - nu(x)]||_{Sigma^{-1}}``: on the confidence event,
    an upper bound on ``J(pi) - J(pi_hat)`` for the expected-pessimism ``pi_hat`` (plus its
    duality gap, when solved numerically)."""
    direction = policy_direction(bandit, comparator)
    norm = torch.einsum("...ij,...j->...i", whitener(sigma), direction).norm(dim=-1)
    return 2 * as_float64(beta) * norm


@dataclass(frozen=True)
class TrapInstance:
    """A linear Bradley-Terry bandit where coverage is a dial (notebook 02).

    The last feature coordinate is the *trap direction*: ``num_traps`` actions per context load it
    (``phi = [trap_lure * u, trap_load]``, with ``u`` the direction of the ordinary part of
    ``theta*``), while ordinary actions have no component along it. Its true weight is negative,
    so traps look attractive through the ordinary coordinates but have low true reward;
    ``pi0`` plays them with total mass ``ref_trap_mass``. A behaviour policy that rarely plays
    traps leaves the trap direction uncovered.
    """

    bandit: LinearBTBandit
    trap_mask: torch.Tensor  # [X, K] bool

    def behaviour(self, trap_mass: float) -> torch.Tensor:
        """Behaviour policy ``mu [X, K]``: total mass ``trap_mass`` spread evenly over the trap
        actions, the rest evenly over the ordinary ones (``trap_mass = num_traps / K`` is
        uniform)."""
        if not 0 <= trap_mass <= 1:
            raise ValueError(f"trap_mass must be in [0, 1], got {trap_mass!r}")
        traps = self.trap_mask.to(torch.float64)
        ordinary = 1 - traps
        return (trap_mass * traps / traps.sum(-1, keepdim=True)
                + (1 - trap_mass) * ordinary / ordinary.sum(-1, keepdim=True))


def trap_instance(*, num_contexts: int, num_actions: int, dim: int, num_traps: int,
                  norm_bound: float, trap_weight: float, eta: float, generator: torch.Generator,
                  reference: str = "softmax", zipf_exponent: float = 1.0,
                  ref_trap_mass: float = 0.2, trap_lure: float = 0.6,
                  trap_load: float = 0.8) -> TrapInstance:
    """Build a ``TrapInstance``: ``theta* = [sqrt(B^2 - w^2) u, -w]`` (``||theta*|| = B``,
    ``w = trap_weight``), ordinary features ``[rho e, 0]`` with ``e`` uniform on the sphere and
    ``rho`` uniform in [0.5, 1], trap features ``[trap_lure u, trap_load]`` (norm <= 1), ``pi0``
    from the ``reference`` family (``instance.reference_policy``) rescaled so that the traps hold
    ``ref_trap_mass``, ``d0`` uniform."""
    for name, value in [("num_contexts", num_contexts), ("num_actions", num_actions),
                        ("dim", dim), ("num_traps", num_traps)]:
        check_positive_int(value, name)
    if not num_traps < num_actions:
        raise ValueError(f"num_traps must be in (0, num_actions), got {num_traps!r}")
    if dim < 2:
        raise ValueError(f"dim must be at least 2, got {dim!r}")
    if not 0 < trap_weight < norm_bound:
        raise ValueError("trap_weight must be in (0, norm_bound)")
    if trap_lure**2 + trap_load**2 > 1 + 1e-12:
        raise ValueError("trap features must have norm <= 1: trap_lure^2 + trap_load^2 <= 1")
    if not 0 < ref_trap_mass < 1:
        raise ValueError(f"ref_trap_mass must be in (0, 1), got {ref_trap_mass!r}")
    direction = torch.randn(dim - 1, dtype=torch.float64, generator=generator)
    direction /= direction.norm()
    theta_star = torch.cat([(norm_bound**2 - trap_weight**2) ** 0.5 * direction,
                            torch.tensor([-trap_weight], dtype=torch.float64)])
    ordinary = torch.randn(num_contexts, num_actions, dim - 1, dtype=torch.float64,
                           generator=generator)
    ordinary /= ordinary.norm(dim=-1, keepdim=True)
    ordinary *= 0.5 + 0.5 * torch.rand(num_contexts, num_actions, 1, dtype=torch.float64,
                                       generator=generator)
    features = torch.cat([ordinary, torch.zeros(num_contexts, num_actions, 1,
                                                dtype=torch.float64)], -1)
    trap_mask = torch.zeros(num_contexts, num_actions, dtype=torch.bool)
    trap_mask[:, :num_traps] = True
    trap_feature = torch.cat([trap_lure * direction,
                              torch.tensor([trap_load], dtype=torch.float64)])
    features[:, :num_traps] = trap_feature
    probs = reference_policy(reference, num_contexts=num_contexts, num_actions=num_actions,
                             generator=generator, exponent=zipf_exponent)
    traps = trap_mask.to(torch.float64)
    ordinary_mask = 1 - traps
    probs = (ref_trap_mass * probs * traps / (probs * traps).sum(-1, keepdim=True)
             + (1 - ref_trap_mass) * probs * ordinary_mask
             / (probs * ordinary_mask).sum(-1, keepdim=True))
    bandit = LinearBTBandit(features, theta_star, probs,
                            torch.full((num_contexts,), 1.0 / num_contexts, dtype=torch.float64),
                            eta)
    return TrapInstance(bandit, trap_mask)


@dataclass(frozen=True)
class OfflineFits:
    """MLE fits on a grid of behaviour policies and data sizes, ``num_seeds`` data sets each.

    ``theta_hat [M, N, S, d]``, ``sigma [M, N, S, d, d]`` (``Sigma_D``), ``error_sigma [M, N, S]``
    (``||theta_hat - theta*||_{Sigma_D}``, for evaluation only), ``error_euclid [M, N, S]``,
    ``bootstrap_radius [M, N, S]`` (the data-driven radius, ``nan`` for sizes not bootstrapped);
    ``M`` behaviour policies (trap masses), ``N`` data sizes, ``S`` seeds.
    """

    trap_masses: tuple[float, ...]
    sizes: tuple[int, ...]
    theta_hat: torch.Tensor
    sigma: torch.Tensor
    error_sigma: torch.Tensor
    error_euclid: torch.Tensor
    bootstrap_radius: torch.Tensor

    def at_size(self, size: int) -> OfflineFits:
        """The fits of one data size (the size dimension kept, of length 1)."""
        if size not in self.sizes:
            raise ValueError(f"size {size} is not among the fitted sizes {self.sizes}")
        index = slice(self.sizes.index(size), self.sizes.index(size) + 1)
        return OfflineFits(self.trap_masses, (size,), self.theta_hat[:, index],
                           self.sigma[:, index], self.error_sigma[:, index],
                           self.error_euclid[:, index], self.bootstrap_radius[:, index])


def fit_offline_grid(instance: TrapInstance, *, trap_masses, sizes, num_seeds: int, reg: float,
                     generator: torch.Generator, bootstrap_sizes=(), num_bootstrap: int = 50,
                     delta: float = 0.05, progress=None) -> OfflineFits:
    """For each trap mass of the behaviour policy and each data size ``n``: draw ``num_seeds``
    independent data sets of ``n`` pairs ``(a1, a2) ~ mu x mu`` with Bradley-Terry labels, and fit
    the MLE (all seeds in one batched call). For the sizes in ``bootstrap_sizes``, also the
    parametric-bootstrap radius of each data set (``estimation.bootstrap_radius``).
    ``progress`` wraps the loop over cells (e.g. ``gsfh_utils.lab.progress``)."""
    bandit = instance.bandit
    cells = [(mass, n) for mass in trap_masses for n in sizes]
    thetas, sigmas, radii = [], [], []
    for mass, n in (progress or iter)(cells):
        behaviour = instance.behaviour(mass)
        data = bandit.sample_preferences(n, behaviour, behaviour, generator, (num_seeds,))
        theta = fit_bt_mle(data.feature_diffs, data.labels, reg)
        thetas.append(theta)
        sigmas.append(sigma_d(data.feature_diffs, reg))
        radii.append(bootstrap_radius(data.feature_diffs, theta_hat=theta, reg=reg, delta=delta,
                                      num_bootstrap=num_bootstrap, generator=generator)
                     if n in bootstrap_sizes else torch.full((num_seeds,), torch.nan,
                                                             dtype=torch.float64))
    shape = (len(trap_masses), len(sizes), num_seeds)
    theta_hat = torch.stack(thetas).reshape(*shape, bandit.dim)
    sigma = torch.stack(sigmas).reshape(*shape, bandit.dim, bandit.dim)
    error = theta_hat - bandit.theta_star
    return OfflineFits(tuple(trap_masses), tuple(sizes), theta_hat, sigma,
                       sigma_norm(error, sigma), error.norm(dim=-1),
                       torch.stack(radii).reshape(shape))


def evaluate_offline(instance: TrapInstance, fits: OfflineFits, *, radii: dict,
                     eta: float | None = None) -> dict:
    """Exact suboptimality ``J(pi*) - J(pi_hat)`` of every method on every fit, and the bounds.

    ``radii``: named confidence radii ``beta``, each a number or a tensor broadcasting against
    ``[M, N, S]`` (e.g. the per-data-set bootstrap radius). Returns ``"none"`` (MLE then Gibbs,
    ``[M, N, S]``) and, for each radius name, dicts ``"pointwise"``, ``"expected"``,
    ``"pointwise_bound"``, ``"pointwise_kl_bound"`` (the bound with its KL term),
    ``"expected_bound"`` (including the solver's certified duality gap)
    and ``"duality_gap"``, each ``[M, N, S]``. ``eta`` defaults to the instance's; otherwise the
    comparator is the Gibbs policy ``pi*`` at that ``eta``.
    """
    bandit = instance.bandit if eta is None else instance.bandit.with_eta(eta)
    estimates = {"theta_hat": fits.theta_hat, "sigma": fits.sigma}
    optimal = bandit.optimal_policy()
    results = {"none": bandit.suboptimality(
        pointwise_pessimistic_policy(bandit, **estimates, beta=0.0))}
    for key in ("pointwise", "expected", "pointwise_bound", "pointwise_kl_bound",
                "expected_bound", "duality_gap"):
        results[key] = {}
    for name, beta in radii.items():
        beta = as_float64(beta)
        expected = expected_pessimism_policy(bandit, **estimates, beta=beta)
        results["pointwise"][name] = bandit.suboptimality(
            pointwise_pessimistic_policy(bandit, **estimates, beta=beta))
        results["expected"][name] = bandit.suboptimality(expected.policy)
        results["pointwise_bound"][name] = pointwise_bound(bandit, optimal, sigma=fits.sigma,
                                                           beta=beta)
        results["pointwise_kl_bound"][name] = pointwise_bound(bandit, optimal, **estimates,
                                                              beta=beta)
        results["expected_bound"][name] = (expected_bound(bandit, optimal, sigma=fits.sigma,
                                                          beta=beta) + expected.duality_gap)
        results["duality_gap"][name] = expected.duality_gap
    return results
