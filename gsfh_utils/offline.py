"""Offline learning with pessimism: the two pessimistic policies and their bounds (PAPER.md 3).

Notation: ``features`` ``phi [X, K, d]``, ``ref_probs`` ``pi0 [X, K]``, ``context_probs``
``d0 [X]``, ``nu [X, d]`` the reference vectors, ``theta_hat [..., d]`` the MLE,
``sigma [..., d, d]`` the design matrix ``Sigma_D``, ``beta`` the confidence radius (a number or a
tensor broadcasting against the leading dimensions ``[...]``), ``eta`` the KL coefficient. Every
function is batched over the leading dimensions of ``theta_hat`` / ``sigma`` (seeds, data sizes,
radii).

- Pointwise pessimism:
  ``r_hat(x,a) = <theta_hat, phi(x,a)> - beta ||phi(x,a) - nu(x)||_{Sigma^{-1}}`` and its Gibbs
  policy.
- Expected (policy-level) pessimism: the maximiser over ``pi`` of
  ``f(pi) = <theta_hat, v(pi)> - beta ||v(pi)||_{Sigma^{-1}} - eta E_x KL(pi || pi0)`` with
  ``v(pi) = E_{x ~ d0, a ~ pi}[phi(x,a) - nu(x)]``. Solved through its dual (see
  ``expected_pessimism_policy``), with a certified duality gap as the convergence check.
- The bounds of both, from the value-difference lemma on the event
  ``||theta_hat - theta*||_{Sigma} <= beta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gibbs import gibbs_policy, kl_divergence, mirror_ascent
from .instance import LinearBTBandit

#: Stopping tolerance of the expected-pessimism solver on the duality gap (in units of reward).
DUALITY_GAP_TOLERANCE = 1e-9


def _as64(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64)


def _beta(beta, leading: torch.Size) -> torch.Tensor:
    beta = _as64(beta)
    if not torch.isfinite(beta).all() or (beta < 0).any():
        raise ValueError(f"beta must be finite and non-negative, got {beta}")
    try:
        torch.broadcast_shapes(beta.shape, leading)
    except RuntimeError as exc:
        raise ValueError(
            f"beta (shape {tuple(beta.shape)}) must broadcast against {tuple(leading)}"
        ) from exc
    return beta


def _eta(eta) -> float:
    eta = float(eta)
    if not eta > 0 or eta == float("inf"):
        raise ValueError(f"eta must be positive and finite, got {eta!r}")
    return eta


def _check_problem(features, nu, theta_hat, sigma):
    features, nu, theta_hat, sigma = map(_as64, (features, nu, theta_hat, sigma))
    if features.ndim != 3:
        raise ValueError(f"features must have shape [X, K, d], got {tuple(features.shape)}")
    num_contexts, _, dim = features.shape
    if nu.shape != (num_contexts, dim):
        raise ValueError(f"nu must have shape [{num_contexts}, {dim}], got {tuple(nu.shape)}")
    if theta_hat.shape[-1:] != (dim,):
        raise ValueError(f"theta_hat must have last dimension {dim}, got {tuple(theta_hat.shape)}")
    if sigma.shape[-2:] != (dim, dim):
        raise ValueError(f"sigma must have shape [..., {dim}, {dim}], got {tuple(sigma.shape)}")
    return features, nu, theta_hat, sigma


def whitening(sigma) -> torch.Tensor:
    """``L^{-1}`` with ``Sigma = L L^T`` (Cholesky), so ``||v||_{Sigma^{-1}} = ||L^{-1} v||``."""
    sigma = _as64(sigma)
    chol = torch.linalg.cholesky(sigma)
    eye = torch.eye(sigma.shape[-1], dtype=torch.float64).expand_as(chol)
    return torch.linalg.solve_triangular(chol, eye, upper=False)


def uncertainty(features, nu, sigma) -> torch.Tensor:
    """``b(x, a) = ||phi(x,a) - nu(x)||_{Sigma^{-1}}`` for every ``sigma [..., d, d]``:
    shape ``[..., X, K]``."""
    diffs = _as64(features) - _as64(nu).unsqueeze(-2)
    whitened = torch.einsum("...ij,xkj->...xki", whitening(sigma), diffs)
    return whitened.norm(dim=-1)


def pointwise_pessimistic_rewards(features, nu, theta_hat, sigma, beta) -> torch.Tensor:
    """``r_hat(x,a) = <theta_hat, phi(x,a)> - beta ||phi(x,a) - nu(x)||_{Sigma^{-1}}``:
    ``[..., X, K]``."""
    features, nu, theta_hat, sigma = _check_problem(features, nu, theta_hat, sigma)
    leading = torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2])
    beta = _beta(beta, leading)
    rewards = torch.einsum("xkd,...d->...xk", features, theta_hat)
    return rewards - beta.unsqueeze(-1).unsqueeze(-1) * uncertainty(features, nu, sigma)


def pointwise_pessimistic_policy(features, ref_probs, nu, theta_hat, sigma, beta,
                                 eta) -> torch.Tensor:
    """Gibbs policy of the pointwise-pessimistic reward (``beta = 0``: MLE then Gibbs, the ideal
    offline DPO): ``[..., X, K]``."""
    rewards = pointwise_pessimistic_rewards(features, nu, theta_hat, sigma, beta)
    return gibbs_policy(ref_probs, rewards, _eta(eta))


def policy_direction(policy, features, context_probs, nu) -> torch.Tensor:
    """``v(pi) = E_{x ~ d0, a ~ pi}[phi(x,a) - nu(x)]``: ``policy [..., X, K] -> [..., d]``."""
    diffs = _as64(features) - _as64(nu).unsqueeze(-2)
    return torch.einsum("x,...xk,xkd->...d", _as64(context_probs), _as64(policy), diffs)


def expected_pessimism_objective(policy, features, ref_probs, context_probs, nu, theta_hat,
                                 sigma, beta, eta) -> torch.Tensor:
    """``f(pi) = <theta_hat, v(pi)> - beta ||v(pi)||_{Sigma^{-1}} - eta E_x KL(pi || pi0)``."""
    features, nu, theta_hat, sigma = _check_problem(features, nu, theta_hat, sigma)
    policy = _as64(policy)
    leading = torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2], policy.shape[:-2])
    beta = _beta(beta, leading)
    direction = policy_direction(policy, features, context_probs, nu)
    norm = torch.einsum("...ij,...j->...i", whitening(sigma), direction).norm(dim=-1)
    kl = (kl_divergence(policy, ref_probs) * _as64(context_probs)).sum(-1)
    return (theta_hat * direction).sum(-1) - beta * norm - _eta(eta) * kl


def expected_pessimism_dual(theta, features, ref_probs, context_probs, nu, eta) -> torch.Tensor:
    """``F(theta) = eta E_x log sum_a pi0(a|x) exp(<theta, phi(x,a) - nu(x)>/eta)``.

    ``F(theta) = max_pi <theta, v(pi)> - eta E KL(pi || pi0)`` (Gibbs variational formula), so
    for every ``theta`` with ``||theta - theta_hat||_Sigma <= beta``, ``F(theta) >= f(pi)`` for
    all ``pi``: weak duality, used to certify the solver.
    """
    eta = _eta(eta)
    diffs = _as64(features) - _as64(nu).unsqueeze(-2)
    scores = torch.einsum("xkd,...d->...xk", diffs, _as64(theta))
    logits = torch.log(_as64(ref_probs)) + scores / eta
    return eta * (torch.logsumexp(logits, -1) * _as64(context_probs)).sum(-1)


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


def expected_pessimism_policy(features, ref_probs, context_probs, nu, theta_hat, sigma, beta,
                              eta, tol: float = DUALITY_GAP_TOLERANCE,
                              max_outer: int = 100) -> ExpectedPessimism:
    """Maximise ``f(pi) = <theta_hat, v(pi)> - beta ||v(pi)||_{Sigma^{-1}} - eta E KL(pi||pi0)``.

    Method (documented in notebook 02). Since ``-beta ||v||_{Sigma^{-1}} = min_{||u||_Sigma <=
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
    features, nu, theta_hat, sigma = _check_problem(features, nu, theta_hat, sigma)
    ref_probs, context_probs = _as64(ref_probs), _as64(context_probs)
    eta = _eta(eta)
    leading = torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2],
                                     _as64(beta).shape)
    beta = _beta(beta, leading).expand(leading)
    theta_hat = theta_hat.expand(*leading, theta_hat.shape[-1])
    sigma = sigma.expand(*leading, *sigma.shape[-2:])
    diffs = features - nu.unsqueeze(-2)

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
    rewards = torch.einsum("xkd,...d->...xk", features, parameter)
    policy = gibbs_policy(ref_probs, rewards, eta)
    direction = policy_direction(policy, features, context_probs, nu)
    value = expected_pessimism_objective(policy, features, ref_probs, context_probs, nu,
                                         theta_hat, sigma, beta, eta)
    # Certificate: the best response theta_br = theta_hat - beta Sigma^{-1} v / ||v||_{Sigma^{-1}}
    # is feasible, so F(theta_br) >= max f >= f(policy) (weak duality); gap = F(theta_br) - f.
    scaled = torch.cholesky_solve(direction.unsqueeze(-1), torch.linalg.cholesky(sigma))
    scaled = scaled.squeeze(-1)
    dual_norm = (direction * scaled).sum(-1).clamp_min(0).sqrt()
    best_response = theta_hat - (beta / dual_norm.clamp_min(1e-300)).unsqueeze(-1) * scaled
    best_response = torch.where((dual_norm > 0).unsqueeze(-1), best_response, parameter)
    dual_value = expected_pessimism_dual(best_response, features, ref_probs, context_probs, nu,
                                         eta)
    # theta_tilde itself is a second dual point where it is feasible (theta_tilde = 0 inside).
    own = expected_pessimism_dual(parameter, features, ref_probs, context_probs, nu, eta)
    dual_value = torch.minimum(dual_value, torch.where(distance(parameter) <= beta, own, torch.inf))
    gap = (dual_value - value).clamp_min(0)
    if bool((gap > tol * (1 + value.abs())).any()):
        raise RuntimeError(
            f"expected pessimism did not converge: largest duality gap {gap.max().item():.3g}"
        )
    return ExpectedPessimism(policy, parameter, gap)


def expected_pessimism_mirror_ascent(features, ref_probs, context_probs, nu, theta_hat, sigma,
                                     beta, eta, step_size: float = 0.1,
                                     num_steps: int = 2000) -> torch.Tensor:
    """The same maximiser by exponentiated-gradient (mirror) ascent on the simplex of each
    context (``gsfh_utils.mirror_ascent``), started at the MLE's Gibbs policy; a slower,
    independent check of ``expected_pessimism_policy`` (the tests use it).

    The gradient of ``f`` in ``pi(.|x)``, divided by ``d0(x)`` (a per-context step size), is
    ``<theta_hat - beta Sigma^{-1} v / ||v||_{Sigma^{-1}}, phi - nu> - eta (log(pi/pi0) + 1)``.
    """
    features, nu, theta_hat, sigma = _check_problem(features, nu, theta_hat, sigma)
    ref_probs = _as64(ref_probs)
    eta = _eta(eta)
    leading = torch.broadcast_shapes(theta_hat.shape[:-1], sigma.shape[:-2])
    beta = _beta(beta, leading)
    diffs = features - nu.unsqueeze(-2)
    sigma_inverse = torch.cholesky_inverse(torch.linalg.cholesky(sigma))

    def gradient(policy):
        direction = policy_direction(policy, features, context_probs, nu)
        scaled = torch.einsum("...ij,...j->...i", sigma_inverse, direction)
        norm = (direction * scaled).sum(-1).clamp_min(1e-300).sqrt()
        weight = theta_hat - (beta / norm).unsqueeze(-1) * scaled
        linear = torch.einsum("xkd,...d->...xk", diffs, weight)
        return linear - eta * (torch.log(policy) - torch.log(ref_probs) + 1)

    start = gibbs_policy(ref_probs, torch.einsum("xkd,...d->...xk", features, theta_hat), eta)
    policy, _ = mirror_ascent(gradient, start, step_size / eta, num_steps)
    return policy


def pointwise_bound(comparator, features, context_probs, nu, sigma, beta) -> torch.Tensor:
    """``2 beta E_{x ~ d0, a ~ pi} ||phi(x,a) - nu(x)||_{Sigma^{-1}}``: on the confidence event,
    an upper bound on ``J(pi) - J(pi_hat)`` for the pointwise-pessimistic ``pi_hat`` and any
    comparator ``pi`` (PAPER.md section 3; derived in notebook 02)."""
    bonus = uncertainty(features, nu, sigma)
    expected = (bonus * _as64(comparator) * _as64(context_probs).unsqueeze(-1)).sum((-1, -2))
    return 2 * _as64(beta) * expected


def expected_bound(comparator, features, context_probs, nu, sigma, beta) -> torch.Tensor:
    """``2 beta ||E_{x ~ d0, a ~ pi}[phi(x,a) - nu(x)]||_{Sigma^{-1}}``: on the confidence event,
    an upper bound on ``J(pi) - J(pi_hat)`` for the expected-pessimism ``pi_hat`` (plus its
    duality gap, when solved numerically)."""
    direction = policy_direction(comparator, features, context_probs, nu)
    norm = torch.einsum("...ij,...j->...i", whitening(sigma), direction).norm(dim=-1)
    return 2 * _as64(beta) * norm


def mle_bound(comparator, policy, features, context_probs, nu, sigma, beta) -> torch.Tensor:
    """``beta E_x[E_pi b + E_{pi_hat} b]``, ``b = ||phi - nu||_{Sigma^{-1}}``: on the confidence
    event, the value-difference bound for the MLE's Gibbs policy ``pi_hat`` (no pessimism). It
    depends on ``pi_hat`` itself, which is what pessimism removes."""
    bonus = uncertainty(features, nu, sigma)
    weights = _as64(context_probs).unsqueeze(-1)
    total = (bonus * (_as64(comparator) + _as64(policy)) * weights).sum((-1, -2))
    return _as64(beta) * total


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


def trap_instance(num_contexts: int, num_actions: int, dim: int, num_traps: int,
                  norm_bound: float, trap_weight: float, eta: float, generator: torch.Generator,
                  ref_trap_mass: float = 0.2, trap_lure: float = 0.6,
                  trap_load: float = 0.8) -> TrapInstance:
    """Build a ``TrapInstance``: ``theta* = [sqrt(B^2 - w^2) u, -w]`` (``||theta*|| = B``,
    ``w = trap_weight``), ordinary features ``[rho e, 0]`` with ``e`` uniform on the sphere and
    ``rho`` uniform in [0.5, 1], trap features ``[trap_lure u, trap_load]`` (norm <= 1), ``pi0``
    a softmax of standard normal logits rescaled so the traps hold ``ref_trap_mass``, ``d0``
    uniform."""
    if not 0 < num_traps < num_actions:
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
    logits = torch.randn(num_contexts, num_actions, dtype=torch.float64, generator=generator)
    probs = torch.softmax(logits, -1)
    traps = trap_mask.to(torch.float64)
    ordinary_mask = 1 - traps
    probs = (ref_trap_mass * probs * traps / (probs * traps).sum(-1, keepdim=True)
             + (1 - ref_trap_mass) * probs * ordinary_mask
             / (probs * ordinary_mask).sum(-1, keepdim=True))
    bandit = LinearBTBandit(features, theta_star, probs,
                     torch.full((num_contexts,), 1.0 / num_contexts, dtype=torch.float64), eta)
    return TrapInstance(bandit, trap_mask)


@dataclass(frozen=True)
class OfflineFits:
    """MLE fits on a grid of behaviour policies and data sizes, ``num_seeds`` data sets each.

    ``theta_hat [M, N, S, d]``, ``sigma [M, N, S, d, d]`` (``Sigma_D``), ``error_sigma [M, N, S]``
    (``||theta_hat - theta*||_{Sigma_D}``), ``error_euclid [M, N, S]``; ``M`` behaviour policies
    (trap masses), ``N`` data sizes, ``S`` seeds.
    """

    trap_masses: tuple[float, ...]
    sizes: tuple[int, ...]
    theta_hat: torch.Tensor
    sigma: torch.Tensor
    error_sigma: torch.Tensor
    error_euclid: torch.Tensor


def fit_offline_grid(instance: TrapInstance, trap_masses, sizes, num_seeds: int, reg: float,
                     generator: torch.Generator, progress: bool = False) -> OfflineFits:
    """For each trap mass of the behaviour policy and each data size ``n``: draw ``num_seeds``
    independent data sets of ``n`` pairs ``(a1, a2) ~ mu x mu`` with Bradley-Terry labels, and fit
    the MLE (all seeds in one batched call)."""
    from tqdm.auto import tqdm

    from .estimation import fit_bt_mle, sigma_d, sigma_norm

    bandit = instance.bandit
    cells = [(mass, n) for mass in trap_masses for n in sizes]
    thetas, sigmas = [], []
    for mass, n in tqdm(cells, desc="fit MLE", disable=not progress):
        behaviour = instance.behaviour(mass)
        data = bandit.sample_preferences(n, behaviour, behaviour, generator, (num_seeds,))
        thetas.append(fit_bt_mle(data.feature_diffs, data.labels, reg))
        sigmas.append(sigma_d(data.feature_diffs, reg))
    shape = (len(trap_masses), len(sizes), num_seeds)
    theta_hat = torch.stack(thetas).reshape(*shape, bandit.dim)
    sigma = torch.stack(sigmas).reshape(*shape, bandit.dim, bandit.dim)
    error = theta_hat - bandit.theta_star
    return OfflineFits(tuple(trap_masses), tuple(sizes), theta_hat, sigma,
                       sigma_norm(error, sigma), error.norm(dim=-1))


def evaluate_offline(instance: TrapInstance, fits: OfflineFits, radii, eta: float) -> dict:
    """Exact suboptimality ``J(pi*) - J(pi_hat)`` of every method on every fit, and the bounds.

    ``radii [R]``: confidence radii ``beta``. Returns tensors (leading ``[M, N, S]``, with a radius
    dimension first where it applies): ``"none"`` (MLE then Gibbs), ``"pointwise" [R, ...]``,
    ``"expected" [R, ...]``, ``"pointwise_bound" [R, ...]``, ``"expected_bound" [R, ...]`` (the
    expected bound includes the solver's certified duality gap), ``"duality_gap" [R, ...]``.
    ``eta`` may differ from the instance's (the comparator is then the Gibbs policy at ``eta``).
    """
    from .estimation import reference_vectors

    bandit = instance.bandit
    if eta != bandit.eta:
        bandit = LinearBTBandit(bandit.features, bandit.theta_star, bandit.ref_probs,
                                bandit.context_probs, eta)
    radii = _as64(radii).reshape(-1)
    nu = reference_vectors(bandit.features, bandit.ref_probs)
    optimal = bandit.optimal_policy()
    args = (bandit.features, bandit.ref_probs)
    beta = radii.reshape(-1, 1, 1, 1)
    none = bandit.suboptimality(pointwise_pessimistic_policy(
        *args, nu, fits.theta_hat, fits.sigma, 0.0, eta))
    pointwise = bandit.suboptimality(pointwise_pessimistic_policy(
        *args, nu, fits.theta_hat, fits.sigma, beta, eta))
    expected = expected_pessimism_policy(*args, bandit.context_probs, nu, fits.theta_hat,
                                         fits.sigma, beta, eta)
    return {
        "none": none,
        "pointwise": pointwise,
        "expected": bandit.suboptimality(expected.policy),
        "pointwise_bound": pointwise_bound(optimal, bandit.features, bandit.context_probs, nu,
                                           fits.sigma, beta),
        "expected_bound": expected_bound(optimal, bandit.features, bandit.context_probs, nu,
                                         fits.sigma, beta) + expected.duality_gap,
        "duality_gap": expected.duality_gap,
    }
