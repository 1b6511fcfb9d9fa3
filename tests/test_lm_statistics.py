"""The seed-level statistics added for notebook 05's comparisons: the exact sign-flip test
(against scipy's permutation test and closed forms) and the intervals of the comparisons table."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from gsfh_utils.lab import stats


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=9),
       st.sampled_from(["greater", "less", "two-sided"]))
def test_sign_flip_test_matches_scipys_exact_permutation_test(values, alternative):
    values = [round(v, 3) for v in values]  # exact ties behave alike in both
    mine = stats.sign_flip_test(values, 0.0, alternative)
    theirs = scipy.stats.permutation_test((np.array(values),), np.mean, alternative=alternative,
                                          permutation_type="samples", n_resamples=np.inf)
    assert mine.p_value == pytest.approx(min(theirs.pvalue, 1.0), abs=1e-9)
    assert mine.effect == pytest.approx(np.mean(values))


def test_sign_flip_test_closed_forms_and_bad_input():
    # All eight above the null: only the identity assignment reaches the mean, p = 2^-8.
    assert stats.sign_flip_test([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).p_value == 1 / 256
    assert stats.sign_flip_test([1.0, 2.0], null=1.5).p_value == pytest.approx(0.75)  # 3 of 4
    with pytest.raises(ValueError, match="values"):
        stats.sign_flip_test(list(range(21)))
    with pytest.raises(ValueError, match="alternative"):
        stats.sign_flip_test([1.0, 2.0], alternative="up")
