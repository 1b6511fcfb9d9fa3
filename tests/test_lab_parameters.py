"""The parameters cell and the profile tables: what counts as a parameter, how None is filled."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.lab.parameters import PROFILES, declared_parameters, resolve

# --- declared_parameters ------------------------------------------------------------------------


def test_declared_parameters_keeps_plain_values_only():
    class Model:
        pass

    plain = {"profile": "small", "explore": False, "seed": 3, "eta": 0.5, "num_seeds": None,
             "grid": [1, 2], "pair": (0.1, 0.2), "table": {"a": 1}, "numpy_float": np.float64(0.25)}
    namespace = {
        **plain,
        "math": math, "torch": torch, "helper": lambda x: x, "print_it": print, "Model": Model,
        "tensor": torch.zeros(2), "generator": torch.Generator(),
        # IPython's own names
        "In": ["", "profile = 'small'"], "Out": {}, "get_ipython": lambda: None,
        "exit": object(), "quit": object(), "open": open,
        # private and dunder names, and IPython's output history
        "_": 1, "__": 2, "_i1": "x = 1", "_3": 4.0, "__name__": "__main__",
        "__session__": "/home/me/notebooks/01_x.ipynb", "_hidden": 0.5,
    }
    assert declared_parameters(namespace) == plain


def test_declared_parameters_of_an_empty_namespace():
    assert declared_parameters({}) == {}


# --- resolve ------------------------------------------------------------------------------------

SMALL, FULL = {"num_seeds": 4, "sizes": [10, 30]}, {"num_seeds": 200, "sizes": [10, 30, 100]}


@pytest.mark.parametrize(("profile", "table"), [("small", SMALL), ("full", FULL)])
def test_resolve_fills_none_from_the_profile(profile, table):
    params = resolve({"profile": profile, "seed": 1, "num_seeds": None, "sizes": None},
                     small=SMALL, full=FULL)
    assert vars(params) == {"profile": profile, "seed": 1, **table}


def test_explicit_values_win_over_the_profile():
    params = resolve({"profile": "full", "seed": 1, "num_seeds": 7, "sizes": None},
                     small=SMALL, full=FULL)
    assert params.num_seeds == 7 and params.sizes == [10, 30, 100]


def test_resolve_without_profile_sized_parameters():
    assert vars(resolve({"profile": "small", "eta": 0.5}, small={}, full={})) == {
        "profile": "small", "eta": 0.5}


@pytest.mark.parametrize("profile", ["medium", "Small", "", None, 1])
def test_resolve_names_an_unknown_profile(profile):
    with pytest.raises(ValueError, match=re.escape(f"got {profile!r}")):
        resolve({"profile": profile}, small={}, full={})


def test_resolve_needs_a_profile():
    with pytest.raises(ValueError, match="profile must be one of"):
        resolve({"seed": 1}, small={}, full={})


def test_resolve_names_the_knobs_the_two_profiles_disagree_on():
    with pytest.raises(ValueError, match=r"differ in \['extra', 'sizes'\]"):
        resolve({"profile": "small", "num_seeds": None, "sizes": None, "extra": None},
                small={"num_seeds": 1, "extra": 2}, full={"num_seeds": 3, "sizes": [1]})


def test_resolve_names_a_profile_knob_the_cell_does_not_declare():
    with pytest.raises(ValueError, match=r"sizes \['num_steps'\].*declare them as None"):
        resolve({"profile": "full", "num_seeds": None}, small={"num_seeds": 1, "num_steps": 5},
                full={"num_seeds": 2, "num_steps": 50})


def test_resolve_names_a_knob_left_none():
    with pytest.raises(ValueError, match=r"\['batch', 'width'\] are None"):
        resolve({"profile": "small", "num_seeds": None, "width": None, "batch": None},
                small={"num_seeds": 1}, full={"num_seeds": 2})


# --- properties ---------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda n: n != "profile")


@st.composite
def cells_and_profiles(draw):
    """A parameters cell (some knobs None, some explicit) and small/full tables that size every
    None knob and possibly some explicit ones."""
    knobs = draw(st.lists(names, unique=True, max_size=8))
    explicit = {name: draw(st.integers(-5, 5)) for name in knobs if draw(st.booleans())}
    sized = [name for name in knobs if name not in explicit]
    sized += [name for name in explicit if draw(st.booleans())]
    small = {name: draw(st.integers(100, 199)) for name in sized}
    full = {name: draw(st.integers(200, 299)) for name in sized}
    profile = draw(st.sampled_from(PROFILES))
    cell = {"profile": profile, **{name: explicit.get(name) for name in knobs}}
    return cell, small, full


@given(cells_and_profiles())
def test_every_knob_is_its_explicit_value_or_else_the_profiles(case):
    cell, small, full = case
    params = vars(resolve(cell, small=small, full=full))
    table = small if cell["profile"] == "small" else full
    assert params.keys() == cell.keys()
    for name, value in cell.items():
        assert params[name] == (value if value is not None else table[name])
    assert None not in params.values()


@given(cells_and_profiles(), st.data())
def test_a_none_knob_the_profile_does_not_size_is_named(case, data):
    cell, small, full = case
    unsized = data.draw(names.filter(lambda name: name not in cell))
    with pytest.raises(ValueError, match=re.escape(repr(unsized))):
        resolve({**cell, unsized: None}, small=small, full=full)


@given(cells_and_profiles(), st.data())
def test_a_knob_sized_by_one_profile_only_is_named(case, data):
    cell, small, full = case
    extra = data.draw(names.filter(lambda name: name not in small))
    one_sided = data.draw(st.sampled_from(["small", "full"]))
    if one_sided == "small":
        small = {**small, extra: 1}
    else:
        full = {**full, extra: 1}
    with pytest.raises(ValueError, match=re.escape(repr(extra))):
        resolve({**cell, extra: None}, small=small, full=full)
