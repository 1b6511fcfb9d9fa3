"""The Gibbs oracle as practitioners run it: KL-regularised policy optimisation in a policy class
(beyond the paper; notebook 06).

The algorithms of Xiong et al. (arXiv:2312.11456) call an oracle that returns the Gibbs policy
``pi_r = pi0 exp(r / eta) / Z_r`` of a reward. A real system instead optimises a parametric policy
``pi_w`` on the prompts it has, the empirical objective

    F(w) = sum_x q(x) [ E_{a ~ pi_w(.|x)} r(x, a) - eta KL(pi_w(.|x) || pi0(.|x)) ]

over prompts ``x`` with weights ``q`` (uniform by default, normalised to sum to one), the
expectations over the finite action set computed exactly. ``optimize_policy`` is that oracle for
two classes:

- ``"tabular"``: one free logit per (prompt, action). ``F`` separates over prompts and, by the
  Gibbs variational principle (notebook 01), its maximiser is ``pi_r`` on every prompt with
  ``q(x) > 0``; on the others ``F`` does not depend on the logits and the oracle keeps ``pi0``
  (the minimum-norm maximiser). Closed form, exact.
- ``"log_linear"``: ``pi_w(a|x) ∝ pi0(a|x) exp(<w, psi(x, a)>)`` with policy features ``psi``
  ``[..., X, K, d']`` that may differ from the reward's (a misspecified class).

**An I-projection.** Per prompt,
``E_pi r - eta KL(pi || pi0) = eta log Z_r(x) - eta KL(pi || pi_r)``
(the gap identity), so ``F(w) = eta sum_x q(x) [log Z_r(x) - KL(pi_w(.|x) || pi_r(.|x))]``: the
oracle projects the Gibbs policy onto the class in reverse KL, weighted by the prompts. If the
class contains ``pi_r`` on the prompts (``r(x, a) = eta <w*, psi(x, a)> + c(x)``) the maximiser is
``w*`` and the oracle returns the Gibbs policy.

**Method.** With ``c = psi - E_{pi_w} psi`` and the residual ``u = r - eta <w, psi>``, ``grad F(w)
= sum_x q(x) E_{pi_w}[c u]`` and the Hessian is ``-eta G(w) + sum_x q(x) E_{pi_w}[c c^T (u -
E_{pi_w} u)]``, where ``G(w) = sum_x q(x) Cov_{pi_w}(psi)`` is the Fisher matrix. The second term
vanishes at the optimum of a well-specified class (``u`` constant per prompt there). Each step is
Newton's where ``-Hessian`` is positive definite and otherwise Fisher scoring (the natural-gradient
step ``G^{-1} grad F / eta``, a regression of the residual reward on the features under the current
policy); in a well-specified class one such Fisher step from any start reaches the optimum. Armijo
backtracking on ``F`` makes every step an ascent; the iteration stops when ``||grad F|| <= tol``
(reward units) for every problem of the batch. ``F`` is not concave in ``w`` in general (a
reverse-KL projection onto an exponential family), so what is guaranteed is a stationary point; the
unit tests compare it with a brute-force search over small classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import broadcast_pair, check_eta, check_probs, check_rewards
from .estimation import CHUNK_BYTES, backtracking_step
from .gibbs import gibbs_policy, regularized_value

POLICY_CLASSES = ("tabular", "log_linear")

#: Default stopping tolerance of ``optimize_policy``: Euclidean norm of ``grad F`` (reward units
#: per unit of ``w``, with the prompt weights summing to one).
PO_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PolicyFit:
    """The oracle's answer.

    ``policy [..., X, K]`` on the prompts; ``w``: the parameter (``[..., d']`` for the
    log-linear class; for the tabular class the logits ``log pi - log pi0`` ``[..., X, K]``);
    ``objective [...]``: ``F`` at the answer; ``grad_norm [...]``: ``||grad F||`` there (0 for the
    closed form); ``iterations``: Newton or Fisher-scoring steps taken (the largest over the batch).
    """

    policy: torch.Tensor
    w: torch.Tensor
    objective: torch.Tensor
    grad_norm: torch.Tensor
    iterations: int


def context_weights_of(context_weights, shape: torch.Size) -> torch.Tensor:
    """Prompt weights ``q [..., X]`` normalised to sum to one (uniform when ``None``)."""
    if context_weights is None:
        return torch.full(shape, 1.0 / shape[-1], dtype=torch.float64)
    weights = torch.as_tensor(context_weights, dtype=torch.float64)
    try:
        weights = weights.expand(shape)
    except RuntimeError as exc:
        raise ValueError(f"context_weights (shape {tuple(weights.shape)}) must broadcast against "
                         f"the prompts {tuple(shape)}") from exc
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("context_weights must be finite and non-negative")
    total = weights.sum(-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError("context_weights must have a positive sum for every problem")
    return weights / total


def policy_objective(policy, *, rewards, ref_probs, eta, context_weights=None) -> torch.Tensor:
    """``F(pi) = sum_x q(x) [E_pi r - eta KL(pi || pi0)]`` for ``policy [..., X, K]``: ``[...]``."""
    per_prompt = regularized_value(policy, ref_probs, rewards, eta)
    return (context_weights_of(context_weights, per_prompt.shape) * per_prompt).sum(-1)


def log_linear_policy(ref_probs, *, policy_features, w) -> torch.Tensor:
    """``pi_w(a|x) ∝ pi0(a|x) exp(<w, psi(x, a)>)``: ``ref_probs [..., X, K]``, ``policy_features
    [..., X, K, d']``, ``w [..., d']`` (leading dimensions broadcast) -> ``[..., X, K]``."""
    ref_probs = check_probs(ref_probs, "ref_probs")
    psi = torch.as_tensor(policy_features, dtype=torch.float64)
    w = torch.as_tensor(w, dtype=torch.float64)
    shift = (psi * w.unsqueeze(-2).unsqueeze(-2)).sum(-1)
    return torch.softmax(torch.log(ref_probs) + shift, dim=-1)


def _check_problem(rewards, ref_probs, eta, policy_features):
    rewards = check_rewards(rewards)
    if rewards.ndim < 2:
        raise ValueError(f"rewards must have shape [..., X, K], got {tuple(rewards.shape)}")
    ref_probs = check_probs(ref_probs, "ref_probs")
    ref_probs, rewards = broadcast_pair(ref_probs, rewards, ("ref_probs", "rewards"))
    try:
        eta = float(eta)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"eta must be a single positive number, got {eta!r}") from exc
    check_eta(eta)
    if policy_features is None:
        return rewards, ref_probs, eta, None
    psi = torch.as_tensor(policy_features, dtype=torch.float64)
    if psi.ndim < 3 or psi.shape[-1] == 0:
        raise ValueError("policy_features must have shape [..., X, K, d'] with d' >= 1, got "
                         f"{tuple(psi.shape)}")
    if not torch.isfinite(psi).all():
        raise ValueError("policy_features must be finite")
    try:
        shape = torch.broadcast_shapes(psi.shape[:-1], rewards.shape)
    except RuntimeError as exc:
        raise ValueError(f"policy_features (shape {tuple(psi.shape)}) must match the rewards "
                         f"{tuple(rewards.shape)} in [..., X, K]") from exc
    return (rewards.expand(shape), ref_probs.expand(shape), eta,
            psi.expand(*shape, psi.shape[-1]))


def optimize_policy(rewards, *, ref_probs, eta: float, policy_class: str = "log_linear",
                    policy_features=None, context_weights=None, initial_w=None,
                    tol: float = PO_TOLERANCE, max_iter: int = 500) -> PolicyFit:
    """Maximise ``F(w)`` (module docstring) over a policy class, batched over leading dimensions.

    ``rewards [..., X, K]`` is the reward to optimise (a reward model's, or ``r*``) on the
    prompts, ``ref_probs`` ``pi0`` (broadcast against it), ``policy_class`` one of
    ``POLICY_CLASSES``; ``policy_features [..., X, K, d']`` (log-linear class only), optional
    ``context_weights [..., X]``; ``initial_w [..., d']`` starts the log-linear iteration
    (default 0, i.e. ``pi0``; restarts from elsewhere probe for other stationary points).
    Raises ``ValueError`` naming a bad argument and ``RuntimeError`` if the iteration does not
    reach ``tol`` in ``max_iter`` steps. The log-linear batch is solved in chunks whose features
    stay in cache, each problem until its own gradient is below ``tol``.
    """
    if policy_class not in POLICY_CLASSES:
        raise ValueError(f"policy_class must be one of {POLICY_CLASSES}, got {policy_class!r}")
    if (policy_features is None) != (policy_class == "tabular"):
        raise ValueError("policy_features is required by the log-linear class and unused by the "
                         "tabular one")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    rewards, ref_probs, eta, psi = _check_problem(rewards, ref_probs, eta, policy_features)
    weights = context_weights_of(context_weights, rewards.shape[:-1])
    if policy_class == "tabular":
        policy = torch.where((weights > 0).unsqueeze(-1), gibbs_policy(ref_probs, rewards, eta),
                             ref_probs)
        logits = torch.where(ref_probs > 0, torch.log(policy) - torch.log(ref_probs), 0.0)
        objective = policy_objective(policy, rewards=rewards, ref_probs=ref_probs, eta=eta,
                                     context_weights=weights)
        return PolicyFit(policy, logits, objective, torch.zeros_like(objective), 0)
    if initial_w is None:
        initial_w = torch.zeros(psi.shape[-1], dtype=torch.float64)
    initial_w = torch.as_tensor(initial_w, dtype=torch.float64)
    try:
        initial_w = initial_w.expand(*rewards.shape[:-2], psi.shape[-1])
    except RuntimeError as exc:
        raise ValueError(f"initial_w (shape {tuple(initial_w.shape)}) must broadcast against "
                         f"{(*rewards.shape[:-2], psi.shape[-1])}") from exc
    # Chunks of the flattened batch of about CHUNK_BYTES of features stay in cache.
    leading, (num_prompts, num_actions, dim) = rewards.shape[:-2], psi.shape[-3:]
    flat = [tensor.reshape(-1, *tensor.shape[len(leading):])
            for tensor in (rewards, ref_probs, psi, weights, initial_w)]
    chunk = max(1, CHUNK_BYTES // (num_prompts * num_actions * dim * 8))
    fits = [_newton(*(tensor[start:start + chunk] for tensor in flat), eta=eta, tol=tol,
                    max_iter=max_iter) for start in range(0, flat[0].shape[0], chunk)]
    return PolicyFit(torch.cat([f.policy for f in fits]).reshape(*leading, num_prompts,
                                                                  num_actions),
                     torch.cat([f.w for f in fits]).reshape(*leading, dim),
                     torch.cat([f.objective for f in fits]).reshape(leading),
                     torch.cat([f.grad_norm for f in fits]).reshape(leading),
                     max(f.iterations for f in fits))


class _LogLinearProblem:
    """A batch of log-linear problems flattened to ``[b, X*K]``, so that sums over (prompt,
    action) are batched matrix products; ``shift = <w, psi>`` is the logit change from ``pi0``."""

    def __init__(self, rewards, ref_probs, eta, psi, weights):
        num_prompts, num_actions, dim = psi.shape[-3:]
        self.shape = (-1, num_prompts, num_actions)
        self.rewards = rewards.reshape(self.shape)
        self.log_ref = torch.log(ref_probs.reshape(self.shape))
        self.support = self.log_ref > -torch.inf
        self.psi = psi.reshape(-1, num_prompts * num_actions, dim).contiguous()  # [b, X*K, d']
        self.weights = weights.reshape(-1, num_prompts)
        self.eta, self.dim = eta, dim

    def subset(self, index) -> _LogLinearProblem:
        """The problems ``index`` of the batch (a view of the same data)."""
        part = object.__new__(_LogLinearProblem)
        part.shape, part.eta, part.dim = self.shape, self.eta, self.dim
        for name in ("rewards", "log_ref", "support", "psi", "weights"):
            setattr(part, name, getattr(self, name)[index])
        return part

    def shift(self, w):
        return torch.bmm(self.psi, w.unsqueeze(-1)).squeeze(-1)

    def log_policy(self, shift):
        return torch.log_softmax(self.log_ref + shift.reshape(self.shape), -1)

    def negative_objective(self, shift, w=None):
        """``-F`` (the argument ``w`` is unused: the shift determines the policy)."""
        log_policy = self.log_policy(shift)
        log_ratio = torch.where(self.support, log_policy - self.log_ref, 0.0)
        per_prompt = (log_policy.exp() * (self.rewards - self.eta * log_ratio)).sum(-1)
        return -(self.weights * per_prompt).sum(-1)

    def derivatives(self, shift, *, curvature: bool = True):
        """``grad F``, and (if ``curvature``) the Fisher matrix ``eta G`` and ``-Hessian of F``
        (module docstring), all batched."""
        batch = shift.shape[0]
        probs = self.log_policy(shift).exp()
        psi = self.psi.view(*probs.shape, self.dim)
        centred = (psi - (probs.unsqueeze(-1) * psi).sum(-2, keepdim=True)).reshape(
            batch, -1, self.dim)  # c = psi - E_pi psi
        mass = (self.weights.unsqueeze(-1) * probs).reshape(batch, 1, -1)  # q(x) pi(a|x)
        residual = self.rewards - self.eta * shift.view(probs.shape)  # u, up to a constant
        gradient = torch.bmm(mass * residual.reshape(batch, 1, -1), centred).squeeze(1)
        if not curvature:
            return gradient, None, None
        weighted = centred * mass.transpose(1, 2)  # q pi c
        fisher = self.eta * torch.bmm(weighted.transpose(1, 2), centred)
        excess = residual - (probs * residual).sum(-1, keepdim=True)  # u - E_pi u
        third = torch.bmm(weighted.transpose(1, 2), centred * excess.reshape(batch, -1, 1))
        return gradient, fisher, fisher - third


def objective_derivatives(w, *, rewards, ref_probs, eta: float, policy_features,
                          context_weights=None):
    """``(F(w), grad F(w), Hessian of F(w))`` for the log-linear class at ``w [..., d']``
    (module docstring): shapes ``[...]``, ``[..., d']``, ``[..., d', d']``."""
    rewards, ref_probs, eta, psi = _check_problem(rewards, ref_probs, eta, policy_features)
    weights = context_weights_of(context_weights, rewards.shape[:-1])
    problem = _LogLinearProblem(rewards, ref_probs, eta, psi, weights)
    leading, dim = rewards.shape[:-2], psi.shape[-1]
    w = torch.as_tensor(w, dtype=torch.float64).expand(*leading, dim).reshape(-1, dim)
    shift = problem.shift(w)
    gradient, _, minus_hessian = problem.derivatives(shift)
    return (-problem.negative_objective(shift).reshape(leading), gradient.reshape(*leading, dim),
            -minus_hessian.reshape(*leading, dim, dim))


def _newton(rewards, ref_probs, psi, weights, initial_w, *, eta, tol, max_iter) -> PolicyFit:
    """Damped Newton / Fisher scoring on the problems not yet converged (a problem leaves the
    active set once ``||grad F|| <= tol``, so easy seeds do not wait for hard ones)."""
    num_prompts, num_actions, dim = psi.shape[-3:]
    problem = _LogLinearProblem(rewards, ref_probs, eta, psi, weights)
    eye = torch.eye(dim, dtype=torch.float64)
    w = initial_w.reshape(-1, dim).clone()
    shift = problem.shift(w)
    objective = problem.negative_objective(shift)
    grad_norm = torch.full(objective.shape, torch.inf, dtype=torch.float64)
    active = torch.arange(len(w))
    for iteration in range(max_iter + 1):
        part = problem.subset(active)
        converging = iteration < max_iter
        gradient, fisher, hessian = part.derivatives(shift[active], curvature=converging)
        grad_norm[active] = gradient.norm(dim=-1)
        keep = grad_norm[active] > tol
        if not bool(keep.any()) or not converging:
            break
        active, gradient, fisher, hessian = (active[keep], gradient[keep], fisher[keep],
                                             hessian[keep])
        part = part.subset(keep)
        damping = (1e-12 * (fisher.diagonal(dim1=-2, dim2=-1).sum(-1) / dim + 1.0))[:, None, None]
        chol, info = torch.linalg.cholesky_ex(hessian + damping * eye)
        newton = (info == 0)[:, None, None]  # Newton where -Hessian is positive definite
        chol = torch.where(newton, chol, torch.linalg.cholesky(fisher + damping * eye))
        step = -torch.cholesky_solve(gradient.unsqueeze(-1), chol).squeeze(-1)  # a step on -F
        decrement = -(gradient * step).sum(-1)
        w[active], shift[active], objective[active] = backtracking_step(
            part.negative_objective, w[active], step, shift[active], part.shift(step),
            objective[active], decrement)
    if not bool((grad_norm <= tol).all()):
        raise RuntimeError(f"optimize_policy did not converge in {max_iter} steps: "
                           f"largest gradient norm {grad_norm.max().item():.3g} > tol = {tol:.3g}")
    return PolicyFit(problem.log_policy(shift).exp(), w, -objective, grad_norm, iteration)
