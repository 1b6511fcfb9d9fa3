"""The Gibbs policy of a reward and the KL-regularised objective (derived in notebook 01).

The reverse-KL regularised objective of Xiong et al. (arXiv:2312.11456) is
``J_r(pi) = E_x [E_{a~pi} r(x,a) - eta KL(pi(.|x) || pi0(.|x))]``; its maximiser is the Gibbs policy
``pi_r = pi0 exp(r/eta) / Z_r``, and ``J_r(pi_r) - J_r(pi) = eta E_x KL(pi || pi_r)`` exactly.

All functions are batched over leading dimensions (seeds, contexts) with actions last, and work
in log space so that ``eta`` from 1e-6 to 1e8 gives finite, correct numbers.

Notation: ``ref_probs`` is pi0(.|x), ``rewards`` is r(x, .), ``eta`` the KL coefficient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._validation import (
    broadcast_pair,
    check_eta,
    check_eta_shape,
    check_positive_int,
    check_probs,
    check_rewards,
)


def checked_log_tilt(ref_probs, rewards, eta):
    """Validate the inputs and return ``(ref_probs, log_tilt, reward_max, eta)``.

    ``log_tilt = (r - r_max)/eta`` with ``r_max`` the largest reward on the support of pi0, and
    ``-inf`` off the support. It is both the Gibbs logit less ``log pi0`` and the log acceptance
    probability of the rejection sampler. Shifting by ``r_max`` changes nothing mathematically
    but keeps ``log pi0`` exact on the maximisers when ``eta`` is tiny (``r/eta ~ 1e6`` would round
    it away).
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    ref_probs, rewards = broadcast_pair(ref_probs, rewards, ("ref_probs", "rewards"))
    eta = check_eta(eta, ref_probs.dtype)
    check_eta_shape(eta, ref_probs.shape[:-1])
    support = ref_probs > 0
    reward_max = torch.where(support, rewards, -torch.inf).amax(-1, keepdim=True)
    log_tilt = torch.where(support, (rewards - reward_max) / eta, -torch.inf)
    return ref_probs, log_tilt, reward_max, eta


def _gibbs_logits(ref_probs, rewards, eta):
    """``log pi0 + (r - r_max)/eta`` (probability 0 off the support), ``r_max`` and ``eta``."""
    ref_probs, log_tilt, reward_max, eta = checked_log_tilt(ref_probs, rewards, eta)
    return torch.log(ref_probs) + log_tilt, reward_max, eta


def gibbs_log_policy(ref_probs, rewards, eta) -> torch.Tensor:
    """log pi_r(a|x) = log pi0(a|x) + r(x,a)/eta - log Z_r(x)."""
    logits, _, _ = _gibbs_logits(ref_probs, rewards, eta)
    return torch.log_softmax(logits, dim=-1)


def gibbs_policy(ref_probs, rewards, eta) -> torch.Tensor:
    """Gibbs policy pi_r(a|x) = pi0(a|x) exp(r(x,a)/eta) / Z_r(x).

    The unique maximiser of E_pi r - eta KL(pi || pi0). Computed as a softmax of
    ``log pi0 + r/eta``, so it is exact in the limits: zero outside the support of pi0 for any
    reward, and pi0 restricted to the maximisers of r as ``eta -> 0``.
    """
    logits, _, _ = _gibbs_logits(ref_probs, rewards, eta)
    return torch.softmax(logits, dim=-1)


def log_partition(ref_probs, rewards, eta) -> torch.Tensor:
    """log Z_r(x) = log sum_a pi0(a|x) exp(r(x,a)/eta); shape = leading dimensions.

    ``eta * log_partition`` is the optimal value of the regularised objective per context.
    """
    logits, reward_max, eta = _gibbs_logits(ref_probs, rewards, eta)
    return torch.logsumexp(logits, dim=-1) + (reward_max / eta).squeeze(-1)


def kl_divergence(p, q) -> torch.Tensor:
    """KL(p || q) = sum_a p(a) log(p(a)/q(a)) over the last dimension.

    Conventions: 0 log(0/q) = 0, and p(a) > 0 = q(a) gives +inf.
    """
    p = check_probs(p, "p")
    q = check_probs(q, "q")
    p, q = broadcast_pair(p, q, ("p", "q"))
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def regularized_value(policy, ref_probs, rewards, eta) -> torch.Tensor:
    """E_{a~pi} r(x,a) - eta KL(pi(.|x) || pi0(.|x)), per context (the integrand of J)."""
    policy = check_probs(policy, "policy")
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    policy, rewards = broadcast_pair(policy, rewards, ("policy", "rewards"))
    policy, ref_probs = broadcast_pair(policy, ref_probs, ("policy", "ref_probs"))
    rewards = rewards.expand(policy.shape)
    eta = check_eta(eta, policy.dtype).squeeze(-1)
    check_eta_shape(eta.unsqueeze(-1), policy.shape[:-1])
    return (policy * rewards).sum(-1) - eta * kl_divergence(policy, ref_probs)


def mirror_ascent(
    gradient: Callable[[torch.Tensor], torch.Tensor],
    initial_probs: torch.Tensor,
    step_size: float,
    num_steps: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Exponentiated-gradient (mirror) ascent on the simplex, batched over leading dimensions.

    ``pi_{k+1} ∝ pi_k exp(step_size * gradient(pi_k))``: mirror ascent with the negative entropy
    as mirror map. Returns the last iterate and the list of all iterates (``num_steps + 1``).

    For ``J`` itself the gradient is ``r - eta (log(pi/pi0) + 1)``; with ``step_size = alpha/eta``
    the update reads ``log pi_{k+1} = (1 - alpha) log pi_k + alpha log pi_r + const``, so the
    log-ratio to the Gibbs policy contracts by ``(1 - alpha)`` per step (see notebook 01).
    """
    probs = check_probs(initial_probs, "initial_probs")
    check_positive_int(num_steps, "num_steps")
    if not (step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"step_size must be positive and finite, got {step_size!r}")
    iterates = [probs]
    for _ in range(num_steps):
        probs = torch.softmax(torch.log(probs) + step_size * gradient(probs), dim=-1)
        iterates.append(probs)
    return probs, iterates


def objective_gradient(ref_probs, rewards, eta) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gradient of ``E_pi r - eta KL(pi || pi0)`` in pi: ``r - eta (log(pi/pi0) + 1)``.

    Actions outside the support of pi0 are never reached from an initial policy inside it (the
    multiplicative update keeps zeros at zero); their gradient is set to 0 to avoid ``inf - inf``.
    Inside the support, a probability that has underflowed to 0 (small ``eta``) is read as the
    smallest normal number, so the gradient stays finite and the update keeps it at 0 instead of
    producing ``-inf + inf = NaN``.
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    ref_probs, rewards = broadcast_pair(ref_probs, rewards, ("ref_probs", "rewards"))
    eta = check_eta(eta, ref_probs.dtype)
    check_eta_shape(eta, ref_probs.shape[:-1])
    support = ref_probs > 0
    tiny = torch.finfo(ref_probs.dtype).tiny

    def gradient(probs: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log(probs.clamp_min(tiny))
        log_ratio = torch.where(support, log_probs - torch.log(ref_probs), 0.0)
        return torch.where(support, rewards - eta * (log_ratio + 1), 0.0)

    return gradient


def gibbs_frontier_eta(ref_probs, rewards, kl_target, num_bisections: int = 200) -> torch.Tensor:
    """The ``eta`` whose Gibbs policy has ``KL(pi_eta || pi0) = kl_target`` (batched).

    KL(pi_eta || pi0) decreases from ``-log pi0(argmax r)`` (eta -> 0) to 0 (eta -> inf), so a
    bisection on ``log eta`` over [1e-12, 1e12] finds it. Targets at or above the largest
    reachable KL return the lower end (the frontier there is flat at ``max r``), except a target
    of 0 when every ``eta`` gives ``pi0`` (rewards constant on its support): every ``eta`` meets
    it, and the end returned follows the sign of the round-off in the computed KLs.
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    kl_target = torch.as_tensor(kl_target, dtype=ref_probs.dtype)
    if (kl_target < 0).any() or not torch.isfinite(kl_target).all():
        raise ValueError("kl_target must be finite and non-negative")
    try:
        shape = torch.broadcast_shapes(ref_probs.shape[:-1], kl_target.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"kl_target (shape {tuple(kl_target.shape)}) must broadcast against the leading "
            f"dimensions {tuple(ref_probs.shape[:-1])} of ref_probs"
        ) from exc
    low = torch.full(shape, -12 * torch.log(torch.tensor(10.0)).item(), dtype=ref_probs.dtype)
    high = -low
    for _ in range(num_bisections):
        middle = (low + high) / 2
        kl = kl_divergence(gibbs_policy(ref_probs, rewards, middle.exp()), ref_probs)
        too_close = kl < kl_target  # eta too large: move it down
        high = torch.where(too_close, middle, high)
        low = torch.where(too_close, low, middle)
    return ((low + high) / 2).exp()


def total_variation(p, q) -> torch.Tensor:
    """TV(p, q) = 1/2 sum_a |p(a) - q(a)| over the last dimension."""
    p = check_probs(p, "p")
    q = check_probs(q, "q")
    p, q = broadcast_pair(p, q, ("p", "q"))
    return 0.5 * (p - q).abs().sum(-1)


def _support_rewards(ref_probs, rewards):
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    ref_probs, rewards = broadcast_pair(ref_probs, rewards, ("ref_probs", "rewards"))
    support = ref_probs > 0
    return ref_probs, torch.where(support, rewards, -torch.inf), support


def small_eta_limit(ref_probs, rewards) -> torch.Tensor:
    """The limit of the Gibbs policy as ``eta -> 0``: pi0 restricted to the maximisers of r on
    the support of pi0, renormalised.

    pi_eta(a) ∝ pi0(a) exp((r(a) - r_max)/eta): the factor is 1 on the maximisers and vanishes
    elsewhere, so ties keep the *ratios of pi0* (the law is uniform over the maximisers only
    when pi0 is uniform on them).
    """
    ref_probs, support_rewards, _ = _support_rewards(ref_probs, rewards)
    maximisers = support_rewards == support_rewards.amax(-1, keepdim=True)
    restricted = torch.where(maximisers, ref_probs, 0.0)
    return restricted / restricted.sum(-1, keepdim=True)


def small_eta_tv_bound(ref_probs, rewards, eta) -> torch.Tensor:
    """Bound on ``TV(pi_eta, small_eta_limit)``: ``pi0(not M)/pi0(M) exp(-gap/eta)``.

    ``M`` are the maximisers of r on the support, ``gap`` the distance from ``max r`` to the next
    reward value on the support. The TV equals the Gibbs mass outside ``M``, which is at most
    ``sum_{a not in M} pi0(a) exp(-gap/eta) / pi0(M)``. With no other action the bound is 0.
    """
    ref_probs, support_rewards, support = _support_rewards(ref_probs, rewards)
    eta = check_eta(eta, ref_probs.dtype).squeeze(-1)
    reward_max = support_rewards.amax(-1, keepdim=True)
    maximisers = support_rewards == reward_max
    mass_max = torch.where(maximisers, ref_probs, 0.0).sum(-1)
    mass_rest = torch.where(maximisers, 0.0, ref_probs).sum(-1)
    runner_up = torch.where(maximisers | ~support, -torch.inf, support_rewards).amax(-1)
    gap = reward_max.squeeze(-1) - runner_up  # +inf when every supported action is maximal
    return mass_rest / mass_max * torch.exp(-gap / eta)


def large_eta_tv_bound(ref_probs, rewards, eta) -> torch.Tensor:
    """Bound on ``TV(pi_eta, pi0)``: ``(exp(osc/eta) - 1)/2`` with ``osc = max r - min r`` on the
    support of pi0.

    The ratio ``pi_eta(a)/pi0(a) = exp(r(a)/eta)/E_pi0 exp(r/eta)`` lies in
    ``[exp(-osc/eta), exp(osc/eta)]``, so ``|pi_eta(a) - pi0(a)| <= pi0(a) (exp(osc/eta) - 1)``.
    """
    ref_probs, support_rewards, support = _support_rewards(ref_probs, rewards)
    eta = check_eta(eta, ref_probs.dtype).squeeze(-1)
    minimum = torch.where(support, support_rewards, torch.inf).amin(-1)
    oscillation = support_rewards.amax(-1) - minimum
    return 0.5 * torch.expm1(oscillation / eta)


def argmax_mass(ref_probs, rewards) -> torch.Tensor:
    """``pi0(M|x)``, the reference mass of the maximisers ``M`` of ``r`` on the support of pi0:
    the limit of the rejection sampler's acceptance rate as ``eta -> 0``. Shape: leading dims."""
    ref_probs, support_rewards, _ = _support_rewards(ref_probs, rewards)
    maximisers = support_rewards == support_rewards.amax(-1, keepdim=True)
    return torch.where(maximisers, ref_probs, 0.0).sum(-1)


def gap_identity_magnitude(policy, ref_probs, rewards, eta) -> torch.Tensor:
    """The sum of the absolute values of the float64 terms that both sides of the gap identity
    ``eta log Z_r - (E_pi r - eta KL(pi || pi0)) = eta KL(pi || pi_r)`` add up, per problem: what
    ``gsfh_utils.lab.stats.roundoff_tolerance`` scales to a round-off bound. All arguments
    broadcast to ``[..., K]`` (``eta`` to ``[...]``)."""
    policy, ref_probs = check_probs(policy, "policy"), check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    eta = check_eta(eta, torch.float64).squeeze(-1)
    gibbs = gibbs_policy(ref_probs, rewards, eta)

    def abs_log(probs):
        return torch.where(probs > 0, probs.log().abs(), 0.0)

    logs = abs_log(policy) + abs_log(ref_probs) + abs_log(gibbs)
    return ((policy * rewards).abs().sum(-1) + eta * (policy * logs).sum(-1)
            + (eta * log_partition(ref_probs, rewards, eta)).abs()
            + (gibbs * rewards).abs().sum(-1))


def _log_magnitude(p, q) -> torch.Tensor:
    """``sum_a p(a) (|log p(a)| + |log q(a)| + 2)``: the magnitude that ``kl_divergence(p, q)``'s
    rounding errors are relative to (each logarithm errs by ``u`` relative to its value, and by
    ``u`` absolutely from the rounding of its argument)."""
    return (torch.xlogy(p, p).abs() + torch.xlogy(p, q).abs() + 2 * p).sum(-1)


def frontier_excess(ref_probs, rewards, policies):
    """How far ``policies [N, K]`` (one context) rise above the Gibbs reward-KL frontier.

    For each policy, bisection (``gibbs_frontier_eta``) finds the ``eta`` whose Gibbs policy has
    the same KL to pi0, and the frontier is evaluated in the dual form
    ``F = E_{pi_eta} r + eta [KL(pi || pi0) - KL(pi_eta || pi0)]``, so that
    ``F - E_pi r = eta KL(pi || pi_eta) >= 0`` for *any* ``eta`` (the gap identity) and the check
    does not depend on the bisection's precision. Returns ``(excess, kl, reward)``:
    ``(E_pi r - F)`` divided by the float64 round-off bound of the comparison (at most 1 for every
    policy if the frontier dominates), and each policy's KL and expected reward.

    The round-off bound counts the terms as they are rounded: each KL is a sum of
    ``p log p - p log pi0``, whose logarithms err by ``u (|log p| + 1)`` and ``u (|log pi0| + 1)``
    (not relative to the KL, which is small when ``eta`` is large), and ``eta`` multiplies both
    KLs. A KL that round-off makes slightly negative is matched as 0. Probabilities that sum to
    ``1 + delta`` (``check_probs`` accepts ``|delta|`` up to 1.5e-8) move the gap identity by up to
    ``|delta| (eta + max |r|)`` (``eta`` times the unnormalised KL's ``|delta|`` and
    ``eta |log Z| <= max |r|``), which is added; pi0's own ``delta`` shifts both KLs alike.
    """
    from .lab.stats import roundoff_tolerance

    ref_probs, rewards = check_probs(ref_probs, "ref_probs"), check_rewards(rewards)
    policies = check_probs(policies, "policies")
    kl = kl_divergence(policies, ref_probs)
    reward = (policies * rewards).sum(-1)
    eta = gibbs_frontier_eta(ref_probs, rewards, kl.clamp_min(0))
    matched = gibbs_policy(ref_probs, rewards, eta)
    frontier = (matched * rewards).sum(-1) + eta * (kl - kl_divergence(matched, ref_probs))
    log_terms = (_log_magnitude(policies, ref_probs) + _log_magnitude(matched, ref_probs))
    delta = (policies.sum(-1) - 1).abs()
    tolerance = (roundoff_tolerance(rewards.shape[-1], 2 * rewards.abs().max() + eta * log_terms)
                 + delta * (eta + rewards.abs().max()))
    return (reward - frontier) / tolerance, kl, reward


def eta_limits(ref_probs, rewards, etas) -> dict[str, torch.Tensor]:
    """The Gibbs policy against its two limits, for every ``eta`` of ``etas [E, 1]`` (or any
    shape broadcasting against the leading dimensions): ``tv_to_reference`` =
    ``TV(pi_eta, pi0)`` with its ``large_eta_bound``, and ``tv_to_argmax_limit`` =
    ``TV(pi_eta, pi0(.|M))`` with its ``small_eta_bound`` (derived in notebook 01)."""
    policies = gibbs_policy(ref_probs, rewards, etas)
    return {"tv_to_reference": total_variation(policies, ref_probs),
            "large_eta_bound": large_eta_tv_bound(ref_probs, rewards, etas),
            "tv_to_argmax_limit": total_variation(policies, small_eta_limit(ref_probs, rewards)),
            "small_eta_bound": small_eta_tv_bound(ref_probs, rewards, etas)}
