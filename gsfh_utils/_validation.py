"""Input checks shared by the package: every bad input raises ``ValueError`` naming the argument."""

from __future__ import annotations

import math

import torch


def as_float64(value) -> torch.Tensor:
    """``value`` as a float64 tensor (internal arrays whose shapes are checked by the caller)."""
    return torch.as_tensor(value, dtype=torch.float64)


def as_float_tensor(value, name: str) -> torch.Tensor:
    """Return ``value`` as a floating tensor (float64 unless it already is floating)."""
    if isinstance(value, torch.Tensor):
        tensor = value if value.is_floating_point() else value.to(torch.float64)
    else:
        try:
            tensor = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"{name} must be a tensor of numbers, got {type(value).__name__}"
            ) from exc
    if tensor.ndim == 0:
        raise ValueError(f"{name} must have an action dimension (last dimension), got a scalar")
    return tensor


def probability_tolerance(dtype: torch.dtype, num_actions: int) -> float:
    """How far a row sum may be from 1: ``max(sqrt(eps(dtype)), K eps(float32))``.

    Covers the round-off of a normalisation done in single precision and then cast up
    (about ``K eps32``), and stays far below any unnormalisation that matters.
    """
    return max(math.sqrt(torch.finfo(dtype).eps), num_actions * torch.finfo(torch.float32).eps)


def check_probs(probs, name: str) -> torch.Tensor:
    """Validate a batch of distributions over the last dimension (finite, >= 0, sum to 1)."""
    probs = as_float_tensor(probs, name)
    if probs.shape[-1] == 0 or probs.numel() == 0:
        raise ValueError(f"{name} must hold at least one distribution over at least one action, "
                         f"got shape {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if (probs < 0).any():
        raise ValueError(f"{name} must be non-negative, got minimum {probs.min().item():.3g}")
    deviation = (probs.sum(-1) - 1).abs().max().item()
    if deviation > probability_tolerance(probs.dtype, probs.shape[-1]):
        raise ValueError(
            f"{name} must sum to 1 over the last (action) dimension, "
            f"largest deviation is {deviation:.3g}"
        )
    return probs


def check_rewards(rewards, name: str = "rewards") -> torch.Tensor:
    rewards = as_float_tensor(rewards, name)
    if not torch.isfinite(rewards).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return rewards


def check_eta(eta, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Validate the KL coefficient: a positive finite number or a tensor of them.

    Returned with a trailing singleton dimension so it broadcasts against ``[..., K]``.
    """
    try:
        eta = eta.to(dtype) if isinstance(eta, torch.Tensor) else torch.as_tensor(eta, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"eta must be a positive number or tensor, got {eta!r}") from exc
    if not torch.isfinite(eta).all() or (eta <= 0).any():
        raise ValueError(f"eta must be positive and finite, got {eta.tolist()}")
    return eta.unsqueeze(-1)


def broadcast_pair(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str]):
    """Broadcast two ``[..., K]`` tensors, or raise a ``ValueError`` naming both shapes."""
    try:
        shape = torch.broadcast_shapes(first.shape, second.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"{names[0]} (shape {tuple(first.shape)}) and {names[1]} (shape {tuple(second.shape)}) "
            "must have the same number of actions and broadcastable leading dimensions"
        ) from exc
    if first.shape[-1] != second.shape[-1]:
        raise ValueError(
            f"{names[0]} has {first.shape[-1]} actions but {names[1]} has {second.shape[-1]}"
        )
    dtype = torch.promote_types(first.dtype, second.dtype)
    return first.to(dtype).expand(shape), second.to(dtype).expand(shape)


def check_eta_shape(eta: torch.Tensor, leading_shape: torch.Size) -> None:
    try:
        torch.broadcast_shapes(eta.shape[:-1], leading_shape)
    except RuntimeError as exc:
        raise ValueError(
            f"eta (shape {tuple(eta.shape[:-1])}) must broadcast against the leading "
            f"dimensions {tuple(leading_shape)}"
        ) from exc


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_positive_number(value, name: str) -> float:
    """A positive finite number (``eta``, ``reg``, a temperature ...) as a float."""
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a positive number, got {value!r}") from exc
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return value


def check_generator(generator) -> torch.Generator:
    """Randomness is always explicit: a ``torch.Generator``, never the global RNG."""
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator (randomness is always explicit)")
    return generator
