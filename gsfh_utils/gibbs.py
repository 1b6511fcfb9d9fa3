"""The Gibbs policy of a reward and the KL-regularised objective (PAPER.md section 2).

All functions are batched over leading dimensions (seeds, contexts) with actions last, and work
in log space so that ``eta`` from 1e-6 to 1e8 gives finite, correct numbers.

Notation: ``ref_probs`` is pi0(.|x), ``rewards`` is r(x, .), ``eta`` the KL coefficient.
"""

from __future__ import annotations

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


def _gibbs_logits(ref_probs, rewards, eta):
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    ref_probs, rewards = broadcast_pair(ref_probs, rewards, ("ref_probs", "rewards"))
    eta = check_eta(eta, ref_probs.dtype)
    check_eta_shape(eta, ref_probs.shape[:-1])
    # log pi0 + r / eta; actions outside the support of pi0 get -inf and so probability 0.
    return torch.log(ref_probs) + rewards / eta, ref_probs, rewards, eta


def gibbs_log_policy(ref_probs, rewards, eta) -> torch.Tensor:
    """log pi_r(a|x) = log pi0(a|x) + r(x,a)/eta - log Z_r(x)  (PAPER.md section 2)."""
    logits, *_ = _gibbs_logits(ref_probs, rewards, eta)
    return torch.log_softmax(logits, dim=-1)


def gibbs_policy(ref_probs, rewards, eta) -> torch.Tensor:
    """Gibbs policy pi_r(a|x) = pi0(a|x) exp(r(x,a)/eta) / Z_r(x)  (PAPER.md section 2).

    The unique maximiser of E_pi r - eta KL(pi || pi0). Computed as a softmax of
    ``log pi0 + r/eta``, so it is exact in the limits: zero outside the support of pi0 for any
    reward, and pi0 restricted to the maximisers of r as ``eta -> 0``.
    """
    logits, *_ = _gibbs_logits(ref_probs, rewards, eta)
    return torch.softmax(logits, dim=-1)


def log_partition(ref_probs, rewards, eta) -> torch.Tensor:
    """log Z_r(x) = log sum_a pi0(a|x) exp(r(x,a)/eta); shape = leading dimensions.

    ``eta * log_partition`` is the optimal value of the regularised objective per context.
    """
    logits, *_ = _gibbs_logits(ref_probs, rewards, eta)
    return torch.logsumexp(logits, dim=-1)


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
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    iterates = [probs]
    for _ in range(num_steps):
        probs = torch.softmax(torch.log(probs) + step_size * gradient(probs), dim=-1)
        iterates.append(probs)
    return probs, iterates


def objective_gradient(ref_probs, rewards, eta) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gradient of ``E_pi r - eta KL(pi || pi0)`` in pi: ``r - eta (log(pi/pi0) + 1)``.

    Actions outside the support of pi0 are never reached from an initial policy inside it (the
    multiplicative update keeps zeros at zero); their gradient is set to 0 to avoid ``inf - inf``.
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    eta = check_eta(eta, ref_probs.dtype)
    support = ref_probs > 0

    def gradient(probs: torch.Tensor) -> torch.Tensor:
        log_ratio = torch.where(support, torch.log(probs) - torch.log(ref_probs), 0.0)
        return torch.where(support, rewards - eta * (log_ratio + 1), 0.0)

    return gradient


def gibbs_frontier_eta(ref_probs, rewards, kl_target, num_bisections: int = 200) -> torch.Tensor:
    """The ``eta`` whose Gibbs policy has ``KL(pi_eta || pi0) = kl_target`` (batched).

    KL(pi_eta || pi0) decreases from ``-log pi0(argmax r)`` (eta -> 0) to 0 (eta -> inf), so a
    bisection on ``log eta`` over [1e-12, 1e12] finds it. Targets at or above the largest
    reachable KL return the lower end (the frontier there is flat at ``max r``).
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    kl_target = torch.as_tensor(kl_target, dtype=ref_probs.dtype)
    if (kl_target < 0).any() or not torch.isfinite(kl_target).all():
        raise ValueError("kl_target must be finite and non-negative")
    shape = torch.broadcast_shapes(ref_probs.shape[:-1], kl_target.shape)
    low = torch.full(shape, -12 * torch.log(torch.tensor(10.0)).item(), dtype=ref_probs.dtype)
    high = -low
    for _ in range(num_bisections):
        middle = (low + high) / 2
        kl = kl_divergence(gibbs_policy(ref_probs, rewards, middle.exp()), ref_probs)
        too_close = kl < kl_target  # eta too large: move it down
        high = torch.where(too_close, middle, high)
        low = torch.where(too_close, low, middle)
    return ((low + high) / 2).exp()
