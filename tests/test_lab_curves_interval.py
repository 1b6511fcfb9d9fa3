"""Tests of ``gsfh_utils.lab.results.tidy_curves`` and ``gsfh_utils.lab.stats.mean_interval``
(against ``tidy`` one curve at a time, and against scipy's own t interval)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from gsfh_utils.lab import stats
from gsfh_utils.lab.results import tidy, tidy_curves


def test_tidy_curves_stacks_tidy_tables_in_order():
    curves = {"b": torch.arange(6.0).reshape(2, 3), "a": -torch.arange(6.0).reshape(2, 3)}
    frame = tidy_curves(curves, "value", "curve", n=[10, 20], seed=range(3))
    expected = pd.concat([tidy(v, "value", n=[10, 20], seed=range(3)).assign(curve=k)
                          for k, v in curves.items()], ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected)
    assert frame["curve"].tolist() == ["b"] * 6 + ["a"] * 6


def test_tidy_curves_checks_its_input():
    with pytest.raises(ValueError, match="curves"):
        tidy_curves({}, "value", "curve", n=[1])
    with pytest.raises(ValueError, match="coordinates"):
        tidy_curves({"a": torch.zeros(2)}, "value", "curve", n=[1, 2, 3])


@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=50), st.floats(0.5, 0.999))
def test_mean_interval_is_scipys_t_interval(values, level):
    mean, low, high = stats.mean_interval(values, level)
    tensor = torch.tensor(values, dtype=torch.float64)
    assert mean == pytest.approx(tensor.mean().item(), rel=1e-12, abs=1e-9)
    scale = (tensor.std() / math.sqrt(len(values))).item()
    if scale == 0:
        assert low == high == mean
        return
    expected = scipy_stats.t.interval(level, len(values) - 1, loc=mean, scale=scale)
    assert (low, high) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_mean_interval_checks_its_input():
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_interval([1.0])
    with pytest.raises(ValueError, match="level"):
        stats.mean_interval([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="values"):
        stats.mean_interval([1.0, math.nan])
