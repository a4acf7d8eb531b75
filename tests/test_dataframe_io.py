"""CSV and Parquet sources and writer: kernels, then lazy reads with pruning and filters."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.io import (
    ReadCSV,
    ReadParquet,
    apply_filters,
    read_block_bytes,
    read_csv,
    read_parquet,
    to_parquet,
)
from zmqdask.errors import UsageError


def _frame(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.integers(0, 100, n).astype("float64"),
            "b": rng.normal(size=n),
            "s": rng.choice(["x", "yy", "zzz"], n),
        }
    )
    frame.loc[500, "a"] = np.nan
    return frame


def _sources(collection: Any, kind: type) -> list[Any]:
    return [e for e in collection.optimize().expr.walk() if isinstance(e, kind)]


def test_block_bytes_split_at_line_starts(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    lines = [f"{i},{'x' * (i % 7)}\n".encode() for i in range(200)]
    path.write_bytes(b"".join(lines))
    size = path.stat().st_size
    for blocksize in (1, 10, 37, size, size + 5):
        blocks = [
            read_block_bytes(str(path), start, min(start + blocksize, size)) for start in range(0, size, blocksize)
        ]
        assert b"".join(blocks) == path.read_bytes()
        assert all(block == b"" or block.endswith(b"\n") for block in blocks)


@pytest.mark.parametrize("blocksize", [None, 997, "5kB"])
def test_read_csv_matches_pandas(tmp_path: Path, blocksize: Any) -> None:
    frame = _frame()
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    lazy = read_csv(str(path), blocksize=blocksize)
    if blocksize is not None:
        assert lazy.npartitions > 1
    expected = pd.read_csv(path)
    pd.testing.assert_frame_equal(lazy.compute().reset_index(drop=True), expected)
    parts = [lazy.get_partition(i).compute() for i in range(lazy.npartitions)]
    assert all(list(part.dtypes) == list(expected.dtypes) for part in parts)
    # Counting rows reads no column the user asked for: it must still see every row.
    assert len(lazy) == len(expected) and lazy.shape[0].compute() == len(expected)
    assert len(lazy.reset_index()) == len(expected) and len(lazy[["b"]]) == len(expected)
    assert list(lazy.index.compute()) == [i for part in parts for i in part.index]


def test_read_csv_glob_prunes_columns(tmp_path: Path) -> None:
    frame = _frame()
    for i in range(3):
        frame.iloc[i * 300 : (i + 1) * 300].to_csv(tmp_path / f"part-{i}.csv", index=False)
    lazy = zd.read_csv(str(tmp_path / "part-*.csv"))
    assert lazy.npartitions == 3
    pd.testing.assert_frame_equal(lazy.compute().reset_index(drop=True), frame.iloc[:900].reset_index(drop=True))
    projected = lazy[["s", "b"]]
    (source,) = _sources(projected, ReadCSV)
    assert source.columns_selected == ("b", "s")
    pd.testing.assert_frame_equal(
        projected.compute().reset_index(drop=True), frame.iloc[:900][["s", "b"]].reset_index(drop=True)
    )
    got = lazy.groupby("s").b.sum().compute()
    pd.testing.assert_series_equal(got, frame.iloc[:900].groupby("s").b.sum())


@pytest.mark.parametrize("blocksize", [None, 3000])
def test_read_csv_projection_keeps_date_columns_readable(tmp_path: Path, blocksize: Any) -> None:
    frame = _frame().iloc[:300].copy()
    frame["when"] = pd.date_range("2000-01-01", periods=300, freq="h")
    for i in range(3):
        frame.iloc[i * 100 : (i + 1) * 100].to_csv(tmp_path / f"part-{i}.csv", index=False)
    expected = pd.concat(
        [pd.read_csv(tmp_path / f"part-{i}.csv", parse_dates=["when"]) for i in range(3)], ignore_index=True
    )
    lazy = read_csv(str(tmp_path / "*.csv"), blocksize=blocksize, parse_dates=["when"])
    pd.testing.assert_series_equal(lazy.b.compute().reset_index(drop=True), expected.b)
    assert lazy.when.max().compute() == expected.when.max()
    pd.testing.assert_frame_equal(lazy[["s", "when"]].compute().reset_index(drop=True), expected[["s", "when"]])


def test_read_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        read_csv(str(tmp_path / "nothing-*.csv"))
    path = tmp_path / "data.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(UsageError):
        read_csv(str(path), blocksize="many")
    with pytest.raises(UsageError):
        read_csv(str(path), blocksize=100, skiprows=3)


def test_read_csv_refuses_blocks_that_contradict_the_inferred_dtypes(tmp_path: Path) -> None:
    (tmp_path / "1.csv").write_text("a,c,s\n1,2,x\n2,3,y\n")
    (tmp_path / "2.csv").write_text("a,c,s\n3,1.5,z\n4,,w\n")  # c: floats and a missing value
    (tmp_path / "3.csv").write_text("a,c,s\n5,x,\n6,7,\n")  # c: text; s: no value at all
    first_two = str(tmp_path / "[12].csv")
    lazy = read_csv(first_two)
    assert lazy.c.dtype == "int64"  # what the first file says
    with pytest.raises(ValueError, match=r"column 'c': found float64, expected int64(.|\n)*dtype=\{'c': 'float64'\}"):
        lazy.compute()
    with pytest.raises(ValueError, match="assume_missing=True"):
        lazy.c.sum().compute()
    assumed = read_csv(first_two, assume_missing=True)
    assert assumed.dtypes.to_dict() == assumed.compute().dtypes.to_dict()
    assert assumed.a.dtype == "float64" and assumed.c.sum().compute() == 6.5
    declared = read_csv(first_two, dtype={"c": "float64"}, assume_missing=True)
    assert declared.c.dtype == "float64" and declared.a.dtype == "float64"
    with pytest.raises(ValueError, match=r"3\.csv(.|\n)*'c': 'str'"):
        read_csv(str(tmp_path / "[13].csv")).compute()
    with pytest.raises(ValueError, match=r"reading .*3\.csv: could not convert string to float"):
        read_csv(str(tmp_path / "*.csv"), dtype={"c": "float64"}).compute()
    # A column empty in one file takes the dtype of the others.
    text = read_csv(str(tmp_path / "*.csv"), dtype={"c": "str"}).compute()
    assert len(text) == 6 and text.s.dtype == read_csv(first_two).s.dtype and text.s.isna().sum() == 2


@pytest.mark.parametrize("blocksize", [None, 12])
def test_read_csv_include_path_column(tmp_path: Path, blocksize: Any) -> None:
    for n in range(3):
        pd.DataFrame({"x": [n, n + 10], "y": ["p", "q"]}).to_csv(tmp_path / f"part{n}.csv", index=False)
    paths = [str(tmp_path / f"part{n}.csv") for n in range(3)]
    lazy = read_csv(str(tmp_path / "part*.csv"), include_path_column=True, blocksize=blocksize)
    assert list(lazy.columns) == ["x", "y", "path"] and lazy.path.cat.categories.tolist() == paths
    frame = lazy.compute()
    assert frame.path.tolist() == [p for p in paths for _ in range(2)]
    assert frame.path.dtype == lazy.path.dtype
    assert lazy[["path", "x"]].compute().groupby("path", observed=True).x.sum().tolist() == [10, 12, 14]
    assert lazy.x.sum().compute() == 36
    named = read_csv(paths, include_path_column="source")
    assert named.source.compute().tolist()[-1] == paths[-1]
    with pytest.raises(UsageError, match="include_path_column"):
        read_csv(paths, include_path_column="x")


def test_parquet_round_trip_keeps_divisions(tmp_path: Path) -> None:
    frame = _frame().dropna().reset_index(drop=True)
    frame.index.name = "id"
    lazy = zd.from_pandas(frame, npartitions=4)
    to_parquet(lazy, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == [f"part.{i}.parquet" for i in range(4)]
    back = read_parquet(str(tmp_path / "out"))
    assert back.npartitions == 4
    assert back.divisions == lazy.divisions
    pd.testing.assert_frame_equal(back.compute(), frame)
    # A stored index column gives divisions through the files' statistics.
    indexed = lazy.set_index("b")
    indexed.to_parquet(tmp_path / "by-b")
    back = read_parquet(str(tmp_path / "by-b"))
    assert back.known_divisions and back.npartitions == indexed.npartitions
    for i in range(back.npartitions):
        part = back.get_partition(i).compute()
        assert back.divisions[i] == part.index.min() and part.index.max() <= back.divisions[i + 1]
    pd.testing.assert_frame_equal(back.compute(), frame.set_index("b").sort_index())
    # Writing fewer partitions replaces the earlier files.
    zd.from_pandas(frame, npartitions=2).to_parquet(tmp_path / "out")
    assert read_parquet(str(tmp_path / "out")).npartitions == 2


def test_read_parquet_columns_and_filters(tmp_path: Path) -> None:
    frame = _frame()
    directory = tmp_path / "data"
    directory.mkdir()
    for i in range(3):
        frame.iloc[i * 400 : (i + 1) * 400].to_parquet(directory / f"part.{i}.parquet")
    lazy = read_parquet(str(directory))
    pd.testing.assert_frame_equal(lazy.compute(), frame)
    got = read_parquet(str(directory), columns=["b"], filters=[("a", ">", 50), ("s", "!=", "x")])
    expected = frame[(frame.a > 50) & (frame.s != "x")][["b"]]
    pd.testing.assert_frame_equal(got.compute(), expected)
    either = read_parquet(str(directory), filters=[[("a", "<", 5)], [("s", "in", ["zzz"])]])
    pd.testing.assert_frame_equal(either.compute(), frame[(frame.a < 5) | (frame.s == "zzz")])


def test_optimizer_pushes_projection_and_filters_into_parquet(tmp_path: Path) -> None:
    frame = _frame()
    frame.to_parquet(tmp_path / "one.parquet")
    lazy = read_parquet(str(tmp_path / "one.parquet"))
    query = lazy[lazy.a != 3]["b"]
    (source,) = _sources(query, ReadParquet)
    assert source.columns_selected is not None and "s" not in source.columns_selected
    assert source.filters == (("a", "!=", 3),)
    # pandas keeps missing values under !=, so the pushed filter must too.
    pd.testing.assert_series_equal(query.compute(), frame[frame.a != 3]["b"])


def test_apply_filters_kernel_uses_pandas_semantics() -> None:
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0]}, index=pd.Index([10, 11, 12], name="i"))
    pd.testing.assert_frame_equal(apply_filters(frame, [[("a", "!=", 1.0)]]), frame.iloc[1:])
    pd.testing.assert_frame_equal(apply_filters(frame, [[("i", ">=", 11), ("a", "not in", [3.0])]]), frame.iloc[1:2])
    with pytest.raises(UsageError, match="bad filter"):
        read_parquet("unused", filters=[("a", "~", 1)])


def test_parquet_needs_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ImportError, match=r"zmqdask\[parquet\]"):
        read_parquet(str(tmp_path))
    with pytest.raises(ImportError, match=r"zmqdask\[parquet\]"):
        to_parquet(zd.from_pandas(_frame(), npartitions=1), tmp_path / "x")


def test_to_parquet_refuses_to_block_an_event_loop_before_touching_files(tmp_path: Path, run_async: Any) -> None:
    from zmqdask.errors import SyncInAsyncError

    frame = _frame(200)
    lazy = zd.from_pandas(frame, npartitions=2)
    stale = tmp_path / "part.7.parquet"
    stale.write_bytes(b"old")

    async def body(client: Any) -> int:
        with pytest.raises(SyncInAsyncError, match=r"to_parquet\(path, compute=False\)"):
            lazy.to_parquet(tmp_path)
        assert stale.exists()
        return int(await client.compute(lazy.to_parquet(tmp_path, compute=False)))

    assert run_async(body) == len(frame)
    assert not stale.exists()
    pd.testing.assert_frame_equal(read_parquet(str(tmp_path)).compute(), frame)


@pytest.mark.parametrize("pattern", ["out-*.csv", "folder"])
def test_to_csv_writes_one_file_per_partition(tmp_path: Path, pattern: str) -> None:
    frame = _frame(300)
    lazy = zd.from_pandas(frame, npartitions=3)
    paths = lazy.to_csv(str(tmp_path / pattern), index=False)
    assert len(paths) == 3 and all(os.path.exists(p) for p in paths)
    back = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(back, frame.reset_index(drop=True))
    later = zd.to_csv(lazy[lazy.a > 50], str(tmp_path / "later-*.csv"), compute=False, index=False)
    assert not any(name.startswith("later") for name in os.listdir(tmp_path))
    written = later.compute()
    pd.testing.assert_frame_equal(
        pd.concat([pd.read_csv(p) for p in written], ignore_index=True), frame[frame.a > 50].reset_index(drop=True)
    )


def test_to_datetime_and_to_numeric() -> None:
    text = pd.Series(["2000-01-03", "2001-02-04", "1999-12-31"] * 4, name="when")
    lazy = zd.from_pandas(text, npartitions=3)
    pd.testing.assert_series_equal(zd.to_datetime(lazy, format="%Y-%m-%d").compute(), pd.to_datetime(text))
    numbers = pd.Series(["1", "2.5", "x"] * 3)
    got = zd.to_numeric(zd.from_pandas(numbers, npartitions=2), errors="coerce").compute()
    pd.testing.assert_series_equal(got, pd.to_numeric(numbers, errors="coerce"))


def test_read_parquet_of_a_hive_partitioned_directory_matches_pandas(tmp_path: Path) -> None:
    frame = pd.DataFrame({"k": ["a", "a", "b", "c"] * 5, "year": [2020, 2021] * 10, "v": range(20)})
    frame.to_parquet(tmp_path / "hive", partition_cols=["k", "year"])
    expected = pd.read_parquet(tmp_path / "hive")

    def canonical(result: pd.DataFrame) -> pd.DataFrame:
        result = result.sort_values("v").reset_index(drop=True)
        return result.astype({"k": str, "year": "int64"})[["v", "k", "year"]]

    lazy = read_parquet(str(tmp_path / "hive"))
    assert lazy.npartitions == 4 and list(lazy.columns) == ["v", "k", "year"]  # one per file
    assert isinstance(lazy.dtypes["k"], pd.CategoricalDtype) and list(lazy.dtypes["k"].categories) == ["a", "b", "c"]
    pd.testing.assert_frame_equal(canonical(lazy.compute()), canonical(expected))
    assert len(lazy) == 20 and lazy.v.sum().compute() == 190
    # Filters on directory columns drop whole files before anything is read.
    only_a = read_parquet(str(tmp_path / "hive"), filters=[("k", "==", "a")])
    assert only_a.npartitions == 2
    pd.testing.assert_frame_equal(canonical(only_a.compute()), canonical(expected[expected.k == "a"]))
    mixed = read_parquet(str(tmp_path / "hive"), columns=["v"], filters=[("year", ">", 2020), ("v", "<", 10)])
    assert sorted(mixed.compute().v) == sorted(frame[(frame.year > 2020) & (frame.v < 10)].v)
    # ...and a filter written on the lazy frame reaches the reader too.
    lazy_filter = lazy[lazy.year == 2021]
    assert lazy_filter.v.sum().compute() == frame[frame.year == 2021].v.sum()
    assert lazy.groupby("k").v.sum().compute().to_dict() == frame.groupby("k").v.sum().to_dict()


def test_to_parquet_partition_on_writes_hive_directories_read_back_alike(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"year": [2020, 2020, 2021, 2021, 2022] * 4, "kind": list("abcab") * 4, "v": np.arange(20.0)}
    )
    lazy = zd.from_pandas(frame, npartitions=3)
    out = tmp_path / "hive"
    to_parquet(lazy, out, partition_on=["year", "kind"])
    assert sorted(os.listdir(out)) == ["year=2020", "year=2021", "year=2022"]
    assert sorted(os.listdir(out / "year=2020")) == ["kind=a", "kind=b"]
    back = read_parquet(str(out))
    assert set(back.columns) == {"year", "kind", "v"}
    got = back.compute().astype({"year": "int64", "kind": "str"})
    expected = frame[["v", "year", "kind"]].astype({"kind": "str"})
    pd.testing.assert_frame_equal(
        got[["v", "year", "kind"]].sort_values("v").reset_index(drop=True), expected, check_dtype=False
    )
    assert back[back.year == 2021].v.sum().compute() == frame[frame.year == 2021].v.sum()
    # Written again: the earlier directories are replaced, not added to.
    to_parquet(lazy[lazy.year > 2020], out, partition_on="year")
    assert sorted(os.listdir(out)) == ["year=2021", "year=2022"]
    assert len(read_parquet(str(out)).compute()) == 12
    with pytest.raises(UsageError, match="partition_on"):
        to_parquet(lazy, tmp_path / "bad", partition_on=["nope"])


def test_writing_the_same_frame_again_on_a_cluster_writes_every_file(tmp_path: Path, client: Any) -> None:
    # The write tasks of a second call must run again, not be taken for the first call's
    # (whose results may still be held): to_parquet removes the first call's files first.
    frame = zd.from_pandas(pd.DataFrame({"a": range(40)}), npartitions=4)
    target = tmp_path / "pq"
    for round_ in range(3):
        frame.to_parquet(target)
        assert len(os.listdir(target)) == 4 and len(pd.read_parquet(target)) == 40, round_
    for round_ in range(3):
        paths = frame.to_csv(str(tmp_path / "csv" / "part-*.csv"), index=False)
        assert sum(len(pd.read_csv(p)) for p in paths) == 40, round_
        for path in paths:
            os.remove(path)


def test_to_parquet_appends_after_the_files_there_and_writes_the_index_as_a_column(tmp_path: Path) -> None:
    index = pd.RangeIndex(100, 120, name="idx")
    first = pd.DataFrame({"a": range(20), "b": [f"s{i}" for i in range(20)]}, index=index)
    second = first.set_axis(pd.RangeIndex(120, 140, name="idx")).assign(a=lambda f: f.a + 20)
    zd.from_pandas(first, npartitions=2).to_parquet(tmp_path)
    # pandas reads the directory back with the index: it is stored, not implied by each file.
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path), first)
    zd.from_pandas(second, npartitions=2).to_parquet(tmp_path, append=True)
    assert sorted(os.listdir(tmp_path)) == [f"part.{i}.parquet" for i in range(4)]
    both = zd.read_parquet(tmp_path).compute()
    pd.testing.assert_frame_equal(both.sort_index(), pd.concat([first, second]))
    # Columns, their dtypes or the index other than the files': refused, nothing written.
    for other in (first[["b", "a"]], first.assign(a=first.a * 0.5), first.rename_axis("other")):
        with pytest.raises(UsageError, match="cannot append to"):
            zd.from_pandas(other, npartitions=1).to_parquet(tmp_path, append=True)
    with pytest.raises(UsageError, match="writes at once"):
        zd.from_pandas(second, npartitions=1).to_parquet(tmp_path, append=True, compute=False)
    assert len(os.listdir(tmp_path)) == 4


def test_read_parquet_of_one_column_named_alone_is_a_series(tmp_path: Path) -> None:
    frame = _frame(200)
    path = tmp_path / "one.parquet"
    frame.to_parquet(path)
    column = read_parquet(str(path), columns="s")
    assert column.ndim == 1 and column.name == "s"
    pd.testing.assert_series_equal(column.compute(), frame.s)


def test_a_quoted_value_cut_by_a_block_says_to_read_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    values = ["x\n7,y" if i % 4 == 0 else "plain" for i in range(400)]
    frame = pd.DataFrame({"a": range(400), "s": values})
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="blocksize=None"):
        read_csv(str(path), blocksize=500).compute()
    pd.testing.assert_frame_equal(read_csv(str(path), blocksize=None).compute(), frame)


def test_read_parquet_index_chooses_the_index_or_none(tmp_path: Any) -> None:
    pdf = pd.DataFrame({"a": range(100), "b": np.arange(100) * 1.0}, index=pd.Index(np.arange(100) * 2, name="idx"))
    path = str(tmp_path / "frame.parquet")
    pdf.to_parquet(path)
    by_a = zd.read_parquet(path, index="a").compute()
    pd.testing.assert_frame_equal(by_a, pdf.reset_index().set_index("a"))
    unindexed = zd.read_parquet(path, index=False).compute()
    pd.testing.assert_frame_equal(unindexed, pdf.reset_index())
    pd.testing.assert_frame_equal(zd.read_parquet(path, index="idx").compute(), pdf)
    with pytest.raises(UsageError, match="not among the columns"):
        zd.read_parquet(path, index="nope")


def test_categoricals_read_from_parquet_have_unknown_categories_until_asked(tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"c": pd.Categorical(rng.choice(["x", "y", "z"], 60)), "v": np.arange(60.0)})
    path = str(tmp_path / "categorical")
    zd.from_pandas(pdf, npartitions=3).to_parquet(path)
    lazy = zd.read_parquet(path)
    assert not lazy.c.cat.known
    with pytest.raises(UsageError, match="categorize"):
        zd.get_dummies(lazy[["c"]])
    assert list(lazy.c.cat.as_known().cat.categories) == ["x", "y", "z"]
    dummies = zd.get_dummies(lazy.categorize(columns=["c"])[["c"]]).compute()
    pd.testing.assert_frame_equal(dummies.reset_index(drop=True), pd.get_dummies(pdf[["c"]]))


def test_read_csv_in_blocks_reads_a_column_as_text_wherever_the_sample_has_text(tmp_path: Any) -> None:
    # header=None: the header line is a row of the first block only, so the column is text
    # (as pandas reads the whole file), also in blocks holding only numbers.
    path = str(tmp_path / "with_header.csv")
    pd.DataFrame({"id": range(300), "v": np.arange(300) * 0.5}).to_csv(path, index=False)
    expected = pd.read_csv(path, header=None)
    lazy = zd.read_csv(path, header=None, blocksize=500)
    assert lazy.npartitions > 1
    got = lazy.compute()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)


def test_to_csv_names_files_with_name_function(tmp_path: Any) -> None:
    pdf = pd.DataFrame({"a": range(10)})
    lazy = zd.from_pandas(pdf, npartitions=3)
    paths = lazy.to_csv(str(tmp_path / "part-*.csv"), name_function=lambda i: f"2024-{i:02d}", index=False)
    assert [os.path.basename(p) for p in paths] == ["part-2024-00.csv", "part-2024-01.csv", "part-2024-02.csv"]
    back = pd.concat(pd.read_csv(p) for p in paths).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, pdf)
    with pytest.raises(UsageError, match="the same name"):
        lazy.to_csv(str(tmp_path / "x-*.csv"), name_function=lambda i: "same")


def test_rows_with_a_missing_partition_key_read_back_missing(tmp_path: Any) -> None:
    pdf = pd.DataFrame({"k": ["a", None, "b", None, "a", "b"], "v": range(6)})
    path = str(tmp_path / "by_k")
    zd.from_pandas(pdf, npartitions=2).to_parquet(path, partition_on=["k"])
    back = zd.read_parquet(path).compute().sort_values("v").reset_index(drop=True)
    assert back.k.isna().tolist() == pdf.k.isna().tolist()
    assert back.k.dropna().astype(str).tolist() == pdf.k.dropna().tolist()
    assert list(back.k.cat.categories) == ["a", "b"]
    sizes = zd.read_parquet(path).groupby("k").size().compute()
    assert sizes.to_dict() == pdf.groupby("k").size().to_dict()


def test_read_csv_category_dtype_leaves_each_files_categories_unknown(tmp_path: Path) -> None:
    # The first file does not hold every category: the meta must not claim it does.
    pd.DataFrame({"c": ["a", "b"], "x": [0, 1]}).to_csv(tmp_path / "1.csv", index=False)
    pd.DataFrame({"c": ["c", "d"], "x": [2, 3]}).to_csv(tmp_path / "2.csv", index=False)
    lazy = zd.read_csv(str(tmp_path / "*.csv"), dtype={"c": "category"})
    with pytest.raises(UsageError, match="not known"):
        lazy.c.cat.codes  # noqa: B018
    assert sorted(lazy.compute().c.astype(str)) == ["a", "b", "c", "d"]
    assert sorted(zd.concat([lazy, lazy]).compute().c.astype(str)) == ["a", "a", "b", "b", "c", "c", "d", "d"]
    known = lazy.categorize()
    assert list(known.c.cat.categories) == ["a", "b", "c", "d"]
    assert list(known.c.cat.codes.compute()) == [0, 1, 2, 3]
    # Declared with its categories, the column's categories are those.
    listed = zd.read_csv(str(tmp_path / "*.csv"), dtype={"c": pd.CategoricalDtype(["d", "c", "b", "a"])})
    assert list(listed.c.cat.categories) == ["d", "c", "b", "a"]
    assert list(listed.c.cat.codes.compute()) == [3, 2, 1, 0]
