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


def test_length_iterations_figure_plots_rounds_and_gains_over_pi0():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from gsfh_utils.lab import plotting

    rows = []
    for seed, shift in ((0, 0.0), (1, 2.0)):  # the gains are the same in both seeds
        rows.append({"seed": seed, "method": "sft", "length": 3.0, "gold": shift,
                     "proxy": 10 + shift})
        for number in (1, 2):
            rows.append({"seed": seed, "method": "offline_dpo_rounds", "round": number,
                         "length": 3.0 + number, "gold": shift + 0.1 * number,
                         "proxy": 10 + shift + number})
        for method, slope in (("gshf_path", 1.0), ("gshf_pi0_path", 0.5)):
            for iteration in (0, 1):
                rows.append({"seed": seed, "method": method, "iteration": iteration,
                             "length": 4.0 + slope * iteration, "gold": shift + 0.2 * iteration,
                             "proxy": 10 + shift + 2 * iteration})
    for method in ("rso", "multi_step_rs"):
        rows.append({"seed": 0, "method": method, "length": 7.0, "gold": 0.0, "proxy": 0.0})
    fig = plotting.length_iterations_figure(pd.DataFrame(rows))
    left, right = fig.axes
    gshf_gold = [line for line in right.containers if line.get_label() == "GSHF-DPO gold"][0]
    assert list(gshf_gold.lines[0].get_ydata()) == pytest.approx([0.0, 0.0, 0.2])
    assert list(gshf_gold.lines[0].get_xdata()) == [0, 1, 2]
    offline = [c for c in left.containers if c.get_label().startswith("offline DPO")][0]
    assert list(offline.lines[0].get_ydata()) == pytest.approx([3.0, 4.0, 5.0])
    matplotlib.pyplot.close(fig)
