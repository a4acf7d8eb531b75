"""Summary statistics of partitioned frames: ``describe``, ``value_counts`` and ``nunique``.

``describe`` is exact: each described column is gathered (that column only) into one task
which runs pandas' own ``describe``, and a last task puts the columns side by side.
``value_counts`` and ``nunique`` are tree reductions over per-partition counts and distinct
values.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import pandas as pd

from zmqdask.dataframe.groupby import concat_nonempty

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------


def describe_gathered(pieces: Sequence[pd.Series]) -> pd.Series:
    """``describe`` of one column from its pieces (in partition order)."""
    return concat_nonempty(list(pieces)).describe()


def describe_assemble(descriptions: Sequence[pd.Series], columns: pd.Index) -> pd.DataFrame:
    """Put per-column descriptions side by side, as ``DataFrame.describe`` does."""
    frame = pd.concat(list(descriptions), axis=1)
    frame.columns = columns
    return frame


def describe_columns(meta: pd.DataFrame | pd.Series) -> list[Hashable]:
    """The columns ``describe`` reports on, chosen by pandas from the schema."""
    if isinstance(meta, pd.Series):
        return [meta.name]
    return list(meta.describe().columns)


# --------------------------------------------------------------------------------------------
# value_counts
# --------------------------------------------------------------------------------------------


def value_counts_chunk(series: pd.Series, dropna: bool = True) -> pd.Series:
    """Counts of each value in one partition, in order of first appearance."""
    return series.value_counts(sort=False, dropna=dropna)


def value_counts_combine(counts: Sequence[pd.Series]) -> pd.Series:
    """Add up partial counts, keeping the first-appearance order of the values."""
    joined = concat_nonempty(list(counts))
    if len(counts) == 1:
        return joined
    summed = joined.groupby(level=0, sort=False, dropna=False).sum()
    summed.name = joined.name
    return summed


def value_counts_aggregate(
    counts: Sequence[pd.Series], sort: bool = True, ascending: bool = False, normalize: bool = False
) -> pd.Series:
    """Final counts (or proportions), sorted like ``Series.value_counts``."""
    result = value_counts_combine(counts)
    if normalize:
        total = result.sum()
        result = result / total if total else result.astype("float64")
        result.name = "proportion"
    else:
        result.name = "count"
    if sort:
        result = result.sort_values(ascending=ascending)
    return result


# --------------------------------------------------------------------------------------------
# nunique
# --------------------------------------------------------------------------------------------


def unique_chunk(obj: pd.DataFrame | pd.Series, dropna: bool = True) -> dict[Hashable, pd.Series]:
    """Distinct values of each column (a Series counts as one column named ``None``)."""
    if isinstance(obj, pd.Series):
        columns = {None: obj}
    else:
        columns = {column: obj[column] for column in obj.columns}
    out = {}
    for column, values in columns.items():
        if dropna:
            values = values.dropna()
        out[column] = values.drop_duplicates().reset_index(drop=True)
    return out


def unique_combine(chunks: Sequence[dict[Hashable, pd.Series]]) -> dict[Hashable, pd.Series]:
    """Distinct values of each column over several chunks."""
    if len(chunks) == 1:
        return chunks[0]
    return {
        column: concat_nonempty([chunk[column] for chunk in chunks]).drop_duplicates().reset_index(drop=True)
        for column in chunks[0]
    }


def nunique_aggregate(chunks: Sequence[dict[Hashable, pd.Series]], columns: pd.Index | None) -> Any:
    """The number of distinct values: an int for a Series, a Series by column for a frame."""
    merged = unique_combine(chunks)
    if columns is None:
        return len(merged[None])
    return pd.Series([len(merged[column]) for column in columns], index=columns, dtype="int64")
