"""The profile switch: the same notebook runs at test size ("small") or full size ("full")."""

from __future__ import annotations

PROFILES = ("small", "full")


def sizes_for(profile: str, small: dict, full: dict) -> dict:
    """The sizes of ``profile``: ``small`` for the tests (seconds), ``full`` for the figures."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if set(small) != set(full):
        differing = sorted(set(small) ^ set(full))
        raise ValueError(f"small and full must set the same sizes, they differ in {differing}")
    return dict(small if profile == "small" else full)
