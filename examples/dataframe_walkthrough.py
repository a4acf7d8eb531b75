"""A synchronous tour of zmqdask.dataframe: timeseries, selections, filters, groupby, persist, explain."""

from __future__ import annotations

import numpy as np

import zmqdask
from zmqdask import Client


def main() -> None:
    """Build lazy queries, look at their plans, run them, and check them against pandas."""
    with Client(n_workers=2):
        # A lazy frame: 30 daily partitions of one row per second, generated on the workers
        # when a query needs them. Printing it shows the structure, not the data.
        df = zmqdask.datasets.timeseries()
        print(df)
        print(df.head(3))  # runs only the first partition

        # Selections and filters build a plan; compute() runs it and returns pandas objects.
        means = df[["x", "y"]].mean().compute()
        print("mean of x and y:", means.round(4).to_dict())
        positive = df[df.x > 0]
        total = positive.y.sum()
        print("sum of y where x > 0:", total.compute())

        # explain() prints the optimized plan: only the columns the query reads are generated,
        # and the filter and the partial sums run in one task per partition.
        total.explain()

        # A groupby-aggregation is a tree: partial results per partition, then combined.
        by_name = df.groupby("name").x.mean().compute()
        print("mean of x by name:", by_name.round(4).head(3).to_dict())

        # persist() computes every partition once and keeps it on the workers; the queries
        # below start from those partitions instead of generating the data again.
        df = df.persist()
        persisted_total = df[df.x > 0].y.sum().compute()
        persisted_by_name = df.groupby("name").x.mean().compute()

        # The same answers from pandas over the gathered partitions.
        pdf = df.compute()
        expected_total = pdf[pdf.x > 0].y.sum()
        expected_by_name = pdf.groupby("name").x.mean()
        ok = (
            np.isclose(persisted_total, expected_total)
            and np.isclose(total.compute(), expected_total)
            and np.allclose(persisted_by_name.sort_index(), expected_by_name.sort_index())
            and np.allclose(means.to_numpy(), pdf[["x", "y"]].mean().to_numpy())
        )
        print(f"rows: {len(pdf)}, partitions: {df.npartitions}")
        print("checked against pandas:", "ok" if ok else "MISMATCH")


if __name__ == "__main__":
    main()
