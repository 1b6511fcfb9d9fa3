"""Phase diagrams from a sweep's tidy table: per-cell win probabilities and effect sizes, the
boundary where an effect changes sign, per-seed rates.

- ``win_table``: per cell, the probability that one method beats another over the seeds (ties
  count half) and the mean paired difference, from the per-seed metrics.
- ``sign_boundary``: the edges between neighbouring cells of a grid on opposite sides of a
  threshold; ``phase_heatmap`` draws a seaborn heatmap with that boundary.
- ``per_seed_slopes``: the least-squares slope of ``log y`` on ``log x`` within each seed (the
  instance is the seed's, so the instance's level drops out of the slope); ``local_slopes``: its
  mean between consecutive ``x``; ``mean_interval``: the mean of independent values with its
  two-sided t interval.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats


def win_table(frame: pd.DataFrame, *, better: str, worse: str, by: list[str]) -> pd.DataFrame:
    """Per cell (the columns ``by``): ``win`` = P(``better`` < ``worse``) over the seeds, ties
    counting half (metrics where smaller is better, e.g. a suboptimality), ``effect`` = mean of
    ``worse - better`` (positive when ``better`` wins on average) and ``seeds``."""
    for column in (better, worse, *by):
        if column not in frame:
            raise ValueError(f"{column}: not a column of the table")
    difference = frame[worse] - frame[better]
    scores = np.sign(difference) * 0.5 + 0.5
    grouped = frame.assign(_score=scores, _difference=difference).groupby(by)
    return pd.DataFrame({"win": grouped["_score"].mean(), "effect": grouped["_difference"].mean(),
                         "seeds": grouped["_score"].size()}).reset_index()


def sign_boundary(values, threshold: float = 0.0) -> list[tuple[tuple[float, float],
                                                                tuple[float, float]]]:
    """Edges of a heatmap (cell ``[i, j]`` occupies ``[j, j+1] x [i, i+1]``, as seaborn draws
    it) between neighbouring cells on opposite sides of ``threshold``: a list of segments
    ``((x0, y0), (x1, y1))``. A cell exactly at the threshold or NaN separates from nothing."""
    side = np.sign(np.asarray(values, dtype=float) - threshold)
    if side.ndim != 2:
        raise ValueError(f"values must be a 2-d grid, got shape {side.shape}")
    rows, columns = side.shape
    segments = []
    for i in range(rows):
        for j in range(columns):
            if j + 1 < columns and side[i, j] * side[i, j + 1] < 0:
                segments.append(((j + 1.0, float(i)), (j + 1.0, i + 1.0)))
            if i + 1 < rows and side[i, j] * side[i + 1, j] < 0:
                segments.append(((float(j), i + 1.0), (j + 1.0, i + 1.0)))
    return segments


def phase_heatmap(ax, table: pd.DataFrame, *, index: str, columns: str, value: str,
                  threshold: float, title: str, fmt: str = ".2f", **heatmap):
    """A seaborn heatmap of ``value`` over ``index`` (rows) x ``columns``, annotated, with the
    boundary where ``value`` crosses ``threshold`` drawn in black. Returns the pivoted grid."""
    import seaborn as sns

    grid = table.pivot(index=index, columns=columns, values=value)
    sns.heatmap(grid, ax=ax, annot=True, fmt=fmt, cbar=False, annot_kws={"size": 7}, **heatmap)
    for (x0, y0), (x1, y1) in sign_boundary(grid.to_numpy(), threshold):
        ax.plot([x0, x1], [y0, y1], color="black", linewidth=2.5)
    ax.set_title(title, fontsize=9)
    ax.set_yticklabels([f"{v:.3g}" for v in grid.index], rotation=0)
    ax.set_xticklabels([f"{v:.3g}" for v in grid.columns])
    return grid


def per_seed_slopes(frame: pd.DataFrame, *, x: str, y: str, seed: str = "seed") -> pd.Series:
    """For each seed, the least-squares slope of ``log y`` on ``log x`` over its rows (at least
    two distinct ``x``; ``y`` positive)."""
    if (frame[y] <= 0).any() or (frame[x] <= 0).any():
        raise ValueError(f"{x} and {y} must be positive for a log-log slope")

    def slope(group):
        if group[x].nunique() < 2:
            raise ValueError(f"seed {group.name}: needs at least two distinct {x}")
        return np.polyfit(np.log(group[x]), np.log(group[y]), 1)[0]

    return frame.groupby(seed)[[x, y]].apply(slope)


def local_slopes(frame: pd.DataFrame, *, x: str, y: str, by: str,
                 seed: str = "seed") -> pd.DataFrame:
    """For each value of ``by`` and each pair of consecutive ``x`` values, the mean over seeds of
    the per-seed slope of ``log y`` on ``log x`` between them (``per_seed_slopes``): columns
    ``by``, ``x`` (the smaller of the two) and ``slope``."""
    rows = []
    for key, group in frame.groupby(by):
        values = sorted(group[x].unique())
        for low, high in itertools.pairwise(values):
            pair = group[group[x].isin([low, high])]
            rows.append({by: key, x: low,
                         "slope": per_seed_slopes(pair, x=x, y=y, seed=seed).mean()})
    return pd.DataFrame(rows)


def mean_interval(values, level: float = 0.99) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of independent ``values`` and its two-sided ``level``
    Student-t interval."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        raise ValueError("values: need at least two")
    mean = float(values.mean())
    half = float(scipy_stats.t.ppf(0.5 + level / 2, values.size - 1)
                 * values.std(ddof=1) / np.sqrt(values.size))
    return mean, mean - half, mean + half
