"""Content tokens: deterministic digests of expression operands, equal in every process."""

from __future__ import annotations

import datetime
import decimal
import functools
import hashlib
import pickle
import types
import uuid
from typing import Any

import numpy as np
import pandas as pd

TOKEN_BYTES = 16
"""Size of a content digest; hex tokens are twice as long."""


# ---------------------------------------------------------------------------------------
# Tokenizing: a deterministic digest of arbitrary operands
# ---------------------------------------------------------------------------------------


def tokenize(*objects: Any) -> str:
    """A hex digest of ``objects`` that is equal for equal content, in any process.

    Exprs contribute their own token, pandas and numpy objects their data, functions
    their qualified name (or their pickled code when they have none), and other objects
    their pickle.  An object that cannot be pickled gets a random token: it is then never
    shared, which is safe.
    """
    hasher = hashlib.blake2b(digest_size=TOKEN_BYTES)
    for obj in objects:
        _feed(hasher, obj)
    return hasher.hexdigest()


_SIMPLE_TYPES = (type(None), bool, int, float, complex, str, bytes, decimal.Decimal)


def _feed(h: Any, obj: Any) -> None:
    kind = type(obj)
    if kind in _SIMPLE_TYPES:
        h.update(f"{kind.__name__}:{obj!r};".encode())
    elif getattr(kind, "_is_expr_node", False):
        # An expression node stands for its content token (nodes are not imported here).
        h.update(b"E" + obj._token.encode())
    elif kind is tuple or kind is list:
        h.update(f"{kind.__name__}{len(obj)}(".encode())
        for item in obj:
            _feed(h, item)
        h.update(b")")
    elif kind is dict:
        h.update(f"dict{len(obj)}(".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
        h.update(b")")
    elif kind is set or kind is frozenset:
        h.update(f"{kind.__name__}{len(obj)}(".encode())
        for part in sorted(tokenize(item) for item in obj):
            h.update(part.encode())
        h.update(b")")
    elif isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
        _feed_pandas(h, obj)
    elif isinstance(obj, np.ndarray):
        h.update(f"nd:{obj.dtype.str}:{obj.shape};".encode())
        if obj.dtype.hasobject:
            h.update(_pickled(obj))
        else:
            h.update(np.ascontiguousarray(obj).view(np.uint8).data)
    elif isinstance(obj, np.generic):
        h.update(f"np:{obj.dtype.str}:{obj!r};".encode())
    elif isinstance(obj, (pd.Timestamp, pd.Timedelta, pd.Period, pd.Interval, pd.DateOffset)):
        h.update(f"pd:{obj!r};".encode())
    elif isinstance(obj, (datetime.date, datetime.time, datetime.timedelta)):
        h.update(f"dt:{obj!r};".encode())
    elif isinstance(obj, (np.dtype, pd.api.extensions.ExtensionDtype)):
        _feed_dtype(h, obj)
    elif isinstance(obj, type):
        h.update(f"type:{obj.__module__}.{obj.__qualname__};".encode())
    elif isinstance(obj, functools.partial):
        h.update(b"partial(")
        _feed(h, obj.func)
        _feed(h, obj.args)
        _feed(h, obj.keywords)
        h.update(b")")
    elif callable(obj) and _is_importable_function(obj):
        h.update(f"fn:{obj.__module__}.{obj.__qualname__};".encode())
    elif isinstance(obj, (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)):
        h.update(f"builtin:{obj!r};".encode())
    elif hasattr(obj, "__zmqdask_tokenize__"):
        _feed(h, obj.__zmqdask_tokenize__())
    elif type(obj).__module__ == "zmqdask.future" and isinstance(getattr(obj, "key", None), str):
        h.update(f"future:{obj.key};".encode())
    else:
        h.update(f"obj:{kind.__module__}.{kind.__qualname__}:".encode())
        h.update(_pickled(obj))


def _is_importable_function(obj: Any) -> bool:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return False
    if module in ("__main__", "__mp_main__") or "<" in qualname:
        return False
    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType))


def _pickled(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        pass
    try:
        import cloudpickle

        return bytes(cloudpickle.dumps(obj, protocol=5))
    except Exception:
        # Unpicklable and untokenizable: a random token means "never equal to anything".
        return uuid.uuid4().bytes


def _feed_dtype(h: Any, dtype: Any) -> None:
    if isinstance(dtype, pd.CategoricalDtype):
        # Its repr shortens a long list of categories with "...": two dtypes differing only
        # there would share a token.  The categories themselves are hashed instead.
        h.update(f"dtype:category:{dtype.ordered};".encode())
        if dtype.categories is not None:
            _feed_pandas(h, dtype.categories)
    else:
        h.update(f"dtype:{dtype!r};".encode())


def _feed_pandas(h: Any, obj: pd.DataFrame | pd.Series | pd.Index) -> None:
    h.update(f"pd:{type(obj).__name__}:{obj.shape};".encode())
    if isinstance(obj, pd.DataFrame):
        _feed(h, list(obj.columns))
        for dtype in obj.dtypes:
            _feed_dtype(h, dtype)
        _feed(h, obj.index.name)
    else:
        _feed(h, obj.name)
        _feed_dtype(h, obj.dtype)
    try:
        hashed = pd.util.hash_pandas_object(obj, index=not isinstance(obj, pd.Index))
        h.update(np.ascontiguousarray(hashed.to_numpy()).view(np.uint8).data)
        if isinstance(obj, pd.DataFrame) and obj.shape[1] == 0:
            h.update(repr(obj.index.dtype).encode())
    except Exception:
        h.update(_pickled(obj))
