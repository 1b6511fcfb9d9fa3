"""DPO as the Gibbs oracle applied to the Bradley-Terry MLE, RSO, and iterative DPO (Xiong et
al., arXiv:2312.11456, section 5 "Implementations of GSHF"; notebook 04).

- ``dpo_loss``: the per-pair DPO loss on log-probabilities, with its variants (sigmoid with
  conservative label smoothing as in cDPO, IPO, hinge as in SLiC/RSO).
- ``train_dpo_linear`` / ``train_dpo_tabular``: minimise the regularised DPO objective over the
  linear-softmax class ``pi_w(a|x) ∝ pi_ref(a|x) exp(<w, phi(x,a)>)`` (tabular: ``phi`` one-hot,
  i.e. one free logit per (context, action)), batched over leading dimensions (seeds), by damped
  Newton steps whose derivatives come from torch autograd, to a stated gradient tolerance.
- ``iterative_dpo``: the practical online GSHF loop: DPO on all data so far, sample ``n``
  responses per prompt from the current policy, pair them by a named selector, label by the
  Bradley-Terry oracle, append. The reference is ``"fixed"`` (pi0) or ``"previous"`` (the
  previous iterate); the ranking is the policy's implicit reward or a reward model.
- ``sample_ranked_pairs``, ``best_of_n_probs``, ``reward_model``: the practical pairing (best of
  ``n`` against worst of ``n`` under a reward model fit on the labels so far), its exact law with
  ties, and the reward model (notebook 09).

Why DPO is MLE + Gibbs (the derivation notebook 04 spells out): for ``pi_w`` the DPO margin is
``h = log pi_w(a_w)/pi_ref(a_w) - log pi_w(a_l)/pi_ref(a_l) = <w, phi(a_w) - phi(a_l)>`` (the
normaliser cancels), so ``-log sigmoid(eta h)`` is the Bradley-Terry negative log-likelihood of
``theta = eta w``, and the minimiser of the DPO objective is the Gibbs policy of the MLE reward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._validation import check_generator, check_positive_int, check_positive_number, check_probs
from .estimation import backtracking_step, bootstrap_radius, fit_bt_mle, sigma_d
from .sampling import rso_select, sample_categorical

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
#: Loss types the Newton trainer accepts (twice differentiable in the margin).
SMOOTH_LOSS_TYPES = ("sigmoid", "ipo")
SELECTORS = ("random", "max_random", "max_min")
REFERENCES = ("fixed", "previous")
#: What ranks the responses of iterative DPO: the policy's implicit reward or a reward model.
RANKINGS = ("implicit", "reward_model")

#: Default stopping tolerance of the DPO trainers: Euclidean norm of the gradient of the
#: objective with respect to ``theta = eta w`` (reward units), as for ``fit_bt_mle``. By strong
#: convexity (modulus ``reg``) the iterate is within ``tol / reg`` of the exact minimiser.
DPO_TOLERANCE = 1e-9


def _dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                **others):
    """``h = (log pi(a_w) - log pi_ref(a_w)) - (log pi(a_l) - log pi_ref(a_l))``, the four inputs
    (and any ``others``, by name) checked as float tensors without NaN that broadcast together.
    Returns ``h``, or, with ``others``, the tuple ``(h, *others)`` broadcast to one shape."""
    tensors = []
    named = {"policy_chosen_logps": policy_chosen_logps,
             "policy_rejected_logps": policy_rejected_logps,
             "ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps,
             **others}
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"{name} must be a tensor of numbers") from exc
        if not value.is_floating_point():
            value = value.to(torch.float64)
        if torch.isnan(value).any():
            raise ValueError(f"{name} must not contain NaN")
        tensors.append(value)
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError as exc:
        raise ValueError(f"the tensors {list(named)} must broadcast together: shapes "
                         f"{[tuple(t.shape) for t in tensors]}") from exc
    pc, pr, rc, rr = tensors[:4]
    margin = (pc - rc) - (pr - rr)
    if not others:
        return margin
    return margin, *(t.expand(shape) for t in tensors[4:])


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             eta, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al. 2023, eq. 7; variants as in the reference
    implementation eric-mitchell/direct-preference-optimization).

    ``h = (log pi(a_w) - log pi_ref(a_w)) - (log pi(a_l) - log pi_ref(a_l))`` and

    - ``"sigmoid"``: ``(1 - ls) (-log sigmoid(eta h)) + ls (-log sigmoid(-eta h))``; with
      ``label_smoothing = ls = 0`` this is DPO, otherwise conservative DPO (labels flipped with
      probability ``ls``);
    - ``"ipo"``: ``(h - 1/(2 eta))^2`` (Azar et al. 2023; ``eta`` is their ``tau``);
    - ``"hinge"``: ``max(0, 1 - eta h)`` (SLiC / RSO).

    Inputs broadcast together; the result has their broadcast shape (no reduction). ``eta`` is
    the KL coefficient (DPO's ``beta``).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    try:
        label_smoothing = float(label_smoothing)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"label_smoothing must be a number in [0, 0.5), got {label_smoothing!r}") \
            from exc
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies only to loss_type='sigmoid', got {loss_type!r}")
    eta = check_positive_number(eta, "eta")
    margin = _dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                         ref_rejected_logps)
    if loss_type == "sigmoid":
        loss = F.softplus(-eta * margin)  # -log sigmoid(eta h), stable
        if label_smoothing:
            loss = (1 - label_smoothing) * loss + label_smoothing * F.softplus(eta * margin)
        return loss
    if loss_type == "ipo":
        return (margin - 1 / (2 * eta)) ** 2
    return torch.relu(1 - eta * margin)


def pessimistic_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                         ref_rejected_logps, *, chosen_uncertainty, rejected_uncertainty, eta,
                         beta) -> torch.Tensor:
    """Per-pair DPO loss of pointwise pessimism (section 3 of arXiv:2312.11456 written as a loss;
    notebook 08):

    ``-log sigmoid(eta h + beta (b_w - b_l))``, with ``h`` the DPO margin of ``dpo_loss`` and
    ``b_w``, ``b_l`` the uncertainties ``||phi(x, a) - nu(x)||_{Sigma^{-1}}`` of the chosen and
    rejected responses (``offline.action_uncertainty``).

    Why: the argument is the Bradley-Terry margin of the reward ``eta log(pi/pi_ref) + beta b``,
    so at the minimum (over a class rich enough) that reward is the MLE ``r_hat``, and the implicit
    reward ``eta log(pi/pi_ref)`` is the pessimistic ``r_hat - beta b``: ``pi`` is the Gibbs policy
    of the pointwise-pessimistic reward. ``beta = 0`` gives the sigmoid ``dpo_loss``. Inputs
    broadcast together (no reduction); the uncertainties are finite and non-negative.
    """
    try:
        beta = float(beta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}") from exc
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and non-negative, got {beta!r}")
    eta = check_positive_number(eta, "eta")
    margin, chosen_uncertainty, rejected_uncertainty = _dpo_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_uncertainty=chosen_uncertainty, rejected_uncertainty=rejected_uncertainty)
    for name, value in [("chosen_uncertainty", chosen_uncertainty),
                        ("rejected_uncertainty", rejected_uncertainty)]:
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"{name} must be finite and non-negative")
    return F.softplus(-(eta * margin + beta * (chosen_uncertainty - rejected_uncertainty)))


# --------------------------------------------------------------------------------------------
# Training: damped Newton on the linear-softmax class, derivatives by autograd.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPOFit:
    """The result of a DPO training run.

    ``w [..., d]``: the parameter of ``pi_w ∝ pi_ref exp(<w, phi>)``; ``theta = eta w`` the implicit
    reward parameter; ``grad_norm [...]``: final gradient norm of the objective in ``theta`` units;
    ``iterations``: Newton steps taken (the largest over the batch).
    """

    w: torch.Tensor
    theta: torch.Tensor
    grad_norm: torch.Tensor
    iterations: int


def _margin_derivatives(margins, eta, loss_type, label_smoothing):
    """Per-pair loss, first and second derivative in the margin ``h``, by autograd.

    The loss of pair ``i`` depends on ``h_i`` only, so the gradient of the sum is the vector of
    first derivatives and the gradient of *its* sum the vector of second derivatives.
    """
    with torch.enable_grad():
        h = margins.detach().requires_grad_(True)
        zeros = torch.zeros_like(h)
        loss = dpo_loss(h, zeros, zeros, zeros, eta, loss_type, label_smoothing)
        (first,) = torch.autograd.grad(loss.sum(), h, create_graph=True)
        (second,) = torch.autograd.grad(first.sum(), h)
    return loss.detach(), first.detach(), second.detach()


def _check_pairs(chosen_minus_rejected, weights):
    z = torch.as_tensor(chosen_minus_rejected, dtype=torch.float64)
    if z.ndim < 2 or z.shape[-2] == 0 or z.shape[-1] == 0:
        raise ValueError("chosen_minus_rejected must have shape [..., n, d] with n, d >= 1, got "
                         f"{tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("chosen_minus_rejected must be finite")
    if weights is None:
        weights = torch.ones(z.shape[:-1], dtype=torch.float64)
    else:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        try:
            weights = weights.expand(z.shape[:-1])
        except RuntimeError as exc:
            raise ValueError(f"weights (shape {tuple(weights.shape)}) must broadcast against "
                             f"{tuple(z.shape[:-1])}") from exc
        if (weights < 0).any() or not torch.isfinite(weights).all():
            raise ValueError("weights must be finite and non-negative")
    return z, weights


def dpo_objective_linear(w, chosen_minus_rejected, *, eta: float, reg: float,
                         loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                         weights=None) -> torch.Tensor:
    """``sum_i weight_i dpo_loss(h_i) + reg/2 ||eta w||^2`` with ``h_i = <w, z_i>`` (batched).

    ``z_i = phi(x_i, chosen_i) - phi(x_i, rejected_i)``: the DPO margin of ``pi_w`` against its
    reference, since the normaliser of ``pi_w`` cancels in the difference.
    """
    z, weights = _check_pairs(chosen_minus_rejected, weights)
    margins = torch.einsum("...nd,...d->...n", z, w)
    zeros = torch.zeros_like(margins)
    loss = dpo_loss(margins, zeros, zeros, zeros, eta, loss_type, label_smoothing)
    return (weights * loss).sum(-1) + 0.5 * reg * eta**2 * (w * w).sum(-1)


def train_dpo_linear(chosen_minus_rejected, *, eta: float, reg: float,
                     loss_type: str = "sigmoid", label_smoothing: float = 0.0, weights=None,
                     tol: float = DPO_TOLERANCE, max_iter: int = 100, margin_offsets=None,
                     ridge_center=None) -> DPOFit:
    """Minimise the regularised DPO objective over the linear-softmax class (batched).

    Objective: ``L(w) = sum_i weight_i l(<w, z_i>) + reg/2 ||eta w||^2`` with ``l`` the per-pair
    ``dpo_loss`` and ``z_i = phi(chosen) - phi(rejected)`` of shape ``[..., n, d]``. In
    ``theta = eta w`` and for the sigmoid loss without smoothing this is exactly the ridge BT
    objective of ``fit_bt_mle``, so the minimiser is ``theta_hat / eta``.

    Method: damped Newton from ``w = 0``; the first and second derivatives of ``l`` in the margin
    come from torch autograd; gradient ``sum l'(h_i) z_i + reg eta^2 w`` and Hessian
    ``sum l''(h_i) z_i z_i^T + reg eta^2 I`` (positive definite: ``l`` is convex); Armijo
    backtracking. Converged when the gradient in ``theta`` units, ``||grad_w L|| / eta``, is at
    most ``tol`` for every problem of the batch. Only smooth losses (``sigmoid``, ``ipo``).

    ``margin_offsets [..., n]`` (default 0) are added to the margins, ``h_i = <w, z_i> + o_i``,
    and ``ridge_center [..., d]`` (default 0, in ``theta`` units) moves the ridge to
    ``reg/2 ||eta w - c||^2``: with ``o_i = (u(chosen_i) - u(rejected_i)) / eta`` and
    ``c = -u`` this is the pessimistic DPO objective with the ridge on the total reward
    ``eta w + u`` (``train_dpo_tabular``'s ``bonus``).
    """
    if loss_type not in SMOOTH_LOSS_TYPES:
        if loss_type in LOSS_TYPES:
            raise ValueError(f"loss_type={loss_type!r} is not twice differentiable; the Newton "
                             f"trainer accepts {SMOOTH_LOSS_TYPES}")
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    eta = check_positive_number(eta, "eta")
    reg = float(reg)
    if not (reg > 0 and math.isfinite(reg)):
        raise ValueError(f"reg must be positive and finite, got {reg!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    z, weights = _check_pairs(chosen_minus_rejected, weights)
    leading, (num_pairs, dim) = z.shape[:-2], z.shape[-2:]
    offsets = _broadcast_finite(margin_offsets, z.shape[:-1], "margin_offsets")
    center = _broadcast_finite(ridge_center, (*leading, dim), "ridge_center") / eta
    z = z.reshape(-1, num_pairs, dim)
    weights = weights.reshape(-1, num_pairs)
    batch = z.shape[0]
    offsets, center = offsets.reshape(batch, num_pairs), center.reshape(batch, dim)
    z_t = z.transpose(1, 2).contiguous()  # [b, d, n]
    penalty = reg * eta**2
    eye = torch.eye(dim, dtype=torch.float64)
    w = torch.zeros(batch, dim, dtype=torch.float64)
    margins = offsets.clone()

    def objective_at(m, w_):
        zeros = torch.zeros_like(m)
        loss = dpo_loss(m, zeros, zeros, zeros, eta, loss_type, label_smoothing)
        return (weights * loss).sum(-1) + 0.5 * penalty * ((w_ - center) ** 2).sum(-1)

    objective = objective_at(margins, w)
    for iteration in range(max_iter + 1):
        _, first, second = _margin_derivatives(margins, eta, loss_type, label_smoothing)
        gradient = (torch.bmm((weights * first).unsqueeze(1), z).squeeze(1)
                    + penalty * (w - center))
        grad_norm = gradient.norm(dim=-1) / eta
        if bool((grad_norm <= tol).all()) or iteration == max_iter:
            break
        hessian = torch.bmm(z_t * (weights * second).unsqueeze(1), z) + penalty * eye
        step = torch.linalg.solve(hessian, gradient.unsqueeze(-1)).squeeze(-1)
        step_margins = torch.bmm(step.unsqueeze(1), z_t).squeeze(1)
        decrement = (gradient * step).sum(-1)
        w, margins, objective = backtracking_step(
            objective_at, w, step, margins, step_margins, objective, decrement)
    if not bool((grad_norm <= tol).all()):
        raise RuntimeError(f"DPO training did not converge in {max_iter} Newton steps: largest "
                           f"gradient norm {grad_norm.max().item():.3g} > tol = {tol:.3g}")
    w = w.reshape(*leading, dim)
    return DPOFit(w=w, theta=eta * w, grad_norm=grad_norm.reshape(leading), iterations=iteration)


def _broadcast_finite(value, shape, name: str) -> torch.Tensor:
    """``value`` (``None``: zeros) as a finite float64 tensor of ``shape``."""
    if value is None:
        return torch.zeros(shape, dtype=torch.float64)
    value = torch.as_tensor(value, dtype=torch.float64)
    try:
        value = value.expand(shape)
    except RuntimeError as exc:
        raise ValueError(f"{name} (shape {tuple(value.shape)}) must broadcast against "
                         f"{tuple(shape)}") from exc
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite")
    return value


def one_hot_features(num_contexts: int, num_actions: int) -> torch.Tensor:
    """Tabular features ``phi(x, a) = e_{(x, a)}``: shape ``[X, K, X*K]``. With them
    ``pi_w ∝ pi_ref exp(<w, phi>)`` is the tabular softmax with logits ``log pi_ref + w[x, a]``."""
    check_positive_int(num_contexts, "num_contexts")
    check_positive_int(num_actions, "num_actions")
    return torch.eye(num_contexts * num_actions, dtype=torch.float64).reshape(
        num_contexts, num_actions, num_contexts * num_actions)


def pair_feature_diffs(features, *, contexts, first, second) -> torch.Tensor:
    """``phi(x_i, first_i) - phi(x_i, second_i)``: ``features [X, K, d]``, indices ``[..., n]``."""
    features = torch.as_tensor(features, dtype=torch.float64)
    return features[contexts, first] - features[contexts, second]


def chosen_rejected(*, first, second, labels):
    """Chosen and rejected actions of labelled pairs (``labels = 1``: ``first`` preferred)."""
    labels = torch.as_tensor(labels)
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must be 0 or 1")
    prefer_first = labels == 1
    return torch.where(prefer_first, first, second), torch.where(prefer_first, second, first)


def linear_policy(ref_probs, *, features, w) -> torch.Tensor:
    """``pi_w(a|x) ∝ pi_ref(a|x) exp(<w, phi(x,a)>)``: ``ref_probs [..., X, K]``,
    ``features [X, K, d]``, ``w [..., d]`` -> ``[..., X, K]`` (log space)."""
    ref_probs = check_probs(ref_probs, "ref_probs")
    logits = torch.log(ref_probs) + torch.einsum("xkd,...d->...xk", features, w)
    return torch.softmax(logits, dim=-1)


def train_dpo_tabular(ref_probs, *, contexts, chosen, rejected, eta: float, reg: float,
                      loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                      tol: float = DPO_TOLERANCE, max_iter: int = 100, bonus=None):
    """DPO over the tabular softmax class: one free logit per (context, action) (batched).

    The policy is ``softmax(log pi_ref + w)`` with ``w [..., X, K]``; this is the linear class with
    one-hot features, and the ridge ``reg/2 ||eta w||^2`` makes the minimiser unique. Returns
    ``(policy [..., X, K], fit)`` with ``fit.w`` reshaped to ``[..., X, K]``. ``ref_probs`` is
    ``[X, K]`` (shared) and the pair indices ``[..., n]``.

    ``bonus = u [..., X, K]`` (e.g. ``beta ||phi - nu||_{Sigma^{-1}}``) trains the pessimistic
    DPO loss (``pessimistic_dpo_loss``, sigmoid only) with the ridge on the total reward,
    ``reg/2 ||eta w + u||^2``. In ``r = eta w + u`` the objective is then exactly the tabular
    ridge Bradley-Terry objective of ``fit_bt_mle`` (one-hot features), so the minimiser is the
    Gibbs policy of ``r_hat - u``, the pessimistic reward of the tabular ridge MLE ``r_hat``.
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    num_contexts, num_actions = ref_probs.shape[-2:]
    features = one_hot_features(num_contexts, num_actions)
    z = pair_feature_diffs(features, contexts=contexts, first=chosen, second=rejected)
    offsets = center = None
    if bonus is not None:
        if loss_type != "sigmoid" or label_smoothing:
            raise ValueError("bonus (pessimistic DPO) needs loss_type='sigmoid' without "
                             "label_smoothing")
        bonus = torch.as_tensor(bonus, dtype=torch.float64)
        if bonus.shape[-2:] != (num_contexts, num_actions) or not torch.isfinite(bonus).all():
            raise ValueError(f"bonus must be finite with shape [..., {num_contexts}, "
                             f"{num_actions}], got {tuple(bonus.shape)}")
        flat = bonus.reshape(*bonus.shape[:-2], num_contexts * num_actions)
        offsets = torch.einsum("...nd,...d->...n", z, flat) / check_positive_number(eta, "eta")
        center = -flat
    fit = train_dpo_linear(z, eta=eta, reg=reg, loss_type=loss_type,
                           label_smoothing=label_smoothing, tol=tol, max_iter=max_iter,
                           margin_offsets=offsets, ridge_center=center)
    w = fit.w.reshape(*fit.w.shape[:-1], num_contexts, num_actions)
    policy = torch.softmax(torch.log(ref_probs) + w, dim=-1)
    return policy, DPOFit(w=w, theta=eta * w, grad_norm=fit.grad_norm, iterations=fit.iterations)


def tabular_bandit(bandit):
    """The tabular twin of a ``LinearBTBandit``: one-hot features ``[X, K, X*K]`` and
    ``theta*`` the table of true rewards, so rewards, ``pi0``, ``d0`` and ``eta`` are the
    bandit's, while a learner in it has one free reward (or logit) per (context, action)."""
    from .instance import LinearBTBandit

    features = one_hot_features(bandit.num_contexts, bandit.num_actions)
    return LinearBTBandit(features, bandit.rewards().reshape(-1), bandit.ref_probs,
                          bandit.context_probs, bandit.eta)


@dataclass(frozen=True)
class PessimisticDPO:
    """Offline DPO with and without pessimism on the same data (``tabular_pessimistic_dpo``).

    ``plain``, ``pessimistic``: the DPO and pessimistic-DPO policies ``[..., X, K]``;
    ``gibbs``: the Gibbs policy of the pointwise-pessimistic reward of the tabular ridge MLE,
    computed without DPO (``offline.pointwise_pessimistic_policy``), which ``pessimistic`` equals
    up to the solvers' tolerance; ``radius [...]``: the bootstrap radius used.
    """

    plain: torch.Tensor
    pessimistic: torch.Tensor
    gibbs: torch.Tensor
    radius: torch.Tensor


def tabular_pessimistic_dpo(tabular, data, *, reg: float, delta: float, num_bootstrap: int,
                            generator: torch.Generator,
                            tol: float = DPO_TOLERANCE) -> PessimisticDPO:
    """Plain and pessimistic offline DPO over the tabular class on ``data`` (``Preferences``,
    batch ``[...]``), ``tabular`` a bandit with one-hot features (``tabular_bandit``).

    The radius is the parametric bootstrap of the tabular ridge MLE (``estimation.
    bootstrap_radius``: data only, no ``theta*``), and the bonus ``u = beta ||e_{x,a} -
    nu(x)||_{Sigma_D^{-1}}`` uses the tabular design ``Sigma_D`` of the same data. The DPO fits
    share ``reg``; the pessimistic one puts its ridge on the total reward ``eta w + u``
    (``train_dpo_tabular``), which makes it the Gibbs policy of ``r_hat - u``.
    """
    from .offline import action_uncertainty, pointwise_pessimistic_policy

    diffs = _comparison_diffs(tabular.features, data)
    theta_hat = fit_bt_mle(diffs, data.labels, reg)
    sigma = sigma_d(diffs, reg)
    radius = bootstrap_radius(diffs, theta_hat=theta_hat, reg=reg, delta=delta,
                              num_bootstrap=num_bootstrap, generator=generator)
    chosen, rejected = chosen_rejected(first=data.first_actions, second=data.second_actions,
                                       labels=data.labels)
    common = dict(contexts=data.contexts, chosen=chosen, rejected=rejected, eta=tabular.eta,
                  reg=reg, tol=tol)
    plain, _ = train_dpo_tabular(tabular.ref_probs, **common)
    bonus = radius[..., None, None] * action_uncertainty(tabular, sigma)
    pessimistic, _ = train_dpo_tabular(tabular.ref_probs, **common, bonus=bonus)
    gibbs = pointwise_pessimistic_policy(tabular, theta_hat=theta_hat, sigma=sigma, beta=radius)
    return PessimisticDPO(plain, pessimistic, gibbs, radius)


# --------------------------------------------------------------------------------------------
# Iterative DPO.
# --------------------------------------------------------------------------------------------


def _features(bandit, features) -> torch.Tensor:
    """The bandit's features ``[X, K, d]`` unless others (e.g. ``one_hot_features``) are given."""
    if features is None:
        return bandit.features
    features = torch.as_tensor(features, dtype=torch.float64)
    if features.shape[:2] != (bandit.num_contexts, bandit.num_actions) or features.ndim != 3:
        raise ValueError(f"features must have shape [{bandit.num_contexts}, "
                         f"{bandit.num_actions}, d], got {tuple(features.shape)}")
    return features


def _comparison_diffs(features, data) -> torch.Tensor:
    """``phi(x, a1) - phi(x, a2)`` of labelled comparisons (``Preferences``), in ``features``."""
    return pair_feature_diffs(features, contexts=data.contexts, first=data.first_actions,
                              second=data.second_actions)


def _dpo_pairs(features, data) -> torch.Tensor:
    """``phi(x, chosen) - phi(x, rejected)`` of labelled comparisons: the DPO margins' features."""
    chosen, rejected = chosen_rejected(first=data.first_actions, second=data.second_actions,
                                       labels=data.labels)
    return pair_feature_diffs(features, contexts=data.contexts, first=chosen, second=rejected)


def select_pairs(scores, selector: str, generator: torch.Generator):
    """Pick two of ``n`` responses per prompt by their ``scores [..., n]`` (a reward model).

    ``"random"``: two distinct responses at random; ``"max_random"``: the best against a random
    other one; ``"max_min"``: the best against the worst (best-of-n vs worst-of-n). Returns the
    positions ``(first, second)`` of shape ``[...]``; ties are broken by the lowest position (so
    when all ``n`` scores tie, ``"max_min"`` returns one position twice; ``sample_ranked_pairs``
    pairs two draws instead). The law of the selected responses is ``best_of_n_probs``.
    """
    if selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
    check_generator(generator)
    scores = torch.as_tensor(scores, dtype=torch.float64)
    num = scores.shape[-1]
    if num < 2:
        raise ValueError(f"scores must hold at least 2 responses per prompt, got {num}")
    leading = scores.shape[:-1]
    best = scores.argmax(-1)
    if selector == "max_min":
        return best, scores.argmin(-1)
    # A uniformly random other position: offset in 1..n-1 from the anchor, modulo n.
    offset = torch.randint(1, num, leading, generator=generator)
    if selector == "max_random":
        return best, (best + offset) % num
    first = torch.randint(0, num, leading, generator=generator)
    return first, (first + offset) % num


def sample_ranked_pairs(policy, scores, *, contexts, responses_per_prompt: int, selector: str,
                        generator: torch.Generator):
    """The practical pairing of online GSHF (the paper's section 5): for each prompt ``x_i`` of
    ``contexts [..., m]``, draw ``n = responses_per_prompt`` responses i.i.d. from
    ``policy [..., X, K]`` at ``x_i``, score them by the table ``scores [..., X, K]`` (a reward
    model; never the oracle's reward in practice) and keep two by ``select_pairs``. Returns the
    actions ``(first, second)``, each ``[..., m]`` (with ``"max_min"``: best-of-n, worst-of-n).

    Ties: the best and the worst are the first positions with the largest and the smallest score;
    where all ``n`` scores tie (a reward model without data), they would be one response, so the
    pair is then the first and the last draw (two independent draws, as a random pair): never a
    response against itself by position. Neither rule changes the law of the kept best or worst
    response (``best_of_n_probs``): within a tied level every draw is equally likely to be kept.
    """
    check_positive_int(responses_per_prompt, "responses_per_prompt")
    if responses_per_prompt < 2:
        raise ValueError("responses_per_prompt must be at least 2 to form a pair")
    policy = check_probs(policy, "policy")
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.shape[-2:] != policy.shape[-2:]:
        raise ValueError(f"scores must have the [X, K] = {tuple(policy.shape[-2:])} of policy, "
                         f"got {tuple(scores.shape)}")
    contexts = torch.as_tensor(contexts)
    leading = contexts.shape[:-1]
    num_actions = policy.shape[-1]
    index = contexts.unsqueeze(-1).expand(*contexts.shape, num_actions)
    rows = torch.gather(policy.expand(*leading, *policy.shape[-2:]), -2, index)
    responses = sample_categorical(rows, responses_per_prompt, generator)
    score_rows = torch.gather(scores.expand(*leading, *scores.shape[-2:]), -2, index)
    first_pos, second_pos = select_pairs(torch.gather(score_rows, -1, responses), selector,
                                         generator)
    second_pos = torch.where(second_pos == first_pos, responses_per_prompt - 1, second_pos)
    first = torch.gather(responses, -1, first_pos.unsqueeze(-1)).squeeze(-1)
    return first, torch.gather(responses, -1, second_pos.unsqueeze(-1)).squeeze(-1)


def best_of_n_probs(probs, scores, num_responses: int, *, worst: bool = False) -> torch.Tensor:
    """Exact law of the response ``"max_min"`` keeps as best (``worst=False``) or worst of
    ``n = num_responses`` i.i.d. draws from ``probs [..., K]`` ranked by ``scores [..., K]``.

    With ``F(a) = P(score < score(a))`` and ``G(a) = P(score <= score(a))`` under ``probs``, the
    best score lies at ``a``'s level with probability ``G^n - F^n``; given that, the kept draw
    (the first one at that level) is any draw at the level, so ``a`` with probability
    ``probs(a) / (G - F)`` (ties split in proportion to ``probs``). Without ties this is
    ``G(a)^n - F(a)^n``. The worst is the best of ``-scores``. Actions with ``probs = 0`` get 0.
    """
    check_positive_int(num_responses, "num_responses")
    probs = check_probs(probs, "probs")
    scores = torch.as_tensor(scores, dtype=torch.float64)
    try:
        probs, scores = torch.broadcast_tensors(probs, scores)
    except RuntimeError as exc:
        raise ValueError(f"scores (shape {tuple(scores.shape)}) must broadcast against probs "
                         f"(shape {tuple(probs.shape)})") from exc
    if torch.isnan(scores).any():
        raise ValueError("scores must not contain NaN")
    if worst:
        scores = -scores
    below = scores.unsqueeze(-1) < scores.unsqueeze(-2)  # [..., b, a]: score(b) < score(a)
    level = scores.unsqueeze(-1) == scores.unsqueeze(-2)
    lower = (probs.unsqueeze(-1) * below).sum(-2)  # F(a)
    level_mass = (probs.unsqueeze(-1) * level).sum(-2)  # G(a) - F(a)
    # G^n - F^n, clamped at 0 against round-off (G >= F exactly, as level_mass >= 0).
    top = ((lower + level_mass).clamp_max(1.0) ** num_responses
           - lower**num_responses).clamp_min(0.0)
    return torch.where(probs > 0, probs * top / level_mass.clamp_min(1e-300), 0.0)


def best_of_n_kl_bound(num_responses) -> torch.Tensor:
    """``log n - (n - 1)/n``: the KL of the best-of-n law to its base policy when the scores
    are continuous, and an upper bound on it for a discrete base policy, ties or not (Beirami et
    al. 2024, arXiv:2401.01879); approached as the largest probability goes to 0."""
    n = torch.as_tensor(num_responses, dtype=torch.float64)
    if (n < 1).any() or (n != n.round()).any():
        raise ValueError(f"num_responses must hold positive integers, got {num_responses!r}")
    return torch.log(n) - (n - 1) / n


def reward_model(features, data, *, reg: float) -> torch.Tensor:
    """The reward model practitioners fit: the ridge Bradley-Terry MLE (``fit_bt_mle``) on the
    labelled comparisons ``data`` (``Preferences``, batch ``[...]``) in ``features [X, K, d]``;
    returns its reward table ``<theta_hat, phi(x, a)>``, ``[..., X, K]`` (no oracle involved)."""
    features = torch.as_tensor(features, dtype=torch.float64)
    theta = fit_bt_mle(_comparison_diffs(features, data), data.labels, reg)
    return torch.einsum("xkd,...d->...xk", features, theta)


@dataclass(frozen=True)
class IterativeDPOResult:
    """Per-iteration record of ``iterative_dpo``.

    ``policies [T+1, ..., X, K]``: the policy after DPO on the data of iterations ``< t``
    (``t = 0``: the offline data only); ``data``: all comparisons collected (offline first);
    ``num_pairs [T+1]``: comparisons used for each policy.
    """

    policies: torch.Tensor
    data: object
    num_pairs: list


def iterative_dpo(bandit, offline, *, num_iterations: int, pairs_per_iteration: int,
                  responses_per_prompt: int, selector: str, reg: float,
                  generator: torch.Generator, reference: str = "fixed", features=None,
                  ranking: str = "implicit", tol: float = DPO_TOLERANCE) -> IterativeDPOResult:
    """Iterative (online) DPO, the practical form of online GSHF (the paper's section 5).

    ``bandit``: a ``LinearBTBandit`` (its ``eta`` is DPO's coefficient, its ``theta*`` labels the
    pairs); ``offline``: ``Preferences`` with batch shape ``[S]`` (seeds) to start from. For
    ``t = 1..num_iterations``:

    1. DPO (sigmoid loss, ridge ``reg`` on ``theta = eta w``) on all comparisons so far, over the
       class ``pi_w ∝ pi_ref exp(<w, phi>)``; ``pi_ref = pi0`` (``reference="fixed"``) or the
       previous iterate (``"previous"``; the first fit is on ``pi0``).
    2. For ``pairs_per_iteration`` prompts ``x ~ d0``, sample ``responses_per_prompt`` responses
       from the current policy, score them with the policy's implicit reward
       ``eta log(pi_t/pi_ref)`` (with a fixed reference this is the MLE reward, in the policy's
       features, on all data so far), and pick a pair by ``selector`` (``sample_ranked_pairs``).
       With ``ranking="reward_model"`` they are scored instead by a separate reward model, the
       ridge BT MLE on all labels so far in the bandit's features (``reward_model``), as
       practitioners rank with a trained reward model; with the linear class and
       ``reference="fixed"`` the two rankings coincide (the implicit reward is that MLE, up to a
       constant per prompt, which no ranking sees).
    3. Label the pairs by the Bradley-Terry oracle ``sigmoid(r*(a1) - r*(a2))`` and append.

    ``features`` defaults to the bandit's (``[X, K, d]``); pass ``one_hot_features`` for the
    tabular class. Everything is batched over the seeds.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
    check_positive_int(num_iterations, "num_iterations")
    check_positive_int(pairs_per_iteration, "pairs_per_iteration")
    check_positive_int(responses_per_prompt, "responses_per_prompt")
    if responses_per_prompt < 2:
        raise ValueError("responses_per_prompt must be at least 2 to form a pair")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    features = _features(bandit, features)
    batch_shape = tuple(offline.labels.shape[:-1])
    eta = bandit.eta
    ref = bandit.ref_probs.expand(*batch_shape, *bandit.ref_probs.shape)
    data = offline
    policies, num_pairs = [], []
    for iteration in range(num_iterations + 1):
        fit = train_dpo_linear(_dpo_pairs(features, data), eta=eta, reg=reg, tol=tol)
        policy = linear_policy(ref, features=features, w=fit.w)
        policies.append(policy)
        num_pairs.append(len(data))
        if iteration == num_iterations:
            break
        if ranking == "implicit":
            scores = eta * torch.einsum("xkd,...d->...xk", features, fit.w)  # eta log(pi/pi_ref)
        else:
            scores = reward_model(bandit.features, data, reg=reg)
        contexts = bandit.sample_contexts(pairs_per_iteration, generator, batch_shape)
        first, second = sample_ranked_pairs(policy, scores, contexts=contexts,
                                            responses_per_prompt=responses_per_prompt,
                                            selector=selector, generator=generator)
        data = data.concat(bandit.label_pairs(contexts, first, second, generator))
        if reference == "previous":
            ref = policy
    return IterativeDPOResult(policies=torch.stack(policies), data=data, num_pairs=num_pairs)


def mle_gibbs_policy(bandit, data, *, reg: float, features=None) -> torch.Tensor:
    """The Gibbs policy of the ridge BT MLE reward (``fit_bt_mle``) on ``data``: what DPO over a
    class containing every Gibbs policy returns (notebook 04). Shape ``[..., X, K]``."""
    from .gibbs import gibbs_policy

    rewards = reward_model(_features(bandit, features), data, reg=reg)
    return gibbs_policy(bandit.ref_probs, rewards, bandit.eta)


def offline_dpo(bandit, data, *, reg: float, features=None, tol: float = DPO_TOLERANCE):
    """Offline DPO: the sigmoid DPO objective on ``data`` (``Preferences``, batch ``[...]``) over
    ``pi_w ∝ pi0 exp(<w, phi>)``; returns the policy ``[..., X, K]``."""
    features = _features(bandit, features)
    fit = train_dpo_linear(_dpo_pairs(features, data), eta=bandit.eta, reg=reg, tol=tol)
    return linear_policy(bandit.ref_probs, features=features, w=fit.w)


def rso_dpo(bandit, data, *, reg: float, num_pairs: int, pool_size: int,
            generator: torch.Generator, features=None, tol: float = DPO_TOLERANCE):
    """RSO (Liu et al. 2023) in miniature, batched over the seeds of ``data``.

    1. Reward model: the ridge BT MLE ``theta_rm`` on the human comparisons ``data``.
    2. For ``num_pairs`` prompts ``x ~ d0``: draw a pool of ``pool_size`` responses from pi0 and
       keep two by RSO's finite-pool sampler (``sampling.rso_select``) targeting the Gibbs policy
       of the reward model at the bandit's ``eta``.
    3. Label each pair by the reward model's Bradley-Terry probability (RSO labels with its
       reward-ranking model; no new human comparison).
    4. DPO (sigmoid) on the synthetic pairs with reference pi0.

    Returns the policy ``[..., X, K]``.
    """

    features = _features(bandit, features)
    batch_shape = tuple(data.labels.shape[:-1])
    model_rewards = reward_model(features, data, reg=reg)  # [..., X, K]
    contexts = bandit.sample_contexts(num_pairs, generator, batch_shape)
    rows = torch.gather(bandit.ref_probs.expand(*batch_shape, *bandit.ref_probs.shape), -2,
                        contexts.unsqueeze(-1).expand(*contexts.shape, bandit.num_actions))
    pool = sample_categorical(rows, pool_size, generator)
    reward_rows = torch.gather(model_rewards, -2, contexts.unsqueeze(-1).expand(
        *contexts.shape, bandit.num_actions))
    picked = rso_select(torch.gather(reward_rows, -1, pool), 2, bandit.eta, generator)
    pair = torch.gather(pool, -1, picked)
    first, second = pair[..., 0], pair[..., 1]
    margin = (torch.gather(reward_rows, -1, first.unsqueeze(-1))
              - torch.gather(reward_rows, -1, second.unsqueeze(-1))).squeeze(-1)
    uniforms = torch.rand(margin.shape, dtype=torch.float64, generator=generator)
    labels = (uniforms < torch.sigmoid(margin)).to(torch.float64)
    chosen, rejected = chosen_rejected(first=first, second=second, labels=labels)
    fit = train_dpo_linear(pair_feature_diffs(features, contexts=contexts, first=chosen,
                                              second=rejected), eta=bandit.eta, reg=reg, tol=tol)
    return linear_policy(bandit.ref_probs, features=features, w=fit.w)


def leaning_instance(*, num_contexts: int, num_actions: int, dim: int, norm_bound: float,
                     eta: float, generator: torch.Generator, lean: float = 0.5):
    """The instance of notebook 04: a random ``LinearBTBandit`` whose reference policy leans
    towards the worse responses, ``pi0 ∝ exp(-lean r* + noise)`` with standard normal noise per
    (context, action), as an SFT model that often writes poor answers: pairs from ``pi0`` then
    rarely compare the good responses."""
    from .instance import LinearBTBandit

    if not math.isfinite(lean):
        raise ValueError(f"lean must be finite, got {lean!r}")
    base = LinearBTBandit.random(num_contexts=num_contexts, num_actions=num_actions, dim=dim,
                                 norm_bound=norm_bound, eta=eta, generator=generator)
    noise = torch.randn(num_contexts, num_actions, dtype=torch.float64, generator=generator)
    return base.with_reference(torch.softmax(-lean * base.rewards() + noise, -1))


def gibbs_frontier_reward(bandit, kl_target, num_bisections: int = 100) -> torch.Tensor:
    """``F(k)``: the true expected reward ``E_{x, pi_s} r*`` of the Gibbs policy
    ``pi_s ∝ pi0 exp(r*/s)`` whose mean KL ``E_x KL(pi_s || pi0)`` equals ``k`` (batched over
    ``kl_target``). By the Gibbs optimality of ``pi_s`` for ``J`` at coefficient ``s``, no policy
    with mean KL ``k`` has a larger expected reward: ``F(KL(pi)) - E_pi r*`` is a policy's reward
    deficit *at its own KL*. Bisection on ``log s`` over [1e-8, 1e8]; targets beyond the largest
    reachable KL give ``max`` reward (the flat part of the frontier).
    """
    from .gibbs import gibbs_policy, kl_divergence

    kl_target = torch.as_tensor(kl_target, dtype=torch.float64)
    rewards = bandit.rewards()
    weights = bandit.context_probs
    low = torch.full(kl_target.shape, -8 * math.log(10), dtype=torch.float64)
    high = -low
    for _ in range(num_bisections):
        middle = (low + high) / 2
        policy = gibbs_policy(bandit.ref_probs, rewards, middle.exp()[..., None])
        kl = (kl_divergence(policy, bandit.ref_probs) * weights).sum(-1)
        too_close = kl < kl_target  # coefficient too large: move it down
        high = torch.where(too_close, middle, high)
        low = torch.where(too_close, low, middle)
    policy = gibbs_policy(bandit.ref_probs, rewards, ((low + high) / 2).exp()[..., None])
    return ((policy * rewards).sum(-1) * weights).sum(-1)


def policy_summary(bandit, policy) -> dict[str, torch.Tensor]:
    """Exact ``J``, mean KL to ``pi0``, expected true reward and the reward deficit at its own KL
    (``gibbs_frontier_reward(KL) - E_pi r*``) of ``policy [..., X, K]``, each ``[...]``."""
    kl = bandit.expected_kl(policy)
    reward = ((policy * bandit.rewards()).sum(-1) * bandit.context_probs).sum(-1)
    return {"J": bandit.value(policy), "kl": kl, "reward": reward,
            "deficit": gibbs_frontier_reward(bandit, kl) - reward}


def dpo_mle_agreement(bandit, data, *, reg: float, features=None):
    """How far DPO's trained policy is from the Gibbs policy of the BT MLE on the same ``data``
    (over ``pi_w ∝ pi0 exp(<w, features>)``), and the bound the optimisation tolerances allow.

    Both objectives are ``reg``-strongly convex in ``theta = eta w``, so points with gradient
    norms ``g_DPO`` and ``g_MLE`` are within ``(g_DPO + g_MLE)/reg`` of each other's minimiser,
    and ``log pi_theta(a) = <theta, phi(a)>/eta - log Z_theta`` moves by at most
    ``2 max ||phi|| / eta`` per unit of ``theta``. Returns ``(gap, bound)``, each ``[...]``:
    ``max_{x, a} |log pi_DPO - log pi_MLE|`` and ``2 max||phi|| (g_DPO + g_MLE) / (reg eta)``
    plus float64 round-off (the claim of notebook 04 is ``gap <= bound``).
    """
    from .estimation import bt_gradient
    from .gibbs import gibbs_log_policy
    from .lab.stats import roundoff_tolerance

    features = _features(bandit, features)
    fit = train_dpo_linear(_dpo_pairs(features, data), eta=bandit.eta, reg=reg)
    z = _comparison_diffs(features, data)
    theta_mle = fit_bt_mle(z, data.labels, reg)
    grad_mle = bt_gradient(theta_mle, z, data.labels, reg).norm(dim=-1)
    dpo_log = torch.log(linear_policy(bandit.ref_probs, features=features, w=fit.w))
    mle_log = gibbs_log_policy(bandit.ref_probs,
                               torch.einsum("xkd,...d->...xk", features, theta_mle), bandit.eta)
    gap = (dpo_log - mle_log).abs().amax((-1, -2))
    bound = 2 * features.norm(dim=-1).max() * (fit.grad_norm + grad_mle) / (reg * bandit.eta)
    return gap, bound + roundoff_tolerance(bandit.num_actions, mle_log.abs().amax((-1, -2)) + 1)


def bt_likelihood_identity_error(bandit, data, w) -> torch.Tensor:
    """Per pair, how far the DPO loss on the log-probabilities of ``pi_w ∝ pi0 exp(<w, phi>)``
    (normalisers included) is from the Bradley-Terry negative log-likelihood at
    ``theta = eta w``, divided by the float64 summation bound of the two computations: at most 1
    if DPO is the BT likelihood of the implicit reward (notebook 04). ``w [..., d]`` against
    ``data`` with batch shape ``[...]``; returns ``[..., n]``."""
    from .lab.stats import roundoff_tolerance

    log_policy = torch.log(linear_policy(bandit.ref_probs, features=bandit.features, w=w))
    log_ref = torch.log(bandit.ref_probs)
    chosen, rejected = chosen_rejected(first=data.first_actions, second=data.second_actions,
                                       labels=data.labels)
    contexts = data.contexts
    rows = torch.arange(contexts.numel()).reshape(contexts.shape) // contexts.shape[-1]
    flat = log_policy.reshape(-1, *log_policy.shape[-2:])
    chosen_lp, rejected_lp = flat[rows, contexts, chosen], flat[rows, contexts, rejected]
    ref_chosen, ref_rejected = log_ref[contexts, chosen], log_ref[contexts, rejected]
    loss = dpo_loss(chosen_lp, rejected_lp, ref_chosen, ref_rejected, bandit.eta)
    margin = (2 * data.labels - 1) * torch.einsum("...nd,...d->...n", data.feature_diffs,
                                                  bandit.eta * w)
    likelihood = F.softplus(-margin)
    magnitude = (bandit.eta * (chosen_lp.abs() + rejected_lp.abs() + ref_chosen.abs()
                               + ref_rejected.abs()) + margin.abs() + likelihood)
    return (loss - likelihood).abs() / roundoff_tolerance(bandit.num_actions, magnitude)
