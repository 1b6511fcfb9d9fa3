"""A notebook's parameters: every knob declared once, sizes supplied by the profile.

The first code cell of a notebook (tagged ``parameters`` for papermill) declares every knob a
researcher would turn, each with a type annotation and a comment::

    profile: str = "full"    # "small": test sizes (seconds); "full": the sizes of the figures
    explore: bool = False    # True: record failing claims and run on to the end
    seed: int = 20231218
    eta: float = 0.5         # the KL coefficient
    num_seeds: int = None    # None: from the profile

A knob whose value differs between the fast test profile and the full one is declared ``None``
and given its two values in the profile table that ``resolve`` receives; a value set explicitly
(in the cell, by ``papermill -p``, or by the runner's ``-p``) always wins over the profile.
"""

from __future__ import annotations

from types import SimpleNamespace

PROFILES = ("small", "full")

#: Types a parameter may have: what papermill can inject and what a results file can hold.
PARAMETER_TYPES = (bool, int, float, str, list, tuple, dict, type(None))

#: Names IPython puts into the user namespace; never parameters.
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def declared_parameters(namespace: dict) -> dict:
    """The parameters defined in ``namespace`` (a notebook's ``globals()``) so far: every public
    name bound to a plain value (number, string, boolean, list, tuple, dict or ``None``).
    Modules, functions and IPython's own names are not parameters."""
    return {name: value for name, value in namespace.items()
            if not name.startswith("_") and name not in _IPYTHON_NAMES
            and isinstance(value, PARAMETER_TYPES)}


def resolve(parameters: dict, *, small: dict, full: dict) -> SimpleNamespace:
    """Fill the parameters left ``None`` from the profile's table and return them all.

    ``parameters`` must hold ``profile`` (one of ``PROFILES``); ``small`` and ``full`` give the
    two values of each profile-sized knob and must name the same knobs, each declared in
    ``parameters``. A knob still ``None`` afterwards, or a profile entry for a knob that is not
    declared, is a ``ValueError`` naming it.
    """
    profile = parameters.get("profile")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if set(small) != set(full):
        raise ValueError("the small and full profiles must size the same parameters; they differ "
                         f"in {sorted(set(small) ^ set(full))}")
    undeclared = sorted(set(small) - set(parameters))
    if undeclared:
        raise ValueError(f"the profile sizes {undeclared}, which the parameters cell does not "
                         "declare (declare them as None)")
    table = small if profile == "small" else full
    resolved = {name: table[name] if value is None and name in table else value
                for name, value in parameters.items()}
    missing = sorted(name for name, value in resolved.items() if value is None)
    if missing:
        raise ValueError(f"parameter(s) {missing} are None and the profile does not size them")
    return SimpleNamespace(**resolved)
