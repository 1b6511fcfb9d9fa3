"""Estimation from preference data: the Bradley-Terry MLE and its confidence set.

- ``fit_bt_mle``: the ridge-regularised maximum-likelihood estimate ``theta_hat``, batched over any
  leading dimensions (seeds, data sizes) by damped Newton steps with batched Cholesky solves.
- ``sigma_d``: the unnormalised design matrix ``Sigma_D = lambda I + sum_i z_i z_i^T``.
- ``reward_difference_bound``, ``slope_bound`` and ``confidence_radius``: the range of reward
  differences, ``gamma`` and ``beta`` of the confidence event
  ``||theta_hat - theta*||_{Sigma_D} <= beta`` (Zhu, Jordan, Jiao 2023, arXiv:2301.11270; the
  paper's section 3), with the constant convention stated.
- ``bootstrap_radius``: a data-driven radius, the parametric bootstrap of the MLE (no ``theta*``).
- ``reference_vectors``: ``nu(x) = E_{a ~ pi0} phi(x, a)``, against which uncertainty is measured
  (Bradley-Terry identifies only reward differences).
- ``sigma_norm``, ``inverse_sigma_norm`` and ``whitener``: ``||v||_Sigma``,
  ``||v||_{Sigma^{-1}}`` and ``L^{-1}`` with ``Sigma = L L^T``, batched.
"""

from __future__ import annotations

import math

import torch

from ._validation import check_generator, check_positive_int, check_positive_number, check_probs

#: Default convergence tolerance of ``fit_bt_mle`` on the Euclidean norm of the gradient of the
#: objective. Float64 round-off in that gradient is about ``n * 1e-16`` (1e-12 at n = 1e4), so
#: the tolerance is reachable, and by strong convexity (modulus ``reg``) it pins ``theta_hat`` to
#: within ``tol / reg`` of the exact minimiser.
MLE_TOLERANCE = 1e-9

#: ``fit_bt_mle`` works through the batch in chunks of about this many bytes of ``feature_diffs``
#: so that each chunk stays in cache over its Newton iterations (a large batch does not).
CHUNK_BYTES = 4 * 2**20


def _check_feature_diffs(feature_diffs) -> torch.Tensor:
    if not isinstance(feature_diffs, torch.Tensor):
        try:
            feature_diffs = torch.as_tensor(feature_diffs, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError("feature_diffs must be a tensor of numbers [..., n, d]") from exc
    feature_diffs = feature_diffs.to(torch.float64)
    if feature_diffs.ndim < 2:
        raise ValueError(
            f"feature_diffs must have shape [..., n, d], got {tuple(feature_diffs.shape)}"
        )
    if feature_diffs.shape[-2] == 0:
        raise ValueError("feature_diffs is empty: there must be at least one comparison (n >= 1)")
    if feature_diffs.shape[-1] == 0:
        raise ValueError("feature_diffs must have at least one feature (d >= 1)")
    if not torch.isfinite(feature_diffs).all():
        raise ValueError("feature_diffs must be finite (no NaN or inf)")
    return feature_diffs


def _check_labels(labels, feature_diffs: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels).to(torch.float64)
    if labels.shape != feature_diffs.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(feature_diffs.shape[:-1])} (the leading dimensions of "
            f"feature_diffs), got {tuple(labels.shape)}"
        )
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must be 0 or 1 (1 when the first response is preferred)")
    return labels


def bt_objective(theta, feature_diffs, labels, reg) -> torch.Tensor:
    """``sum_i -log sigmoid(s_i <theta, z_i>) + reg/2 ||theta||^2``, ``s_i = 2 y_i - 1``.

    Shapes: ``theta [..., d]``, ``feature_diffs [..., n, d]``, ``labels [..., n]``; returns
    ``[...]``.
    """
    signs = 2 * torch.as_tensor(labels, dtype=torch.float64) - 1
    margins = torch.einsum("...nd,...d->...n", feature_diffs, theta)
    return (torch.nn.functional.softplus(-signs * margins).sum(-1)
            + 0.5 * reg * (theta * theta).sum(-1))


def bt_gradient(theta, feature_diffs, labels, reg) -> torch.Tensor:
    """Gradient of ``bt_objective``: ``-sum_i s_i sigmoid(-s_i m_i) z_i + reg theta``."""
    signs = 2 * torch.as_tensor(labels, dtype=torch.float64) - 1
    margins = torch.einsum("...nd,...d->...n", feature_diffs, theta)
    weights = -signs * torch.sigmoid(-signs * margins)
    return torch.einsum("...nd,...n->...d", feature_diffs, weights) + reg * theta


def backtracking_step(objective_at, point, step, margins, step_margins, objective, decrement,
                      max_halvings: int = 60):
    """One damped Newton step with Armijo backtracking (halving, slope ``1e-4``), batched.

    ``objective_at(margins [b, n], point [b, d]) -> [b]`` evaluates the objective from the
    per-pair margins ``<point, z_i>`` (kept updated, so a trial costs ``O(n)``); the trial points
    are ``point - size * step`` with margins ``margins - size * step_margins``. ``decrement [b]``
    is the Newton decrement squared ``<gradient, step>``. Below a decrement of 1e-8 the predicted
    decrease is under the round-off of the objective, so the full step is taken (the
    quadratic-convergence region). A problem whose step is never accepted (already at round-off)
    keeps its point. Returns ``(point, margins, objective)`` after the step.
    """
    size = torch.ones_like(objective)
    pending = torch.ones_like(objective, dtype=torch.bool)
    new_objective = objective
    for _ in range(max_halvings):
        trial = objective_at(margins - size.unsqueeze(-1) * step_margins,
                             point - size.unsqueeze(-1) * step)
        accept = (trial <= objective - 1e-4 * size * decrement) | (decrement <= 1e-8)
        new_objective = torch.where(pending & accept, trial, new_objective)
        pending = pending & ~accept
        if not bool(pending.any()):
            break
        size = torch.where(pending, size / 2, size)
    size = torch.where(pending, 0.0, size).unsqueeze(-1)
    return (point - size * step, margins - size * step_margins,
            torch.where(pending, objective, new_objective))


def _float64_hessian_factor(z: torch.Tensor, z_t: torch.Tensor, curvature: torch.Tensor,
                            reg: float) -> torch.Tensor:
    """Cholesky factor of the Hessian ``sum_i c_i z_i z_i^T + reg I`` formed in float64, for when
    its float32 product failed to factorise (round-off of float32 made it indefinite). A damping
    of float64's own round-off bound, ``n eps_64 tr H``, covers a ``reg`` below even that: the
    error of the product is below ``n u sum_i c_i |z_i| |z_i|^T`` entry by entry (Higham, eq.
    4.4), whose spectral norm is at most its trace, ``tr H``."""
    num_pairs, dim = z.shape[-2:]
    hessian = torch.bmm(z_t * curvature.unsqueeze(1), z)
    trace = hessian.diagonal(dim1=-2, dim2=-1).sum(-1)
    damping = reg + num_pairs * torch.finfo(torch.float64).eps * trace
    return torch.linalg.cholesky(hessian + damping[:, None, None] * torch.eye(dim,
                                                                             dtype=torch.float64))


def _newton_chunk(z: torch.Tensor, signs: torch.Tensor, reg: float, tol: float,
                  max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Damped Newton on a chunk ``z [b, n, d]``; returns (theta, gradient norms, iterations).

    Matrix-vector products are written as ``[b, 1, n] @ [b, n, d]`` and ``[b, 1, d] @ [b, d, n]``
    batched matrix products: torch's batched matrix-vector path is several times slower.
    """
    batch, num_pairs, dim = z.shape
    z_t = z.transpose(1, 2).contiguous()  # [b, d, n]
    z_single, z_t_single = z.to(torch.float32), z_t.to(torch.float32)
    theta = torch.zeros(batch, dim, dtype=torch.float64)
    margins = torch.zeros(batch, num_pairs, dtype=torch.float64)  # <theta, z_i>, kept updated
    eye = torch.eye(dim, dtype=torch.float64)

    def objective_at(margins, theta):
        return (torch.nn.functional.softplus(-signs * margins).sum(-1)
                + 0.5 * reg * (theta * theta).sum(-1))

    objective = objective_at(margins, theta)
    for iteration in range(max_iter + 1):
        probs_wrong = torch.sigmoid(-signs * margins)  # sigmoid(-s m)
        gradient = torch.bmm((-signs * probs_wrong).unsqueeze(1), z).squeeze(1) + reg * theta
        grad_norm = gradient.norm(dim=-1)
        if bool((grad_norm <= tol).all()) or iteration == max_iter:
            return theta, grad_norm, iteration
        curvature = probs_wrong * (1 - probs_wrong)  # sigmoid'(m), symmetric in s
        # The Hessian only sets the search direction, so it is formed in float32 (half the
        # cost of the dominant n d^2 product); gradient, objective and stopping test stay
        # float64, so the optimum reached is the float64 one.
        hessian = torch.bmm(z_t_single * curvature.to(torch.float32).unsqueeze(1), z_single)
        hessian = hessian.to(torch.float64) + reg * eye
        chol, info = torch.linalg.cholesky_ex(hessian)
        if bool((info != 0).any()):  # only by round-off: reg I makes it positive definite
            chol = _float64_hessian_factor(z, z_t, curvature, reg)
        step = torch.cholesky_solve(gradient.unsqueeze(-1), chol).squeeze(-1)
        step_margins = torch.bmm(step.unsqueeze(1), z_t).squeeze(1)
        decrement = (gradient * step).sum(-1)  # Newton decrement squared, >= 0
        theta, margins, objective = backtracking_step(
            objective_at, theta, step, margins, step_margins, objective, decrement)
    raise AssertionError("unreachable")


def fit_bt_mle(feature_diffs, labels, reg: float, tol: float = MLE_TOLERANCE,
               max_iter: int = 100) -> torch.Tensor:
    """Ridge-regularised Bradley-Terry MLE, batched over leading dimensions.

    ``theta_hat = argmin_theta sum_i -log sigmoid(s_i <theta, z_i>) + reg/2 ||theta||^2`` with
    ``s_i = 2 y_i - 1``, for ``feature_diffs`` ``z [..., n, d]`` and ``labels`` ``y [..., n]``;
    returns ``theta_hat [..., d]`` (float64).

    Method: damped Newton from ``theta = 0`` (Hessian ``sum_i sigmoid'(m_i) z_i z_i^T + reg I``,
    its ``n d^2`` product formed in float32 since it only sets the search direction, and again
    in float64 on a step where round-off makes the float32 one indefinite; batched
    Cholesky solves; Armijo backtracking), on chunks of the flattened batch of about
    ``CHUNK_BYTES`` so that each chunk's data stay in cache. Gradient, objective and stopping
    test are float64, so the optimum is the float64 one. The objective is ``reg``-strongly
    convex, so the iteration converges from any start. Converged means the Euclidean norm of the
    gradient is at most ``tol`` for every problem (hence ``||theta - argmin|| <= tol / reg``).

    Raises ``ValueError`` (naming the argument) for empty data, labels outside {0, 1}, shapes
    that do not match, non-finite features or ``reg <= 0``; ``RuntimeError`` if ``max_iter``
    Newton steps do not reach ``tol``.
    """
    reg = check_positive_number(reg, "reg")
    feature_diffs = _check_feature_diffs(feature_diffs)
    labels = _check_labels(labels, feature_diffs)
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    leading = feature_diffs.shape[:-2]
    num_pairs, dim = feature_diffs.shape[-2:]
    z = feature_diffs.reshape(-1, num_pairs, dim)
    signs = (2 * labels - 1).reshape(-1, num_pairs)
    per_problem = num_pairs * dim * 8
    chunk = max(1, CHUNK_BYTES // per_problem)
    thetas = []
    for start in range(0, z.shape[0], chunk):
        theta, grad_norm, _ = _newton_chunk(z[start:start + chunk].contiguous(),
                                            signs[start:start + chunk], reg, tol, max_iter)
        if not bool((grad_norm <= tol).all()):
            raise RuntimeError(
                f"fit_bt_mle did not converge in {max_iter} Newton steps: largest gradient norm "
                f"{grad_norm.max().item():.3g} > tol = {tol:.3g}"
            )
        thetas.append(theta)
    return torch.cat(thetas).reshape(*leading, dim)


def sigma_d(feature_diffs, reg: float) -> torch.Tensor:
    """``Sigma_D = reg I + sum_i z_i z_i^T`` (unnormalised): ``[..., n, d] -> [..., d, d]``."""
    reg = check_positive_number(reg, "reg")
    feature_diffs = _check_feature_diffs(feature_diffs)
    dim = feature_diffs.shape[-1]
    return (feature_diffs.transpose(-1, -2) @ feature_diffs
            + reg * torch.eye(dim, dtype=torch.float64))


def reward_difference_bound(features, norm_bound: float) -> float:
    """``B max_{x, a, a'} ||phi(x, a) - phi(x, a')||``: the largest reward difference
    ``|<theta, phi(x, a) - phi(x, a')>|`` any ``||theta|| <= B`` can produce on these features
    ``[X, K, d]`` (at most ``2B`` when ``||phi|| <= 1``). The learner knows the features and
    ``B``, so this is a legitimate input to the radius."""
    features = torch.as_tensor(features, dtype=torch.float64)
    if features.ndim != 3:
        raise ValueError(f"features must have shape [X, K, d], got {tuple(features.shape)}")
    if not (norm_bound >= 0 and math.isfinite(norm_bound)):
        raise ValueError(f"norm_bound must be finite and non-negative, got {norm_bound!r}")
    diffs = features.unsqueeze(-2) - features.unsqueeze(-3)  # [X, K, K, d]
    return float(norm_bound * diffs.norm(dim=-1).max())


def slope_bound(margin_bound) -> float:
    """``gamma = min_{|u| <= m} sigmoid'(u) = 1 / (2 + exp(m) + exp(-m))``.

    The companion's convention: ``m = reward_difference_bound(features, B)``, the range of the
    reward differences the Bradley-Terry likelihood sees (``|<theta, z>|`` for ``||theta|| <=
    B``), so ``gamma`` truly lower-bounds the link's slope on the instance. With ``||phi|| <= 1``
    this is up to ``2B``; the form ``1/(2 + exp(-B) + exp(B))`` assumes differences of at most
    ``B`` (rewards in ``[0, B]``).
    """
    margin_bound = float(margin_bound)
    if not (margin_bound >= 0 and math.isfinite(margin_bound)):
        raise ValueError(f"margin_bound must be finite and non-negative, got {margin_bound!r}")
    # 1/(2 + e^m + e^-m) = e^-m / (1 + e^-m)^2, stable for large m.
    small = math.exp(-margin_bound)
    return small / (1 + small) ** 2


def _check_radius_arguments(dim, delta, gamma, reg, norm_bound) -> None:
    delta = float(delta)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be positive and finite, got {gamma!r}")
    check_positive_number(reg, "reg")
    if not (norm_bound >= 0 and math.isfinite(norm_bound)):
        raise ValueError(f"norm_bound must be finite and non-negative, got {norm_bound!r}")


def confidence_radius(*, dim: int, delta: float, gamma: float, reg: float, norm_bound: float,
                      constant: float = 1.0) -> float:
    """``beta = C sqrt((d + log(1/delta)) / gamma^2 + reg B^2)``, the radius of the confidence
    event ``||theta_hat - theta*||_{Sigma_D} <= beta`` (Zhu, Jordan, Jiao 2023; the paper's
    section 3).

    Convention: ``Sigma_D`` unnormalised (``reg I + sum z z^T``) and ``C = constant`` (the theory
    leaves the universal constant unspecified; ``C = 1`` by default). With probability at least
    ``1 - delta`` (for a large enough ``C``) the event holds; notebook 02 measures how often it
    does.
    """
    _check_radius_arguments(dim, delta, gamma, reg, norm_bound)
    if not (constant > 0 and math.isfinite(constant)):
        raise ValueError(f"constant must be positive and finite, got {constant!r}")
    return constant * math.sqrt((dim + math.log(1 / delta)) / gamma**2 + reg * norm_bound**2)


def asymptotic_radius(*, dim: int, delta: float, gamma: float, reg: float,
                      norm_bound: float) -> float:
    """The large-sample (Wald) radius ``beta = sqrt(chi2_{d, 1-delta} / gamma + reg B^2)``.

    Asymptotically ``||theta_hat - theta*||^2_F`` is ``chi2_d`` in the Fisher metric
    ``F = sum_i sigmoid'(<theta*, z_i>) z_i z_i^T``, and ``F >= gamma (Sigma_D - reg I)`` when
    ``gamma`` lower-bounds the slope; the ``reg B^2`` term covers the ridge's bias. Smaller than
    ``confidence_radius`` (``1/gamma`` instead of ``1/gamma^2``); its coverage must be measured.
    """
    from scipy.stats import chi2

    _check_radius_arguments(dim, delta, gamma, reg, norm_bound)
    return math.sqrt(chi2.ppf(1 - delta, dim) / gamma + reg * norm_bound**2)


def bootstrap_radius(feature_diffs, *, theta_hat, reg: float, delta: float, num_bootstrap: int,
                     generator: torch.Generator, chunk: int = 10) -> torch.Tensor:
    """A data-driven confidence radius: the parametric bootstrap of the MLE (Efron 1979).

    For each data set (``feature_diffs [..., n, d]`` with its MLE ``theta_hat [..., d]``), draw
    ``num_bootstrap`` label vectors from the fitted model, ``y*_i ~ Bernoulli(sigmoid(<theta_hat,
    z_i>))`` on the same pairs, refit the ridge MLE ``theta*`` and return the ``1 - delta``
    quantile of ``||theta* - theta_hat||_{Sigma_D}`` (shape ``[...]``). It uses the data only, never
    the true ``theta*``; bootstrap samples are refitted ``chunk`` at a time (memory).
    """
    check_generator(generator)
    num_bootstrap = check_positive_int(num_bootstrap, "num_bootstrap")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    feature_diffs = _check_feature_diffs(feature_diffs)
    theta_hat = torch.as_tensor(theta_hat, dtype=torch.float64)
    if theta_hat.shape != feature_diffs.shape[:-2] + feature_diffs.shape[-1:]:
        raise ValueError(f"theta_hat must have shape {tuple(feature_diffs.shape[:-2])} + "
                         f"[{feature_diffs.shape[-1]}], got {tuple(theta_hat.shape)}")
    probs = torch.sigmoid(torch.einsum("...nd,...d->...n", feature_diffs, theta_hat))
    sigma = sigma_d(feature_diffs, reg)
    distances = []
    for start in range(0, num_bootstrap, chunk):
        size = min(chunk, num_bootstrap - start)
        labels = (torch.rand(size, *probs.shape, dtype=torch.float64, generator=generator)
                  < probs).to(torch.float64)
        refit = fit_bt_mle(feature_diffs.expand(size, *feature_diffs.shape), labels, reg)
        distances.append(sigma_norm(refit - theta_hat, sigma))
    return torch.quantile(torch.cat(distances), 1 - delta, dim=0)


def reference_vectors(features, ref_probs) -> torch.Tensor:
    """``nu(x) = E_{a ~ pi0(.|x)} phi(x, a)``: ``features [X, K, d]``, ``ref_probs [X, K]``
    -> ``[X, d]``."""
    features = torch.as_tensor(features, dtype=torch.float64)
    ref_probs = check_probs(torch.as_tensor(ref_probs, dtype=torch.float64), "ref_probs")
    if features.ndim < 2 or features.shape[:-1] != ref_probs.shape:
        raise ValueError(
            f"features {tuple(features.shape)} must be ref_probs {tuple(ref_probs.shape)} plus a "
            "feature dimension"
        )
    return torch.einsum("...k,...kd->...d", ref_probs, features)


def _check_vectors_sigma(vectors, sigma):
    vectors = torch.as_tensor(vectors, dtype=torch.float64)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if vectors.ndim < 1 or sigma.ndim < 2 or sigma.shape[-1] != sigma.shape[-2]:
        raise ValueError(f"sigma must have shape [..., d, d], got {tuple(sigma.shape)}")
    if vectors.shape[-1] != sigma.shape[-1]:
        raise ValueError(
            f"vectors have d = {vectors.shape[-1]} but sigma has d = {sigma.shape[-1]}"
        )
    return vectors, sigma


def sigma_norm(vectors, sigma) -> torch.Tensor:
    """``||v||_Sigma = sqrt(v^T Sigma v)``, batched: ``vectors [..., d]``, ``sigma [..., d, d]``."""
    vectors, sigma = _check_vectors_sigma(vectors, sigma)
    quad = torch.einsum("...i,...ij,...j->...", vectors, sigma, vectors)
    return quad.clamp_min(0).sqrt()


def inverse_sigma_norm(vectors, sigma) -> torch.Tensor:
    """``||v||_{Sigma^{-1}} = sqrt(v^T Sigma^{-1} v)`` by a Cholesky solve (``sigma`` positive
    definite), batched: ``vectors [..., d]`` broadcast against ``sigma [..., d, d]``."""
    vectors, sigma = _check_vectors_sigma(vectors, sigma)
    chol = torch.linalg.cholesky(sigma)
    # ||L^{-1} v||: solve L w = v (triangular), then the Euclidean norm.
    shape = torch.broadcast_shapes(vectors.shape[:-1], chol.shape[:-2])
    chol_b = chol.expand(*shape, *chol.shape[-2:])
    vec_b = vectors.expand(*shape, vectors.shape[-1]).unsqueeze(-1)
    solved = torch.linalg.solve_triangular(chol_b, vec_b, upper=False)
    return solved.squeeze(-1).norm(dim=-1)


def whitener(sigma) -> torch.Tensor:
    """``L^{-1}`` with ``Sigma = L L^T`` (Cholesky), so ``||v||_{Sigma^{-1}} = ||L^{-1} v||``;
    batched over ``sigma [..., d, d]``."""
    chol = torch.linalg.cholesky(torch.as_tensor(sigma, dtype=torch.float64))
    eye = torch.eye(chol.shape[-1], dtype=torch.float64).expand_as(chol)
    return torch.linalg.solve_triangular(chol, eye, upper=False)
