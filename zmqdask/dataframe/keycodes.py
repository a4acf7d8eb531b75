"""Integer codes of grouping keys: factorization, remembered for columns whose codes are known.

Grouping by a string column spends most of its time hashing strings.  A generator that
builds a string column from integer codes (``zmqdask.datasets``) records them here, keyed
by the column's immutable Arrow data; grouped aggregations in the same process then use
those codes instead of hashing.  Entries disappear with the data they describe.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

_known: dict[int, tuple[weakref.ref[Any], np.ndarray, pd.Index]] = {}
_lock = threading.Lock()


def _arrow_data(values: Any) -> Any:
    """The immutable Arrow data behind an Arrow-backed pandas array, or None."""
    array = values.array if isinstance(values, (pd.Series, pd.Index)) else values
    data = getattr(array, "_pa_array", None)
    if data is None or type(data).__name__ != "ChunkedArray":
        return None
    return data


def _forget(ident: int) -> None:
    with _lock:
        _known.pop(ident, None)


def remember_codes(values: Any, codes: np.ndarray, categories: pd.Index) -> None:
    """Record that ``values[i] == categories[codes[i]]`` (``categories`` sorted, without missing values).

    Only Arrow-backed arrays are recorded (their data cannot change in place); others are
    ignored.
    """
    data = _arrow_data(values)
    if data is None or len(codes) != len(data):
        return
    ident = id(data)
    # The finalizer runs when the data is freed, before its id can be reused.
    weakref.finalize(data, _forget, ident)
    with _lock:
        _known[ident] = (weakref.ref(data), codes, categories)


def known_codes(values: Any) -> tuple[np.ndarray, pd.Index] | None:
    """The recorded ``(codes, categories)`` of ``values``, or None."""
    data = _arrow_data(values)
    if data is None:
        return None
    with _lock:
        entry = _known.get(id(data))
    if entry is None or entry[0]() is not data:
        return None
    return entry[1], entry[2]


def factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``(codes, uniques)`` with ``uniques`` sorted and ``-1`` codes for missing values.

    Uniques may include values that do not occur (when the codes were recorded); callers
    drop groups without rows.
    """
    known = known_codes(values)
    if known is not None:
        return known
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.intp), pd.Index(uniques, name=values.name)
