"""Reading and writing partitioned data: CSV files (whole or in byte ranges) and Parquet.

Both readers are sources that take ``columns=`` (so the optimizer can prune columns into
the read) and the Parquet reader takes row filters, which the optimizer pushes down from
``df[df.x > 0]``.  Parquet needs pyarrow, installed with the ``zmqdask[parquet]`` extra.
"""

from __future__ import annotations

import glob
import io as _io
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Hashable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.expr import Expr, SinglePartition, node, unknown_divisions
from zmqdask.dataframe.sources import ColumnSelectingSource
from zmqdask.dataframe.tokens import tokenize
from zmqdask.dataframe.wrapping import new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)

META_SAMPLE_ROWS = 1000
"""Rows read from the first CSV file at graph-building time to learn the columns and dtypes."""

_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar")
_BLOCK_UNSAFE_OPTIONS = ("skiprows", "skipfooter", "nrows", "chunksize", "iterator", "compression")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _parse_size(value: int | str) -> int:
    if isinstance(value, (int, np.integer)):
        size = int(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise UsageError(f"cannot read {value!r} as a size in bytes (e.g. 64000000 or '64MB')")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if size <= 0:
        raise UsageError("blocksize must be positive")
    return size


def _natural_key(path: str) -> list[Any]:
    # part.10 sorts after part.9: numbers compare as numbers.
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", path)]


def expand_paths(urlpath: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], suffix: str = "") -> list[str]:
    """Local files named by a path, a glob pattern, a directory (files ending in ``suffix``) or a list."""
    if isinstance(urlpath, (list, tuple)):
        paths = [str(os.fspath(p)) for p in urlpath]
    else:
        text = str(os.fspath(urlpath))  # type: ignore[arg-type]
        if text.startswith("file://"):
            text = text[len("file://") :]
        if os.path.isdir(text):
            paths = [
                os.path.join(text, name)
                for name in os.listdir(text)
                if name.endswith(suffix) and not name.startswith((".", "_"))
            ]
        elif any(char in text for char in "*?["):
            paths = glob.glob(text)
        else:
            paths = [text]
        paths = sorted(paths, key=_natural_key)
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise UsageError(f"no such file(s): {missing or urlpath!r}")
    return paths


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def file_stamps(paths: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Each file's size and modification time (nanoseconds), in the order of ``paths``."""
    stamps = []
    for path in dict.fromkeys(paths):
        status = os.stat(path)
        stamps.append((status.st_size, status.st_mtime_ns))
    return tuple(stamps)


def read_block_bytes(path: str, start: int, stop: int) -> bytes:
    """The lines of ``path`` that begin at a byte offset in ``[start, stop)``."""
    with open(path, "rb") as handle:
        if start > 0:
            # The line that holds byte start-1 belongs to the previous block.
            handle.seek(start - 1)
            handle.readline()
        begin = handle.tell()
        handle.seek(max(stop - 1, 0))
        if stop > 0:
            handle.readline()
        end = handle.tell()
        if end <= begin:
            return b""
        handle.seek(begin)
        return handle.read(end - begin)


def _conform(frame: pd.DataFrame, dtypes: dict[Hashable, Any] | None, path: str) -> pd.DataFrame:
    """A block with the schema's dtypes, or a ValueError saying how to declare them.

    Integers are widened to the float the schema expects (missing values in other blocks),
    text and dates to the schema's own kind, and a column with no value at all in this block
    takes the schema's dtype; any other difference would leave the frame's dtypes wrong.
    """
    if not dtypes:
        return frame
    casts = {}
    mismatched = []
    for column, wanted in dtypes.items():
        if column not in frame.columns:
            continue
        have = frame[column].dtype
        if have == wanted or (isinstance(have, pd.CategoricalDtype) and isinstance(wanted, pd.CategoricalDtype)):
            continue
        have_kind, wanted_kind = getattr(have, "kind", ""), getattr(wanted, "kind", "")
        if (
            (wanted_kind == "f" and have_kind in "iub")
            or (_is_text(have) and _is_text(wanted))
            or (have_kind == wanted_kind == "M")
            or (frame[column].isna().all() and (len(frame) == 0 or wanted_kind not in "iub"))
        ):
            casts[column] = wanted
        else:
            mismatched.append((column, have, wanted))
    if mismatched:
        found = "\n".join(f"  column {c!r}: found {h}, expected {w}" for c, h, w in mismatched)
        declare = ", ".join(f"{c!r}: {_declared(h)!r}" for c, h, _ in mismatched)
        integers = any(getattr(w, "kind", "") in "iu" for _, _, w in mismatched)
        hint = ", or pass assume_missing=True (integer columns read as floats)" if integers else ""
        raise ValueError(
            f"read_csv found other dtypes in {path} than it inferred from the first {META_SAMPLE_ROWS} rows "
            f"of the first file:\n{found}\nDeclare them with dtype={{{declare}}}{hint}"
        )
    return frame.astype(casts) if casts else frame


def _is_text(dtype: Any) -> bool:
    return pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)


def _declared(dtype: Any) -> str:
    # What to declare for a column found with ``dtype``: text as str, numbers as they came.
    return "str" if _is_text(dtype) else str(dtype)


def constant_categorical(length: int, value: Any, categories: list[Any]) -> Any:
    """``length`` times ``value`` as a categorical of ``categories`` (built from codes: a file's
    path, or a hive directory's key value, for every row read from it); None: missing."""
    codes = np.full(length, -1 if value is None else categories.index(value), dtype=np.int32)
    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(categories))


def read_csv_part(
    path: str,
    start: int,
    stop: int | None,
    names: tuple[Hashable, ...] | None,
    columns: tuple[Hashable, ...] | None,
    kwargs: dict[str, Any],
    dtypes: dict[Hashable, Any] | None,
    path_column: Hashable | None = None,
    paths: tuple[str, ...] = (),
) -> pd.DataFrame:
    """One CSV partition: the whole file (``stop`` None) or the lines starting in a byte range.

    A block after the first of its file has no header line: it is read with ``names``.
    ``path_column`` names a categorical column of the file's path (categories: ``paths``).
    """
    options = dict(kwargs)
    if dtypes:
        # A column the schema has as text is text in every block, as in pandas reading the
        # whole file: a block with only numbers in it (the header row of header=None files
        # is in the first block alone) must not read them as numbers.
        declared = options.get("dtype")
        converted = options.get("converters") or {}
        if declared is None or isinstance(declared, dict):
            text = {c: t for c, t in dtypes.items() if _is_text(t) and c not in converted and c != path_column}
            if text:
                options["dtype"] = {**text, **(declared or {})}
    wanted = columns
    if columns is not None and path_column is not None:
        columns = tuple(c for c in columns if c != path_column)
    if columns is not None:
        read = _columns_to_read(columns, kwargs.get("parse_dates"))
        if read is not None:
            # No column at all (len(df) needs only the rows): pandas reads no rows for
            # usecols=[], so read the first column and drop it below.
            options["usecols"] = read if read else [0]
    try:
        if stop is None:
            frame = pd.read_csv(path, **options)
        else:
            data = read_block_bytes(path, start, stop)
            if start > 0:
                options["header"] = None
                options["names"] = list(names or ())
            if not data.strip():
                frame = pd.read_csv(path, nrows=0, **{k: v for k, v in kwargs.items() if k != "usecols"})
                frame = frame[list(columns)] if columns is not None else frame
            else:
                frame = pd.read_csv(_io.BytesIO(data), **options)
    except ValueError as exc:
        # pandas does not say which file a value it could not parse came from.
        hint = ""
        if stop is not None and "inside string" in str(exc):
            # Blocks are cut at line starts: a quoted value holding a line break gets cut.
            hint = "; a quoted value spans lines, so the file cannot be cut in blocks: read it with blocksize=None"
        raise ValueError(f"reading {path}: {exc}{hint}") from exc
    if columns is not None:
        frame = frame[list(columns)]
    if path_column is not None:
        frame[path_column] = constant_categorical(len(frame), path, list(paths))
        if wanted is not None:
            frame = frame[list(wanted)]
    return _conform(frame, dtypes, path)


def _columns_to_read(columns: tuple[Hashable, ...], parse_dates: Any) -> list[Hashable] | None:
    """``usecols`` for reading ``columns``: the date columns pandas must see too (None: all)."""
    wanted = list(columns)
    if parse_dates is None or parse_dates is False:
        return wanted
    if isinstance(parse_dates, (list, tuple)) and all(isinstance(c, str) for c in parse_dates):
        return wanted + [c for c in parse_dates if c not in wanted]
    return None


@node
class ReadCSV(ColumnSelectingSource):
    """CSV partitions: ``blocks`` holds ``(path, start, stop)`` (``stop`` None: the whole file)."""

    blocks: tuple[tuple[str, int, int | None], ...]
    names: tuple[Hashable, ...] | None
    kwargs: dict[str, Any]
    meta: Any
    columns_selected: tuple[Hashable, ...] | None = None
    path_column: Hashable | None = None
    stamps: tuple[tuple[int, int], ...] = ()
    """Each file's size and modification time when the read was made: part of the keys, so
    that a file changed since is read again rather than taken from results of before."""

    def _prefix(self) -> str:
        return "read-csv"

    def _partitioning_identity(self) -> frozenset[str]:
        # The same blocks read with other columns or dtypes hold the same rows.
        options = {k: v for k, v in self.kwargs.items() if k not in ("usecols", "dtype")}
        return frozenset({tokenize("read-csv-rows", self.blocks, options, self.names is None, self.stamps)})

    @property
    def npartitions(self) -> int:
        return len(self.blocks)

    def _task(self, i: int) -> TaskSpec:
        path, start, stop = self.blocks[i]
        dtypes = dict(self._meta.dtypes.items())
        args = (path, start, stop, self.names, self.columns_selected, self.kwargs, dtypes)
        if self.path_column is None:
            return (read_csv_part, args, {})
        paths = tuple(dict.fromkeys(block[0] for block in self.blocks))
        return (read_csv_part, (*args, self.path_column, paths), {})

    def _with_columns(self, columns: list[Any]) -> Expr | None:
        if "index_col" in self.kwargs or "usecols" in self.kwargs:
            return None
        return super()._with_columns(columns)

    def _describe(self) -> str:
        cols = "" if self.columns_selected is None else f", columns={list(self.columns_selected)}"
        return f"{len(self.blocks)} blocks of {len({b[0] for b in self.blocks})} file(s){cols}"


def _csv_blocks(paths: list[str], blocksize: int | None) -> list[tuple[str, int, int | None]]:
    blocks: list[tuple[str, int, int | None]] = []
    for path in paths:
        size = os.path.getsize(path)
        if blocksize is None or size <= blocksize or path.endswith(_COMPRESSED_SUFFIXES):
            blocks.append((path, 0, None))
            continue
        for start in range(0, size, blocksize):
            blocks.append((path, start, min(start + blocksize, size)))
    return blocks


def read_csv(
    urlpath: Any,
    blocksize: int | str | None = None,
    assume_missing: bool = False,
    include_path_column: bool | str = False,
    **kwargs: Any,
) -> Any:
    """A lazy DataFrame over CSV files: one partition per file, or per ``blocksize`` bytes.

    ``urlpath`` is a path, a glob pattern or a list of paths; ``kwargs`` go to
    ``pandas.read_csv`` (``columns=`` is accepted as a synonym of ``usecols=``).  Blocks
    split at line boundaries, so quoted fields must not contain newlines when ``blocksize``
    is given; options that count rows (``skiprows``, ``nrows``...) need whole files.

    The dtypes come from the first rows of the first file; a block that disagrees raises a
    ValueError naming the ``dtype=`` to declare.  As in Dask, ``assume_missing=True`` reads
    integer columns whose dtype is not given as floats, and ``include_path_column`` (True
    or a column name) adds a categorical ``path`` column naming each row's file.
    """
    columns = kwargs.pop("columns", None)
    if columns is not None:
        kwargs["usecols"] = list(columns)
    paths = expand_paths(urlpath)
    size = None if blocksize is None else _parse_size(blocksize)
    if size is not None:
        unsafe = [option for option in _BLOCK_UNSAFE_OPTIONS if option in kwargs]
        if unsafe:
            raise UsageError(f"read_csv options {unsafe} need whole files; drop blocksize")
    head = pd.read_csv(paths[0], nrows=META_SAMPLE_ROWS, **kwargs)
    meta = _unknown_categories(head.iloc[:0], kwargs.get("dtype"))
    if assume_missing:
        declared = kwargs.get("dtype")
        declared = declared if isinstance(declared, dict) else {}
        integers = [c for c, d in meta.dtypes.items() if d.kind in "iu" and c not in declared]
        meta = meta.astype(dict.fromkeys(integers, "float64"))
    path_column: Hashable | None = None
    if include_path_column:
        path_column = "path" if include_path_column is True else include_path_column
        if path_column in meta.columns:
            raise UsageError(f"read_csv(include_path_column=) would replace the column {path_column!r}; name another")
        meta = meta.copy()
        meta[path_column] = pd.Categorical([], categories=list(dict.fromkeys(paths)))
    names = None
    if size is not None:
        header_options = {k: v for k, v in kwargs.items() if k not in ("usecols", "index_col", "dtype", "parse_dates")}
        names = tuple(pd.read_csv(paths[0], nrows=0, **header_options).columns)
    source = ReadCSV(tuple(_csv_blocks(paths, size)), names, dict(kwargs), meta, None, path_column, file_stamps(paths))
    return new_collection(source)


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------


def import_pyarrow() -> Any:
    """The ``pyarrow.parquet`` module, or an ImportError naming the extra that provides it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Parquet support needs pyarrow; install it with: pip install 'zmqdask[parquet]'") from exc
    return pq


_OPERATORS = ("==", "=", "!=", "<", "<=", ">", ">=", "in", "not in")
# Comparisons that pyarrow and pandas answer alike for missing values (both drop the row).
_NULL_SAFE = ("==", "=", "<", "<=", ">", ">=", "in")


def _as_disjunction(filters: Any) -> list[list[tuple[Any, str, Any]]]:
    """Filters as a list of conjunctions (the DNF form of pandas/pyarrow)."""
    if not filters:
        return []
    if all(isinstance(item, tuple) for item in filters):
        groups = [list(filters)]
    elif all(isinstance(item, list) for item in filters):
        groups = [list(group) for group in filters]
    else:
        raise UsageError("filters must be a list of (column, op, value) tuples, or a list of such lists")
    for group in groups:
        for item in group:
            if not (isinstance(item, tuple) and len(item) == 3 and item[1] in _OPERATORS):
                raise UsageError(f"bad filter {item!r}: use (column, op, value) with op in {_OPERATORS}")
    return groups


def _mask(frame: pd.DataFrame, column: Hashable, op: str, value: Any) -> np.ndarray:
    if column in frame.columns:
        values = frame[column]
    else:
        level: Any = column
        values = pd.Series(frame.index.get_level_values(level), index=frame.index)
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Compared by value, as pyarrow compares a dictionary column (a hive directory
        # column, say): an unordered categorical allows only == and != in pandas.
        values = pd.Series(values.to_numpy(), index=values.index)
    if op in ("==", "="):
        result = values == value
    elif op == "!=":
        result = values != value
    elif op == "<":
        result = values < value
    elif op == "<=":
        result = values <= value
    elif op == ">":
        result = values > value
    elif op == ">=":
        result = values >= value
    elif op == "in":
        result = values.isin(list(value))
    else:
        result = ~values.isin(list(value))
    return np.asarray(result.to_numpy(dtype=bool, na_value=False))


def apply_filters(frame: pd.DataFrame, groups: list[list[tuple[Any, str, Any]]]) -> pd.DataFrame:
    """Rows of ``frame`` matching any conjunction of ``groups`` (pandas semantics)."""
    if not groups:
        return frame
    keep = np.zeros(len(frame), dtype=bool)
    for group in groups:
        matched = np.ones(len(frame), dtype=bool)
        for column, op, value in group:
            matched &= _mask(frame, column, op, value)
        keep |= matched
    return frame[keep]


def read_parquet_part(
    path: str,
    columns: tuple[Hashable, ...] | None,
    filters: tuple[Any, ...] | None,
    partition: tuple[tuple[str, Any, tuple[Any, ...]], ...] = (),
) -> pd.DataFrame:
    """One Parquet file as a partition, with columns pruned and rows filtered.

    ``partition`` holds the file's ``(column, value, categories)`` from the ``key=value``
    directories above it (a hive-partitioned dataset): those columns are not in the file
    and are added as categoricals.
    """
    import_pyarrow()
    groups = _as_disjunction(list(filters) if filters else None)
    wanted: Any = None if columns is None else list(columns)
    read_columns = wanted
    if wanted is not None and groups:
        extra = [c for group in groups for c, _, _ in group if c not in wanted]
        read_columns = wanted + list(dict.fromkeys(extra))
    directory_columns = {name for name, _, _ in partition}
    if directory_columns and read_columns is not None:
        read_columns = [c for c in read_columns if c not in directory_columns]
    # pyarrow prunes row groups and rows for null-safe comparisons; the exact pandas
    # semantics are applied afterwards in any case, so both agree on missing values.
    # Conditions on directory columns are left out of what pyarrow sees (the file has no
    # such column); a conjunction without them selects more rows, never fewer.
    safe = [[f for f in group if f[1] in _NULL_SAFE and f[0] not in directory_columns] for group in groups]
    arrow_filters: Any = safe if groups and all(safe) and not _range_indexed(path) else None
    try:
        frame = pd.read_parquet(path, engine="pyarrow", columns=read_columns, filters=arrow_filters)
    except (TypeError, ValueError, NotImplementedError):
        frame = pd.read_parquet(path, engine="pyarrow", columns=read_columns)
    except Exception as exc:  # pyarrow's own errors (e.g. ArrowNotImplementedError)
        if type(exc).__module__.startswith("pyarrow"):
            frame = pd.read_parquet(path, engine="pyarrow", columns=read_columns)
        else:
            raise
    for name, value, categories in partition:
        if wanted is None or name in wanted or any(name == c for group in groups for c, _, _ in group):
            frame[name] = constant_categorical(len(frame), value, list(categories))
    frame = apply_filters(frame, groups)
    if wanted is not None and list(frame.columns) != wanted:
        frame = frame[[c for c in wanted if c in frame.columns]]
    return frame


def _range_indexed(path: str) -> bool:
    """Whether the file stores its index as a range in metadata only.

    pyarrow cannot rebuild such an index for a subset of rows, so those files are filtered
    in pandas after reading.
    """
    pq = import_pyarrow()
    index_columns = (pq.read_schema(path).pandas_metadata or {}).get("index_columns", [])
    return any(isinstance(column, dict) for column in index_columns)


@node
class ReadParquet(ColumnSelectingSource):
    """One partition per Parquet file, with optional column pruning and row filters."""

    paths: tuple[str, ...]
    meta: Any
    division_values: tuple[Any, ...]
    columns_selected: tuple[Hashable, ...] | None = None
    filters: tuple[Any, ...] | None = None
    partitions: tuple[tuple[tuple[str, Any, tuple[Any, ...]], ...], ...] | None = None
    stamps: tuple[tuple[int, int], ...] = ()
    """Each file's size and modification time when the read was made (see ReadCSV)."""
    """Per file, its ``(column, value, categories)`` from ``key=value`` directories."""

    def _prefix(self) -> str:
        return "read-parquet"

    @property
    def npartitions(self) -> int:
        return len(self.paths)

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.division_values

    def _task(self, i: int) -> TaskSpec:
        partition = self.partitions[i] if self.partitions is not None else ()
        return (read_parquet_part, (self.paths[i], self.columns_selected, self.filters, partition), {})

    def _with_filters(self, filters: list[tuple[Any, str, Any]]) -> Expr | None:
        new = [tuple(f) for f in filters]
        current = list(self.filters or ())
        if current and not all(isinstance(item, tuple) for item in current):
            return None  # an OR of conjunctions is left as the user gave it
        merged = current + [f for f in new if f not in current]
        if merged == current:
            return None
        return self._replace(filters=tuple(merged))

    def _describe(self) -> str:
        parts = [f"{len(self.paths)} file(s)"]
        if self.columns_selected is not None:
            parts.append(f"columns={list(self.columns_selected)}")
        if self.filters:
            parts.append(f"filters={list(self.filters)}")
        return ", ".join(parts)


def _parquet_divisions(pq: Any, paths: list[str], meta: pd.DataFrame) -> tuple[Any, ...]:
    """Divisions from the index column's statistics, when the files are sorted by it."""
    unknown = unknown_divisions(len(paths))
    bounds = []
    for path in paths:
        try:
            metadata = pq.ParquetFile(path).metadata
            pandas_meta = pq.read_schema(path).pandas_metadata or {}
        except Exception:
            return unknown
        index_columns = pandas_meta.get("index_columns", [])
        if len(index_columns) != 1 or metadata.num_rows == 0:
            return unknown
        stored = index_columns[0]
        if isinstance(stored, dict):
            # A RangeIndex is kept as (start, stop, step) metadata, not as a column.
            if stored.get("kind") != "range" or stored.get("step", 0) <= 0:
                return unknown
            span = range(stored["start"], stored["stop"], stored["step"])
            if len(span) != metadata.num_rows:
                return unknown
            bounds.append((span[0], span[-1]))
            continue
        names = [metadata.schema.column(k).name for k in range(metadata.num_columns)]
        if stored not in names:
            return unknown
        position = names.index(stored)
        lows, highs = [], []
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(position).statistics
            if stats is None or not stats.has_min_max or stats.null_count:
                return unknown
            lows.append(stats.min)
            highs.append(stats.max)
        bounds.append((min(lows), max(highs)))
    try:
        values = pd.Index([b for pair in bounds for b in pair]).astype(meta.index.dtype)
    except (TypeError, ValueError):
        return unknown
    lows_, highs_ = list(values[0::2]), list(values[1::2])
    if any(highs_[k] > lows_[k + 1] for k in range(len(paths) - 1)):
        return unknown
    return (*lows_, highs_[-1])


def read_parquet(
    path: Any, columns: Sequence[Hashable] | None = None, filters: Any = None, engine: str = "pyarrow", **options: Any
) -> Any:
    """A lazy DataFrame over Parquet files: a file, a directory of ``*.parquet``, a glob or a list.

    A directory laid out as ``key=value/.../file`` (hive partitioning, as pandas and Dask
    write it with ``partition_cols``) gives each key as a categorical column, and filters
    on those keys skip whole files.  One partition per file.  ``filters`` are ``(column, op, value)`` conjunctions (or a
    list of them, OR-ed); divisions are known when the files are sorted by a stored index.
    ``index`` names the column(s) to index each partition by instead of the stored index
    (divisions unknown then), or is False for none (a stored index becomes a column).
    ``engine`` must be pyarrow (or "auto"); other Dask options (``calculate_divisions``,
    ``split_row_groups``...) are accepted and not used.
    """
    _check_engine(engine)
    if columns is not None and not isinstance(columns, (list, tuple)):
        # One column named alone gives a Series, as in Dask and pandas' selection.
        return read_parquet(path, [columns], filters, engine, **options)[columns]
    index = options.pop("index", None)
    if index is not None:
        return _with_index(read_parquet(path, columns, filters, engine, **options), index)
    pq = import_pyarrow()
    groups = _as_disjunction(filters)
    hive = _hive_files(path)
    partitions: tuple[tuple[tuple[str, Any, tuple[Any, ...]], ...], ...] | None = None
    if hive is None:
        paths = expand_paths(path, suffix=".parquet")
        meta = _parquet_meta(pq, paths[0])
    else:
        paths, partitions, categories = _hive_layout(hive, groups)
        meta = _parquet_meta(pq, paths[0])
        for name, values in categories.items():
            meta[name] = pd.Categorical([], categories=list(values))
    missing = [c for c in columns or () if c not in meta.columns]
    if missing:
        raise UsageError(f"columns {missing} are not in {paths[0]}")
    if len(groups) > 1:
        stored_filters: tuple[Any, ...] | None = tuple(list(group) for group in groups)
    else:
        stored_filters = tuple(groups[0]) if groups else None
    source = ReadParquet(
        tuple(paths),
        meta,
        _parquet_divisions(pq, paths, meta),
        None if columns is None else tuple(columns),
        stored_filters,
        partitions,
        file_stamps(paths),
    )
    return new_collection(source)


def _unknown_categories(meta: pd.DataFrame, declared: Any) -> pd.DataFrame:
    """``meta`` with the categories of its categorical columns marked unknown, except those
    declared with their categories (``dtype={"c": pd.CategoricalDtype([...])}``): the first
    rows of the first file do not hold every category of the other files."""
    from zmqdask.dataframe.categorical import mark_unknown

    def listed(column: Hashable) -> bool:
        dtype = declared.get(column) if isinstance(declared, dict) else declared
        return isinstance(dtype, pd.CategoricalDtype) and dtype.categories is not None

    categorical = [c for c, d in meta.dtypes.items() if isinstance(d, pd.CategoricalDtype) and not listed(c)]
    return mark_unknown(meta, categorical) if categorical else meta


def _parquet_meta(pq: Any, path: str) -> pd.DataFrame:
    """The empty frame of a Parquet file's schema; its categorical columns' categories are
    unknown (the schema has none: each file's values have their own)."""
    from zmqdask.dataframe.categorical import mark_unknown

    meta = pq.read_schema(path).empty_table().to_pandas()
    categorical = [c for c in meta.columns if isinstance(meta[c].dtype, pd.CategoricalDtype)]
    return mark_unknown(meta, categorical) if categorical else meta


def _with_index(frame: Any, index: Any) -> Any:
    """``read_parquet``'s ``index=``: False, a column label or a list of them."""
    stored = frame._meta.index
    plain = stored.name is None and isinstance(stored, pd.RangeIndex)
    if index is False:
        return frame.reset_index(drop=plain)
    labels = list(index) if isinstance(index, (list, tuple)) else [index]
    if labels == [stored.name] and not isinstance(stored, pd.MultiIndex):
        return frame
    frame = frame if plain else frame.reset_index()
    missing = [label for label in labels if label not in frame.columns]
    if missing:
        raise UsageError(f"read_parquet(index=...): {missing} not among the columns {list(frame.columns)}")
    return frame.map_partitions(_set_index_part, labels, clear_divisions=True)


def _set_index_part(part: pd.DataFrame, labels: list[Hashable]) -> pd.DataFrame:
    """A partition indexed by ``labels`` (one level, or several)."""
    return part.set_index(labels if len(labels) > 1 else labels[0])


def _hive_files(path: Any) -> list[tuple[str, dict[str, str]]] | None:
    """The files of a hive-partitioned dataset (``dir/key=value/.../file``) with their
    directory values, or None when ``path`` is not a directory laid out that way."""
    if isinstance(path, (list, tuple)):
        return None
    root = str(os.fspath(path))
    if root.startswith("file://"):
        root = root[len("file://") :]
    if not os.path.isdir(root):
        return None
    names = [n for n in os.listdir(root) if not n.startswith((".", "_"))]
    if not names or not all("=" in n and os.path.isdir(os.path.join(root, n)) for n in names):
        return None
    found: list[tuple[str, dict[str, str]]] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted((d for d in subdirectories if not d.startswith((".", "_"))), key=_natural_key)
        relative = os.path.relpath(directory, root)
        parts = [] if relative == "." else relative.split(os.sep)
        if not all("=" in part for part in parts):
            continue
        values = dict(part.split("=", 1) for part in parts)
        for name in sorted(files, key=_natural_key):
            if not name.startswith((".", "_")):
                found.append((os.path.join(directory, name), values))
    if not found:
        raise UsageError(f"no Parquet files under {root!r}")
    return found


def _hive_layout(
    files: list[tuple[str, dict[str, str]]], groups: list[list[tuple[Any, str, Any]]]
) -> tuple[list[str], tuple[tuple[tuple[str, Any, tuple[Any, ...]], ...], ...], dict[str, tuple[Any, ...]]]:
    """Paths, per-file partition values and each directory column's categories, with the
    files that no filter group can match dropped (their directory values rule them out)."""
    names = list(dict.fromkeys(name for _, values in files for name in values))
    raw = {name: sorted({values.get(name, "") for _, values in files}, key=_natural_key) for name in names}
    typed: dict[str, dict[str, Any]] = {}
    for name, texts in raw.items():
        # As pyarrow infers them: whole numbers become integers, anything else stays text.
        # The directory of missing values (pandas and Dask write them there) stands for
        # missing values, not for a value of its own.
        present = [text for text in texts if text != HIVE_MISSING]
        try:
            typed[name] = {text: int(text) for text in present}
        except ValueError:
            typed[name] = {text: text for text in present}
        typed[name][HIVE_MISSING] = None
    categories = {name: tuple(sorted(v for v in typed[name].values() if v is not None)) for name in names}
    paths: list[str] = []
    partitions = []
    for path, values in files:
        row = {name: typed[name][values.get(name, "")] for name in names}
        if groups and not any(_directory_match(row, group) for group in groups):
            continue
        paths.append(path)
        partitions.append(tuple((name, row[name], categories[name]) for name in names))
    if not paths:  # every file ruled out: keep the first, whose rows the filters then drop
        path, values = files[0]
        row = {name: typed[name][values.get(name, "")] for name in names}
        paths.append(path)
        partitions.append(tuple((name, row[name], categories[name]) for name in names))
    return paths, tuple(partitions), categories


HIVE_MISSING = "__HIVE_DEFAULT_PARTITION__"
"""The directory name that pandas, pyarrow and Dask give the rows whose partition key is missing."""


def _directory_match(row: dict[str, Any], group: list[tuple[Any, str, Any]]) -> bool:
    """Whether a conjunction of filters may hold for a file with these directory values."""
    frame = pd.DataFrame({name: [value] for name, value in row.items()})
    conditions = [condition for condition in group if condition[0] in row]
    return not conditions or bool(apply_filters(frame, [conditions]).shape[0])


def _write_layer(
    expr: Expr,
    frame: Expr,
    write: Callable[[Any, str, Any], Any],
    targets: Sequence[str],
    options: Any,
    summarize: Callable[[list[Any]], Any],
) -> dict[str, TaskSpec]:
    """Tasks writing partition ``i`` of ``frame`` to ``targets[i]``, then ``expr``'s one output.

    Each write is ``write(partition, target, options)``; the output is ``summarize`` of
    their results, in partition order.
    """
    layer: dict[str, TaskSpec] = {}
    written = []
    for i, target in enumerate(targets):
        key = f"{expr._name}-part-{i}"
        layer[key] = (write, (TaskRef(frame._key(i)), target, options), {})
        written.append(TaskRef(key))
    layer[expr._key(0)] = (summarize, (written,), {})
    return layer


def _check_engine(engine: str) -> None:
    if engine not in ("pyarrow", "auto"):
        raise UsageError(f"Parquet is read and written with pyarrow; engine={engine!r} is not available")


def _refuse_if_blocking_forbidden(alternative: str) -> None:
    """Raise now if computing would block an asynchronous client's running event loop.

    Writers call this before creating or clearing anything, so a refused write leaves the
    target untouched.
    """
    from zmqdask.base import ensure_blocking_allowed, get_client

    client = get_client()
    if client is not None:
        ensure_blocking_allowed(client, alternative)


def write_parquet_part(part: pd.DataFrame | pd.Series, path: str, write_index: bool | None) -> int:
    """Write one partition to ``path``; returns its number of rows."""
    import_pyarrow()
    frame = part.to_frame() if isinstance(part, pd.Series) else part
    frame.to_parquet(path, engine="pyarrow", index=_index_option(write_index))
    return len(frame)


def _index_option(write_index: bool | None) -> bool:
    # The index as a column, as Dask writes it: left to pandas, a range index would be kept
    # as each file's own start and stop only, which readers of the whole directory misread.
    return write_index is None or write_index


def write_parquet_groups(
    part: pd.DataFrame, path: str, options: tuple[bool | None, tuple[Hashable, ...]]
) -> int:
    """Write one partition as hive-partitioned files: the rows of each value of the
    ``partition_on`` columns to ``<dir>/<col>=<value>/.../<file name>``, without those
    columns; returns its number of rows."""
    import_pyarrow()
    write_index, partition_on = options
    directory, name = os.path.split(path)
    keys = list(partition_on)
    for group_keys, group in part.groupby(keys, sort=False, observed=True, dropna=False):
        values: tuple[Any, ...] = group_keys if isinstance(group_keys, tuple) else (group_keys,)
        levels = [f"{key}={_hive_value(value)}" for key, value in zip(keys, values, strict=True)]
        target = os.path.join(directory, *levels)
        os.makedirs(target, exist_ok=True)
        target_file = os.path.join(target, name)
        group.drop(columns=keys).to_parquet(target_file, engine="pyarrow", index=_index_option(write_index))
    return len(part)


def _hive_value(value: Any) -> str:
    # A missing value has a directory name of its own in the hive layout.
    return "__HIVE_DEFAULT_PARTITION__" if value is None or value != value else str(value)


def _total_rows(counts: list[int]) -> int:
    return int(sum(counts))


@node
class WriteParquet(SinglePartition):
    """Write each partition of ``frame`` to ``directory/part.<i>.parquet``; yields the row count."""

    frame: Expr
    directory: str
    write_index: bool | None
    partition_on: tuple[Hashable, ...] = ()
    first_part: int = 0
    """Number of the first file (after the files already there, when appending)."""
    write_id: str = ""
    """Unique to each call: writing the same frame again runs its tasks again."""

    def _prefix(self) -> str:
        return "to-parquet"

    @cached_property
    def _meta(self) -> Any:
        return 0

    def _layer(self) -> dict[str, TaskSpec]:
        first = self.first_part
        targets = [os.path.join(self.directory, f"part.{first + i}.parquet") for i in range(self.frame.npartitions)]
        if self.partition_on:
            options = (self.write_index, self.partition_on)
            return _write_layer(self, self.frame, write_parquet_groups, targets, options, _total_rows)
        return _write_layer(self, self.frame, write_parquet_part, targets, self.write_index, _total_rows)


def to_parquet(
    df: Any,
    path: str | os.PathLike[str],
    write_index: bool | None = None,
    compute: bool = True,
    engine: str = "pyarrow",
    overwrite: bool = True,
    append: bool = False,
    **options: Any,
) -> Any:
    """Write one Parquet file per partition into the directory ``path``.

    Earlier ``part.*.parquet`` files in that directory are replaced (``overwrite=False``
    refuses to when there are any), unless ``append``: then the new files follow them,
    numbered after them, and must have the same columns.  The index is written as a column
    unless ``write_index=False``.  With ``compute=False`` the write is returned as a lazy
    scalar (the number of rows written).  ``engine`` must be pyarrow (or "auto").
    ``partition_on`` (a column or a list of them) writes hive-partitioned directories,
    ``<col>=<value>/part.<i>.parquet``, without those columns, as :func:`read_parquet`
    reads them back; other Dask options are accepted and not used.
    """
    _check_engine(engine)
    import_pyarrow()
    expr = getattr(df, "expr", None)
    if not isinstance(expr, Expr):
        raise UsageError(f"to_parquet needs a zmqdask DataFrame, got {type(df).__name__}")
    partition_on = options.get("partition_on") or ()
    if isinstance(partition_on, (str, int)):
        partition_on = (partition_on,)
    partition_on = tuple(partition_on)
    if partition_on:
        meta = expr._meta
        missing = [c for c in partition_on if not isinstance(meta, pd.DataFrame) or c not in meta.columns]
        if missing:
            raise UsageError(f"to_parquet(partition_on=) names {missing!r}, which are not columns of the frame")
    if compute:
        _refuse_if_blocking_forbidden("await client.compute(df.to_parquet(path, compute=False))")
    directory = os.path.abspath(os.fspath(path))
    os.makedirs(directory, exist_ok=True)
    earlier = [name for name in os.listdir(directory) if re.fullmatch(r"part\.\d+\.parquet", name)]
    first_part = 0
    if append:
        if partition_on:
            raise UsageError("to_parquet(append=True) cannot write partition_on directories; write them anew")
        if not compute:
            # The new files are numbered after those there now: two lazy appends would
            # write the same files.
            raise UsageError("to_parquet(append=True) writes at once; it cannot be returned lazily (compute=False)")
        if earlier:
            _check_appended_columns(os.path.join(directory, sorted(earlier)[0]), expr._meta, write_index)
            first_part = 1 + max(int(name.split(".")[1]) for name in earlier)
    elif earlier and not overwrite:
        raise UsageError(f"{directory} holds {len(earlier)} part files already; pass overwrite=True to replace them")
    else:
        for name in earlier:
            os.remove(os.path.join(directory, name))
    if partition_on:
        # Directories of an earlier write partitioned on the same first column go too.
        levels = [name for name in os.listdir(directory) if name.startswith(f"{partition_on[0]}=")]
        if levels and not overwrite:
            raise UsageError(f"{directory} holds partition directories already; pass overwrite=True to replace them")
        for name in levels:
            shutil.rmtree(os.path.join(directory, name))
    result = new_collection(WriteParquet(expr, directory, write_index, partition_on, first_part, uuid.uuid4().hex))
    if compute:
        result.compute()
        return None
    return result


def _check_appended_columns(existing_file: str, meta: Any, write_index: bool | None) -> None:
    """Refuse to append a frame whose columns, dtypes or index differ from the files there:
    readers would fail on the directory, or read it wrong."""
    import pyarrow.parquet as pq

    existing = pq.read_schema(existing_file).empty_table().to_pandas()
    frame = meta.to_frame() if isinstance(meta, pd.Series) else meta
    if not _index_option(write_index):
        frame = frame.reset_index(drop=True)

    def layout(f: pd.DataFrame) -> list[tuple[Any, str]]:
        return [*((c, str(t)) for c, t in f.dtypes.items()), (("index", f.index.name), str(f.index.dtype))]

    if layout(existing) != layout(frame):
        raise UsageError(
            f"cannot append to {os.path.dirname(existing_file)}: its files hold {layout(existing)} "
            f"(columns, dtypes, then the index), this frame {layout(frame)}; write to another directory, "
            "or make the columns, their dtypes and the index name match"
        )


# --------------------------------------------------------------------------------------------
# CSV output
# --------------------------------------------------------------------------------------------


def write_csv_part(part: pd.DataFrame | pd.Series, path: str, kwargs: dict[str, Any]) -> str:
    """Write one partition to ``path``; returns the path."""
    part.to_csv(path, **kwargs)
    return path


def _paths(written: list[str]) -> list[str]:
    return list(written)


@node
class WriteCSV(SinglePartition):
    """Write partition ``i`` of ``frame`` to ``paths[i]``; yields the list of paths."""

    frame: Expr
    paths: tuple[str, ...]
    kwargs: dict[str, Any]
    write_id: str = ""
    """Unique to each call: writing the same frame again runs its tasks again."""

    def _prefix(self) -> str:
        return "to-csv"

    @cached_property
    def _meta(self) -> Any:
        return list(self.paths)

    def _layer(self) -> dict[str, TaskSpec]:
        return _write_layer(self, self.frame, write_csv_part, self.paths, self.kwargs, _paths)


def append_csv_part(part: pd.DataFrame | pd.Series, path: str, kwargs: dict[str, Any], previous: Any) -> str:
    """Write partition 0 to ``path`` (``previous`` is None), or append a later one after
    ``previous`` (the path, once the partition before has been written) without a header."""
    if previous is None:
        part.to_csv(path, mode="w", **kwargs)
    else:
        part.to_csv(path, mode="a", **{**kwargs, "header": False})
    return path


@node
class WriteCSVSingleFile(SinglePartition):
    """Write the partitions of ``frame`` one after another into one CSV file; yields ``[path]``."""

    frame: Expr
    path: str
    kwargs: dict[str, Any]
    write_id: str = ""
    """Unique to each call: writing the same frame again runs its tasks again."""

    def _prefix(self) -> str:
        return "to-csv-single"

    @cached_property
    def _meta(self) -> Any:
        return [self.path]

    def _layer(self) -> dict[str, TaskSpec]:
        # A chain: each append depends on the one before, so the partitions land in order
        # and only one of them is in a worker's memory for the writing at a time.
        layer: dict[str, TaskSpec] = {}
        previous: Any = None
        for i in range(self.frame.npartitions):
            key = f"{self._name}-part-{i}"
            layer[key] = (append_csv_part, (TaskRef(self.frame._key(i)), self.path, self.kwargs, previous), {})
            previous = TaskRef(key)
        layer[self._key(0)] = (_paths, ([previous],), {})
        return layer


def to_csv(
    df: Any,
    filename: str | os.PathLike[str],
    single_file: bool = False,
    compute: bool = True,
    name_function: Any = None,
    **kwargs: Any,
) -> Any:
    """Write one CSV file per partition (or, with ``single_file=True``, one file); returns the
    paths written.

    ``filename`` holds a ``*``, replaced by the partition number (``"out/part-*.csv"``) or by
    ``name_function(number)``, or names a directory that receives ``<i>.part`` files; with
    ``single_file`` it is the file.  ``kwargs`` go to ``pandas.DataFrame.to_csv``.  With
    ``compute=False`` the write is returned as a lazy value.
    """
    expr = getattr(df, "expr", None)
    if not isinstance(expr, Expr):
        raise UsageError(f"to_csv needs a zmqdask DataFrame or Series, got {type(df).__name__}")
    if kwargs.get("mode", "w") != "w":
        raise UsageError("to_csv writes new files (mode='w'); append to them with pandas after reading them back")
    kwargs.pop("mode", None)
    if compute:
        _refuse_if_blocking_forbidden("await client.compute(df.to_csv(path, compute=False))")
    if single_file:
        path = os.path.abspath(os.fspath(filename))
        if "*" in os.path.basename(path) or os.path.isdir(path):
            raise UsageError(f"single_file=True needs a file name, got {os.fspath(filename)!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        single = new_collection(WriteCSVSingleFile(expr, path, dict(kwargs), uuid.uuid4().hex))
        return single.compute() if compute else single
    target = os.path.abspath(os.fspath(filename))
    width = len(str(max(expr.npartitions - 1, 0)))
    if "*" in target:
        directory = os.path.dirname(target)
        if name_function is None:
            paths = tuple(target.replace("*", str(i).zfill(width)) for i in range(expr.npartitions))
        else:
            paths = tuple(target.replace("*", str(name_function(i))) for i in range(expr.npartitions))
            if len(set(paths)) != len(paths):
                raise UsageError("to_csv: name_function gave two partitions the same name")
    elif name_function is not None:
        raise UsageError("to_csv(name_function=...) needs a '*' in the file name for it to replace")
    else:
        directory = target
        paths = tuple(os.path.join(target, f"{str(i).zfill(width)}.part") for i in range(expr.npartitions))
    os.makedirs(directory, exist_ok=True)
    result = new_collection(WriteCSV(expr, paths, dict(kwargs), uuid.uuid4().hex))
    return result.compute() if compute else result
