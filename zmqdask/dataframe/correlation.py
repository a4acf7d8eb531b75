"""Pairwise covariance and Pearson correlation of numeric columns, as tree reductions.

Like pandas, each pair of columns uses the rows where both are present.  Every partition
reduces to, for each pair ``(i, j)``: the count of such rows, the mean of column ``i`` over
them, the co-moment ``sum (x_i - mean_i)(x_j - mean_j)`` and the moment
``sum (x_i - mean_i)^2``.  Partial results merge exactly (Chan et al.'s parallel update), so
values are computed on deviations and large offsets do not cancel digits away.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from zmqdask.dataframe.expr import DEFAULT_SPLIT_EVERY, Expr, Reduction
from zmqdask.errors import UsageError

logger = logging.getLogger(__name__)


class Moments(NamedTuple):
    """Pairwise partial moments; every array is ``k x k`` over the ``k`` columns."""

    pairs: np.ndarray  # pairs[i, j]: rows where columns i and j are both present
    mean: np.ndarray  # mean[i, j]: mean of column i over rows where i and j are present
    comoment: np.ndarray
    moment: np.ndarray  # moment[i, j]: sum of squared deviations of column i over those rows
    rows: int


def pair_moments(part: pd.DataFrame) -> Moments:
    """The pairwise moments of one partition's columns (all numeric)."""
    values = part.to_numpy(dtype="float64", na_value=np.nan)
    present = ~np.isnan(values)
    weights = present.astype("float64")
    # Shift by the column means first: the sums below then stay small.
    counts = present.sum(axis=0)
    centre = np.where(present, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
    shifted = np.where(present, values - centre, 0.0)
    count = weights.T @ weights
    sums = shifted.T @ weights  # sums[i, j]: sum of column i over rows where j is present
    squares = (shifted * shifted).T @ weights
    products = shifted.T @ shifted
    safe = np.where(count > 0, count, 1.0)
    mean_shifted = sums / safe
    comoment = products - sums * sums.T / safe
    moment = squares - sums * sums / safe
    mean = np.where(count > 0, mean_shifted + centre[:, None], 0.0)
    zero = count == 0
    return Moments(count, mean, np.where(zero, 0.0, comoment), np.where(zero, 0.0, moment), len(values))


def merge_moments(parts: Sequence[Moments]) -> Moments:
    """Merge partial moments of disjoint rows."""
    count, mean, comoment, moment, rows = parts[0]
    for other in parts[1:]:
        rows += other.rows
        total = count + other.pairs
        safe = np.where(total > 0, total, 1.0)
        delta = other.mean - mean  # delta[i, j]: difference of column i's means over pair rows
        weight = count * other.pairs / safe
        comoment = comoment + other.comoment + delta * delta.T * weight
        moment = moment + other.moment + delta * delta * weight
        mean = np.where(total > 0, mean + delta * other.pairs / safe, 0.0)
        count = total
    return Moments(count, mean, comoment, moment, rows)


def finish_moments(
    parts: Sequence[Moments], columns: pd.Index, correlation: bool, min_periods: int, ddof: int
) -> pd.DataFrame:
    """The covariance (or correlation) matrix from merged moments."""
    count, _, comoment, moment, rows = merge_moments(parts)
    if count.size and count.min() < rows:
        ddof = 1  # pandas honours ddof only when no value is missing
    with np.errstate(invalid="ignore", divide="ignore"):
        if correlation:
            values = comoment / np.sqrt(moment * moment.T)
        else:
            values = comoment / (count - ddof)
    enough = (count >= max(min_periods, 1)) & (count - (0 if correlation else ddof) > 0)
    values = np.where(enough, values, np.nan)
    if correlation:
        values = np.clip(values, -1.0, 1.0)
    return pd.DataFrame(values, index=columns, columns=columns)


def pair_value(matrix: pd.DataFrame) -> float:
    """The off-diagonal value of a 2 x 2 matrix."""
    value: Any = matrix.iloc[0, 1]
    return float(value)


def moments_reduction(
    expr: Expr,
    correlation: bool,
    min_periods: int | None,
    ddof: int = 1,
    split_every: int | None = None,
) -> Reduction:
    """A reduction of ``expr`` (a DataFrame of numeric columns) to its cov or corr matrix."""
    meta = expr._meta
    columns = meta.columns
    result_meta = pd.DataFrame(np.zeros((0, len(columns))), columns=columns)
    return Reduction(
        expr,
        pair_moments,
        merge_moments,
        finish_moments,
        result_meta,
        {},
        {},
        {"columns": columns, "correlation": correlation, "min_periods": min_periods or 1, "ddof": ddof},
        split_every or DEFAULT_SPLIT_EVERY,
        "corr" if correlation else "cov",
    )


def check_method(method: str) -> None:
    """Only Pearson correlation can be merged from partial moments."""
    if method != "pearson":
        raise UsageError(f"only method='pearson' is supported, not {method!r}")


def numeric_frame(meta: Any, numeric_only: bool) -> list[Any]:
    """The columns a covariance or correlation matrix covers (pandas' choice)."""
    numeric = list(meta.select_dtypes(include=["number", "bool"]).columns)
    if not numeric_only and len(numeric) != len(meta.columns):
        others = [c for c in meta.columns if c not in numeric]
        raise UsageError(f"columns {others} are not numeric; select numeric columns or pass numeric_only=True")
    return numeric
