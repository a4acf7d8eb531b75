"""Shuffles: hash partitioning, and sorting (``set_index``, ``sort_values``) by sampled boundaries.

A shuffle runs as three layers of tasks, so data moves between workers and never through
the client:

1. *split*: each input partition is cut into ``n`` buckets (one task per input partition);
2. *pick*: one small task per (input, bucket) takes out one bucket; it runs where the split
   lives, so only that bucket's rows travel on;
3. *gather*: output ``j`` concatenates bucket ``j`` of every input (in input order) and, for
   sorts, sorts it.

Sorting first samples each partition (sorted values at evenly spaced ranks plus the row
count), merges the samples into weighted quantiles and uses those as bucket boundaries.

A categorical key sorts in the order of its categories, as pandas sorts it.  Partitions may
hold different categories (``astype("category")`` categorizes each partition's own values);
the whole column then sorts in the order of the sorted union of all partitions' categories,
which is how pandas sorts the column once ``union_categoricals`` (or the concatenation of
the result, see ``lower.unify_categories``) has unified them.  The split casts the key to
that one dtype, so every output partition holds the same categories.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.util import hash_pandas_object

from zmqdask.dataframe.expr import Expr, Reduction, RowMover, node, unknown_divisions
from zmqdask.dataframe.lower import sorted_union_of_categories, unify_categories
from zmqdask.dataframe.wrapping import expr_of, new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)

NaPosition = Literal["first", "last"]
"""Where missing sort keys go, as pandas' ``na_position``."""

SAMPLES_PER_PARTITION = 128
"""Sorted values taken from each partition to estimate sort boundaries."""


# --------------------------------------------------------------------------------------------
# Hash partitioning
# --------------------------------------------------------------------------------------------


def _normalized(values: pd.Series) -> pd.Series:
    """Values that hash equal whenever pandas would join them as equal keys.

    Numbers of every width (and bools) become float64 with ``-0.0`` folded into ``0.0``;
    timestamps are brought to one unit; categoricals are replaced by their values.
    """
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _normalized(pd.Series(np.asarray(values), index=values.index))
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        floats = values.to_numpy(dtype="float64", na_value=np.nan) + 0.0
        return pd.Series(floats, index=values.index)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return pd.Series(values.dt.tz_convert("UTC").dt.tz_localize(None).dt.as_unit("ns"), index=values.index)
    if pd.api.types.is_datetime64_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return values.dt.as_unit("ns")
    if pd.api.types.is_string_dtype(dtype):
        return values.astype(object)
    return values


def key_frame(obj: pd.DataFrame | pd.Series, on: Sequence[Hashable] | None) -> pd.DataFrame:
    """The join keys of ``obj``: columns ``on``, or the index levels when ``on`` is None."""
    if on is None:
        index = obj.index
        return pd.DataFrame(
            {level: pd.Series(index.get_level_values(level), index=range(len(index))) for level in range(index.nlevels)}
        )
    if isinstance(obj, pd.Series):
        return pd.DataFrame({0: obj.reset_index(drop=True)})
    return pd.DataFrame({position: obj[column].reset_index(drop=True) for position, column in enumerate(on)})


def hash_codes(obj: pd.DataFrame | pd.Series, on: Sequence[Hashable] | None, npartitions: int) -> np.ndarray:
    """Bucket number in ``[0, npartitions)`` of each row, from a hash of its keys."""
    keys = key_frame(obj, on)
    normalized = pd.DataFrame({column: _normalized(keys[column]) for column in keys.columns})
    hashes = hash_pandas_object(normalized, index=False).to_numpy()
    return (hashes % np.uint64(npartitions)).astype(np.int64)


def split_by_codes(obj: Any, codes: np.ndarray, npartitions: int) -> list[Any]:
    """Cut ``obj`` into ``npartitions`` pieces by bucket code, keeping row order in each."""
    # Narrow codes make numpy's stable sort a radix sort, several times faster.
    narrow = codes.astype(np.uint16) if npartitions <= 2**16 else codes
    order = np.argsort(narrow, kind="stable")
    counts = np.bincount(codes, minlength=npartitions)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    ordered = obj.iloc[order]
    return [ordered.iloc[bounds[i] : bounds[i + 1]] for i in range(npartitions)]


def hash_split(obj: Any, on: Sequence[Hashable] | None, npartitions: int) -> list[Any]:
    """Split a partition into ``npartitions`` buckets by the hash of ``on`` (or of its index)."""
    return split_by_codes(obj, hash_codes(obj, on, npartitions), npartitions)


def pick(buckets: Sequence[Any], position: int) -> Any:
    """One bucket of a split partition."""
    return buckets[position]


def gather(pieces: Sequence[Any]) -> Any:
    """Concatenate the pieces of one output bucket, in input order."""
    full = [piece for piece in pieces if len(piece)]
    if not full:
        return pieces[0]
    if len(full) == 1:
        return full[0]
    return pd.concat(unify_categories(full))


# --------------------------------------------------------------------------------------------
# Sorting by sampled boundaries
# --------------------------------------------------------------------------------------------


def _sort_key(obj: pd.DataFrame | pd.Series, by: Hashable | None) -> pd.Series:
    """The values sorted on: column ``by``, the index when ``by`` is None, a Series' own values."""
    if by is None:
        return pd.Series(obj.index, index=obj.index)
    if isinstance(obj, pd.Series):
        return obj
    return obj[by]


def sample_partition(obj: pd.DataFrame | pd.Series, by: Hashable | None, nsamples: int) -> tuple[pd.Series, int]:
    """Sorted values of ``by`` (None: the index) at evenly spaced ranks, and the count of values.

    The first and last samples are the partition's minimum and maximum.
    """
    values = _sort_key(obj, by).dropna()
    count = len(values)
    if values.dtype.kind in "iuf" and isinstance(values.dtype, np.dtype):
        # Only the sorted values matter here (no labels, no stability): numpy sorts faster.
        ordered = pd.Series(np.sort(values.to_numpy()), dtype=values.dtype, name=values.name)
    else:
        ordered = values.sort_values(kind="stable").reset_index(drop=True)
    if count <= nsamples:
        return ordered, count
    positions = np.unique(np.linspace(0, count - 1, num=nsamples).round().astype(np.int64))
    return ordered.iloc[positions].reset_index(drop=True), count


Boundaries = list[Any] | pd.Categorical
"""Bucket boundaries: values, or for a categorical key a Categorical whose dtype gives the
order (and the categories) every partition is split and sorted in."""


def sort_dtype(samples: Sequence[pd.Series]) -> pd.CategoricalDtype | None:
    """The categorical dtype in which the sort key is ordered, None when it is not categorical.

    Partitions sharing one dtype keep it (its categories' order, ordered or not); when their
    categories differ the order is the sorted union of them all (the samples carry each
    partition's whole dtype, unused categories included), ordered if the key is.
    """
    dtypes = [values.dtype for values in samples if isinstance(values.dtype, pd.CategoricalDtype)]
    if not dtypes or len(dtypes) < len(samples):
        return None
    if all(dtype == dtypes[0] for dtype in dtypes):
        return dtypes[0]
    union = sorted_union_of_categories([values.array for values in samples])
    return pd.CategoricalDtype(union, ordered=bool(dtypes[0].ordered))


def choose_boundaries(samples: Sequence[tuple[pd.Series, int]], npartitions: int) -> tuple[Any, Boundaries, Any]:
    """Merge partition samples into ``(minimum, boundaries, maximum)``.

    ``boundaries`` holds at most ``npartitions - 1`` strictly increasing values, each above the
    minimum; bucket ``i`` receives the values in ``[boundaries[i-1], boundaries[i])``.  For a
    categorical key they are a Categorical in the key's :func:`sort_dtype`.  All three are
    None-ish when there are no values at all (minimum and maximum None, no boundaries).
    """
    dtype = sort_dtype([values for values, _ in samples])
    pieces = [(values, count) for values, count in samples if count > 0]
    if not pieces:
        return None, [], None
    weights = np.concatenate([np.full(len(values), count / len(values)) for values, count in pieces])
    merged = pd.concat([values if dtype is None else values.astype(dtype) for values, _ in pieces], ignore_index=True)
    order = np.argsort(merged.to_numpy(), kind="stable") if _numpy_sortable(merged) else _pandas_order(merged)
    merged = merged.iloc[order].reset_index(drop=True)
    cumulative = np.cumsum(weights[order])
    total = cumulative[-1]
    targets = total * np.arange(1, npartitions) / npartitions
    positions = np.minimum(np.searchsorted(cumulative, targets, side="left"), len(merged) - 1)
    minimum, maximum = merged.iloc[[0, -1]].tolist()
    boundaries: list[Any] = []
    # merged is sorted and positions never decrease: a value unequal to the one before is
    # above it (in the key's own order, which for categoricals is not the values' order).
    for value in merged.iloc[positions].tolist():
        if value != minimum and (not boundaries or value != boundaries[-1]):
            boundaries.append(value)
    if dtype is not None:
        return minimum, pd.Categorical(boundaries, dtype=dtype), maximum
    return minimum, boundaries, maximum


def _numpy_sortable(values: pd.Series) -> bool:
    return values.dtype.kind in "iufmM"


def _pandas_order(values: pd.Series) -> np.ndarray:
    return values.reset_index(drop=True).sort_values(kind="stable").index.to_numpy()


def in_sort_dtype(obj: Any, by: Hashable | None, boundaries: Boundaries) -> Any:
    """``obj`` with its categorical sort key (column ``by``, the index when None, or a
    Series' values) cast to the dtype of categorical ``boundaries``; else ``obj`` itself.

    Every value of a partition is among the categories of that dtype, so none is lost.
    """
    if not isinstance(boundaries, pd.Categorical):
        return obj
    key = _sort_key(obj, by)
    if not isinstance(key.dtype, pd.CategoricalDtype) or key.dtype == boundaries.dtype:
        return obj
    if by is None:
        return obj.set_axis(obj.index.astype(boundaries.dtype), axis=0)
    if isinstance(obj, pd.Series):
        return obj.astype(boundaries.dtype)
    return obj.astype({by: boundaries.dtype})


def boundary_codes(
    obj: pd.DataFrame | pd.Series,
    by: Hashable | None,
    boundaries: Boundaries,
    ascending: bool = True,
    na_position: NaPosition = "last",
) -> np.ndarray:
    """Bucket of each row: ``[b[i-1], b[i])`` ranges, reversed when descending; missing keys in
    the last bucket, or the first with ``na_position="first"``."""
    nbuckets = len(boundaries) + 1
    key = _sort_key(in_sort_dtype(obj, by, boundaries), by)
    missing = key.isna().to_numpy()
    if len(boundaries) and isinstance(boundaries, pd.Categorical):
        # Codes of one dtype compare in the order of its categories.
        codes = np.searchsorted(boundaries.codes, key.cat.codes.to_numpy(), side="right").astype(np.int64)
    elif len(boundaries) and key.dtype.kind in "iuf" and isinstance(key.dtype, np.dtype):
        values = key.to_numpy()
        codes = np.searchsorted(np.asarray(list(boundaries), dtype=key.dtype), values, side="right").astype(np.int64)
    elif len(boundaries):
        edges = pd.Series(list(boundaries), dtype=key.dtype)
        codes = np.zeros(len(key), dtype=np.int64)
        present = ~missing
        codes[present] = edges.searchsorted(key[present], side="right")
    else:
        codes = np.zeros(len(key), dtype=np.int64)
    if not ascending:
        codes = nbuckets - 1 - codes
    # pandas places missing values by na_position whatever the direction.
    codes[missing] = 0 if na_position == "first" else nbuckets - 1
    return codes


def boundary_split(
    obj: Any,
    by: Hashable | None,
    boundaries: Boundaries,
    nbuckets: int,
    ascending: bool = True,
    na_position: NaPosition = "last",
) -> list[Any]:
    """Split a partition into ``nbuckets`` by sort boundaries (extra buckets stay empty); a
    categorical key is first cast to the boundaries' dtype (:func:`in_sort_dtype`)."""
    obj = in_sort_dtype(obj, by, boundaries)
    return split_by_codes(obj, boundary_codes(obj, by, boundaries, ascending, na_position), nbuckets)


def boundaries_of(bounds: tuple[Any, Boundaries, Any]) -> Boundaries:
    """The boundary list out of :func:`choose_boundaries`' result."""
    return bounds[1]


def sort_partition(
    pieces: Sequence[pd.DataFrame | pd.Series],
    by: Hashable | list[Hashable],
    ascending: bool | list[bool],
    na_position: NaPosition = "last",
) -> Any:
    """Gather one output bucket and sort it (stable, missing values where ``na_position`` says)."""
    frame = gather(pieces)
    if isinstance(frame, pd.Series):
        return frame.sort_values(ascending=bool(ascending), kind="stable", na_position=na_position)
    return frame.sort_values(by, ascending=ascending, kind="stable", na_position=na_position)


def sorted_edge(
    pieces: Sequence[Any], by: Any, ascending: Any, n: int, last: bool, na_position: NaPosition = "last"
) -> Any:
    """The first (``last``: final) ``n`` rows of the stable sort of ``pieces`` (in order).

    The first rows of a stable sort of all rows are among the first rows of each
    partition's sort, and concatenating in partition order keeps ties in their order.
    """
    ordered = sort_partition(pieces, by, ascending, na_position)
    return ordered.iloc[max(len(ordered) - n, 0) :] if last else ordered.iloc[:n]


def _sorted_edge_chunk(part: Any, by: Any, ascending: Any, n: int, last: bool, na_position: NaPosition = "last") -> Any:
    return sorted_edge([part], by, ascending, n, last, na_position)


def index_partition(pieces: Sequence[pd.DataFrame], column: Hashable, drop: bool = True) -> pd.DataFrame:
    """Gather one output bucket, make ``column`` its index and sort by it (stable)."""
    frame = gather(pieces)
    return frame.set_index(column, drop=drop).sort_index(kind="stable", na_position="last")


# --------------------------------------------------------------------------------------------
# Expression nodes
# --------------------------------------------------------------------------------------------


def _shuffle_layer(
    expr: RowMover,
    split: Callable[..., Any],
    split_args: tuple[Any, ...],
    combine: Callable[..., Any],
    combine_args: tuple[Any, ...] = (),
) -> dict[str, TaskSpec]:
    """The split, pick and gather tasks moving the rows of ``expr.frame`` into ``expr``'s partitions.

    Input ``i`` is cut by ``split(partition_i, *split_args)`` into one bucket per output
    partition; output ``j`` is ``combine(bucket j of every input in input order, *combine_args)``.
    """
    name, frame, nout = expr._name, expr.frame, expr.npartitions
    layer: dict[str, TaskSpec] = {}
    for i in range(frame.npartitions):
        split_key = f"{name}-split-{i}"
        layer[split_key] = (split, (TaskRef(frame._key(i)), *split_args), {})
        for j in range(nout):
            layer[f"{name}-pick-{i}.{j}"] = (pick, (TaskRef(split_key), j), {})
    for j in range(nout):
        pieces = [TaskRef(f"{name}-pick-{i}.{j}") for i in range(frame.npartitions)]
        layer[expr._key(j)] = (combine, (pieces, *combine_args), {})
    return layer


def _sampled_bounds_layer(expr: RowMover, by: Hashable | None) -> tuple[dict[str, TaskSpec], TaskRef]:
    """Tasks choosing sort boundaries for ``expr``'s partitions from samples of ``expr.frame``.

    Every input partition is sampled on ``by`` (None: the index); one task merges the
    samples into :func:`choose_boundaries`' result, to which the returned reference points.
    """
    name, frame = expr._name, expr.frame
    layer: dict[str, TaskSpec] = {}
    samples = []
    for i in range(frame.npartitions):
        key = f"{name}-sample-{i}"
        layer[key] = (_sample_task, (TaskRef(frame._key(i)), by, SAMPLES_PER_PARTITION), {})
        samples.append(TaskRef(key))
    bounds_key = f"{name}-bounds"
    layer[bounds_key] = (choose_boundaries, (samples, expr.npartitions), {})
    return layer, TaskRef(bounds_key)


def _split_sorted(
    obj: Any,
    by: Hashable | None,
    bounds: tuple[Any, Boundaries, Any],
    nbuckets: int,
    ascending: bool,
    na_position: NaPosition = "last",
) -> list[Any]:
    """:func:`boundary_split` with the boundaries taken from :func:`choose_boundaries`' result."""
    return boundary_split(obj, by, bounds[1], nbuckets, ascending, na_position)


def _split_within(
    obj: Any, by: Hashable | None, bounds: tuple[Any, Boundaries, Any], nbuckets: int, ascending: bool
) -> list[Any]:
    """:func:`_split_sorted` for divisions given by the caller, which must hold every key."""
    key = _sort_key(obj, by).dropna()
    if len(key):
        low, high = key.min(), key.max()
        if low < bounds[0] or high > bounds[2]:
            raise ValueError(
                f"set_index(divisions=...) runs from {bounds[0]} to {bounds[2]}, but the column holds "
                f"{low} to {high} here: give divisions that span every value (or none, to sample them)"
            )
    return _split_sorted(obj, by, bounds, nbuckets, ascending)


def _sample_task(obj: Any, by: Hashable | None, nsamples: int) -> tuple[pd.Series, int]:
    return sample_partition(obj, by, nsamples)


class Shuffle(RowMover):
    """A :class:`RowMover` into ``nout`` partitions whose index bounds are not known in advance.

    Subclasses are :func:`node` classes declaring the fields ``frame`` and ``nout``.
    """

    nout: int

    @property
    def npartitions(self) -> int:
        return self.nout

    @property
    def divisions(self) -> tuple[Any, ...]:
        return unknown_divisions(self.nout)


@node
class HashShuffle(Shuffle):
    """Rows of ``frame`` moved into ``npartitions`` partitions by the hash of ``on``.

    ``on`` is a tuple of column labels, or None for the index.  Equal keys (including
    numbers of different dtypes that compare equal) land in the same output partition.
    """

    frame: Expr
    on: tuple[Hashable, ...] | None
    nout: int

    def _prefix(self) -> str:
        return "hash-shuffle"

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if needed is None or self.on is None:
            return needed
        return needed | frozenset(self.on)

    def _layer(self) -> dict[str, TaskSpec]:
        on = None if self.on is None else list(self.on)
        return _shuffle_layer(self, hash_split, (on, self.nout), gather)


@node
class SortValues(Shuffle):
    """Rows of ``frame`` sorted by ``by`` across partitions (stable; missing keys last, or
    first with ``na_position="first"``).

    Boundaries come from per-partition samples inside the same graph, so the input is read
    once for both sampling and moving.  The first key decides the partition; rows missing
    it go to the last partition, or the first.
    """

    frame: Expr
    by: tuple[Hashable, ...]
    ascending: tuple[bool, ...]
    nout: int
    na_position: NaPosition = "last"

    def _prefix(self) -> str:
        return "sort-values"

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if needed is None or not isinstance(self.frame._meta, pd.DataFrame):
            return needed
        return needed | frozenset(self.by)

    def sort_arguments(self) -> tuple[Any, Any, NaPosition]:
        """``by``, ``ascending`` and ``na_position`` as pandas' ``sort_values`` takes them (a
        list only for several keys)."""
        by: Any = list(self.by) if len(self.by) > 1 else self.by[0]
        ascending: Any = list(self.ascending) if len(self.ascending) > 1 else self.ascending[0]
        return by, ascending, self.na_position

    def _layer(self) -> dict[str, TaskSpec]:
        first = self.by[0]
        layer, bounds = _sampled_bounds_layer(self, first)
        split_args = (first, bounds, self.nout, self.ascending[0], self.na_position)
        layer.update(_shuffle_layer(self, _split_sorted, split_args, sort_partition, self.sort_arguments()))
        return layer


def sorted_edge_reduction(sort: SortValues, n: int, last: bool) -> Reduction:
    """``sort.head(n)`` (``last``: ``tail``) as a tree reduction over the unsorted partitions."""
    by, ascending, na_position = sort.sort_arguments()
    kwargs = {"by": by, "ascending": ascending, "n": int(n), "last": last, "na_position": na_position}
    return Reduction(
        sort.frame,
        _sorted_edge_chunk,
        sorted_edge,
        sorted_edge,
        sort._meta,
        kwargs,
        kwargs,
        kwargs,
        label="sorted-tail" if last else "sorted-head",
    )


class IndexByColumn(RowMover):
    """A :class:`RowMover` that makes ``column`` the index, each output partition sorted by it.

    Subclasses are :func:`node` classes declaring the fields ``frame`` and ``column``, and
    say how the range boundaries are found.
    """

    column: Hashable

    def _prefix(self) -> str:
        return "set-index"

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta.set_index(self.column)

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if needed is None:
            return None
        return needed | {self.column}

    def _ranges_layer(
        self, bounds: tuple[Any, Boundaries, Any] | TaskRef, split: Callable[..., list[Any]] | None = None
    ) -> dict[str, TaskSpec]:
        """The tasks moving rows into the ranges of ``bounds`` (:func:`choose_boundaries`' form)."""
        n = self.npartitions
        split = split or _split_sorted
        return _shuffle_layer(self, split, (self.column, bounds, n, True), index_partition, (self.column,))


@node
class SetIndex(IndexByColumn):
    """``frame`` re-partitioned by ``column`` into ranges given by ``division_values``, indexed by it."""

    frame: Expr
    column: Hashable
    division_values: tuple[Any, ...]
    given: bool = False
    """The divisions came from the caller: a key outside them is an error (the sampled ones
    hold the data's own minimum and maximum)."""
    categories: pd.Index | None = None
    """For a categorical column with sampled divisions: the categories of its
    :func:`sort_dtype`, in order, to which every partition casts the column."""

    @property
    def npartitions(self) -> int:
        return len(self.division_values) - 1

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.division_values

    def _layer(self) -> dict[str, TaskSpec]:
        boundaries: Boundaries = list(self.division_values[1:-1])
        if self.categories is not None:
            ordered = bool(self.frame._meta[self.column].dtype.ordered)
            boundaries = pd.Categorical(boundaries, dtype=pd.CategoricalDtype(self.categories, ordered=ordered))
        bounds = (self.division_values[0], boundaries, self.division_values[-1])
        return self._ranges_layer(bounds, _split_within if self.given else None)


@node
class SampledSetIndex(IndexByColumn, Shuffle):
    """``frame`` indexed and sorted by ``column``, with range boundaries sampled inside the graph.

    Partitions are sorted and ordered like :class:`SetIndex`'s, but their divisions are not
    known on the client.
    """

    frame: Expr
    column: Hashable
    nout: int

    def _layer(self) -> dict[str, TaskSpec]:
        layer, bounds = _sampled_bounds_layer(self, self.column)
        layer.update(self._ranges_layer(bounds))
        return layer


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _may_block() -> bool:
    """Whether a blocking computation is allowed here (not inside an asynchronous client's loop)."""
    from zmqdask.base import ensure_blocking_allowed, get_client
    from zmqdask.errors import SyncInAsyncError

    client = get_client()
    if client is None:
        return True
    try:
        ensure_blocking_allowed(client, "")
    except SyncInAsyncError:
        return False
    return True


def hash_shuffle(frame: Any, on: Hashable | list[Hashable] | None, npartitions: int | None = None) -> Any:
    """``frame`` with rows moved so that equal values of ``on`` (None: the index) share a partition."""
    expr = expr_of(frame)
    keys = None if on is None else tuple(on) if isinstance(on, list) else (on,)
    return new_collection(HashShuffle(expr, keys, npartitions or expr.npartitions))


def compute_divisions(frame: Any, column: Hashable, npartitions: int) -> tuple[Any, ...]:
    """Divisions splitting ``column`` of ``frame`` into about ``npartitions`` equal ranges.

    Computes the samples now (one pass over the data, on the current client if any).
    """
    minimum, boundaries, maximum = _compute_bounds(frame, column, npartitions)
    if minimum is None:
        return (None, None)
    return (minimum, *boundaries, maximum)


def _compute_bounds(frame: Any, column: Hashable, npartitions: int) -> tuple[Any, Boundaries, Any]:
    """:func:`choose_boundaries` over samples of ``column`` of every partition, computed now."""
    expr = expr_of(frame)
    samples = Reduction(
        expr,
        _sample_task,
        _concat_samples,
        _pick_bounds,
        None,
        {"by": column, "nsamples": SAMPLES_PER_PARTITION},
        {},
        {"npartitions": npartitions},
        split_every=max(2, expr.npartitions),
        label="set-index-divisions",
        columns_needed=(column,),
    )
    bounds: tuple[Any, Boundaries, Any] = new_collection(samples).compute()
    return bounds


def _concat_samples(samples: list[Any]) -> list[Any]:
    return [item for piece in samples for item in (piece if isinstance(piece, list) else [piece])]


def _pick_bounds(samples: list[Any], npartitions: int) -> tuple[Any, Boundaries, Any]:
    return choose_boundaries(_concat_samples(samples), npartitions)


def set_index(frame: Any, column: Hashable, *, npartitions: int | None = None, divisions: Any = None) -> Any:
    """``frame`` indexed and sorted by ``column``, partitioned by ranges (known divisions).

    Without ``divisions`` the ranges are computed now from a sample of every partition; inside
    an asynchronous client's running event loop (where that would block) they are sampled
    inside the graph instead, and the result's divisions are unknown.
    """
    expr = expr_of(frame)
    meta = expr._meta
    if not isinstance(meta, pd.DataFrame) or column not in meta.columns:
        raise UsageError(f"set_index needs a column of the frame; {column!r} is not one")
    if divisions is None:
        wanted = npartitions or expr.npartitions
        if not _may_block():
            # Inside an asynchronous client's event loop the sample cannot be computed now:
            # the boundaries are chosen inside the graph instead, and divisions stay unknown.
            logger.debug("set_index(%r) in a running event loop: divisions will be unknown", column)
            return new_collection(SampledSetIndex(expr, column, wanted))
        minimum, boundaries, maximum = _compute_bounds(frame, column, wanted)
        if minimum is None:
            # No values at all: one empty partition with unknown bounds.
            return new_collection(SetIndex(expr, column, (None, None)))
        categories = boundaries.categories if isinstance(boundaries, pd.Categorical) else None
        return new_collection(SetIndex(expr, column, (minimum, *boundaries, maximum), categories=categories))
    divisions = tuple(divisions)
    if len(divisions) < 2:
        raise UsageError("divisions need at least two values (the bounds of one partition)")
    if any(divisions[k + 1] < divisions[k] for k in range(len(divisions) - 1)):
        raise UsageError("divisions must be sorted")
    return new_collection(SetIndex(expr, column, divisions, given=True))


def sort_values(
    frame: Any, by: Hashable | list[Hashable], *, ascending: bool | list[bool] = True, na_position: str = "last"
) -> Any:
    """``frame`` sorted by ``by`` across partitions; ties keep their original order and
    missing values come last (``na_position="first"``: first)."""
    if na_position not in ("first", "last"):
        raise UsageError(f"na_position must be 'first' or 'last', got {na_position!r}")
    position: NaPosition = "first" if na_position == "first" else "last"
    expr = expr_of(frame)
    meta = expr._meta
    keys = list(by) if isinstance(by, list) else [by]
    if isinstance(meta, pd.DataFrame):
        missing = [key for key in keys if key not in meta.columns]
        if missing:
            raise UsageError(f"cannot sort by {missing}: not columns of the frame")
    elif len(keys) != 1:
        raise UsageError("a Series sorts by its values only")
    orders = list(ascending) if isinstance(ascending, list) else [bool(ascending)] * len(keys)
    if len(orders) != len(keys):
        raise UsageError("ascending needs one flag per sort key")
    node_ = SortValues(expr, tuple(keys), tuple(bool(o) for o in orders), expr.npartitions, position)
    return new_collection(node_)
