"""Crossing between user-facing collections and expression nodes.

The modules that build nodes (statistics, shuffles, joins, grouping, I/O) sit below the
collection classes, which import them.  They take the expression out of a user's argument
with :func:`expr_of` and wrap a new node with :func:`new_collection`, which imports the
collection module only when called.
"""

from __future__ import annotations

from typing import Any

from zmqdask.dataframe.expr import Expr
from zmqdask.errors import UsageError


def expr_of(obj: Any) -> Expr:
    """The expression behind a zmqdask DataFrame or Series; a UsageError for anything else."""
    expr = getattr(obj, "expr", None)
    if not isinstance(expr, Expr):
        raise UsageError(f"expected a zmqdask DataFrame or Series, got {type(obj).__name__}")
    return expr


def new_collection(expr: Expr) -> Any:
    """The collection class matching ``expr``'s meta (see ``zmqdask.dataframe.collection``)."""
    # Imported here: the collection module builds on the modules that call this.
    from zmqdask.dataframe.collection import new_collection as wrap

    return wrap(expr)
