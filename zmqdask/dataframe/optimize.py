"""The local optimizer: rewrites an expression tree to a fixed point before it is lowered.

Phases, in order::

    simplify   node rules (_simplify_down) + column pruning, repeated until nothing changes
    lower      abstract nodes become physical ones (_lower), then simplify again
    fuse       groups of Blockwise nodes become one Fused node (one task per partition)

Every phase memoizes by token, so equal subexpressions are rewritten once and stay shared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd

from zmqdask.dataframe.expr import Blockwise, Expr, node
from zmqdask.dataframe.lower import Fused
from zmqdask.errors import ZmqdaskError
from zmqdask.graph import references

logger = logging.getLogger(__name__)

MAX_PASSES = 50
"""Whole-tree passes allowed before the optimizer gives up on reaching a fixed point."""

MAX_LOCAL_REWRITES = 100
"""Rewrites of one node in one pass allowed before the optimizer gives up."""


class OptimizerError(ZmqdaskError):
    """The rewrite rules did not reach a fixed point (a bug in a rule)."""


def optimize(expr: Expr, fuse: bool = True) -> Expr:
    """The optimized, lowered (and by default fused) equivalent of ``expr``."""
    expr = simplify(expr)
    expr = lower(expr)
    if fuse:
        expr = fuse_blockwise(expr)
    return expr


@node
class Outputs(Expr):
    """Several expressions computed together, optimized as one: the columns a shared node
    must produce are those all of them read, and a shared node is not fused into each of
    its consumers' tasks, so that it is computed once.  It has no tasks of its own."""

    exprs: tuple[Expr, ...]

    def _prefix(self) -> str:
        return "outputs"

    @property
    def _meta(self) -> Any:
        return None

    def _layer(self) -> dict[str, Any]:
        return {}


def optimize_together(exprs: list[Expr]) -> list[Expr]:
    """Each of ``exprs`` optimized as by :func:`optimize`, all at once (see :class:`Outputs`)."""
    if len(exprs) < 2:
        return [optimize(expr) for expr in exprs]
    together = optimize(Outputs(tuple(exprs)))
    assert isinstance(together, Outputs)
    return list(together.exprs)


def rewrite(expr: Expr, rule: Callable[[Expr], Expr | None]) -> Expr:
    """Apply ``rule`` to every node, children first, until it returns ``None`` for each."""
    memo: dict[str, Expr] = {}

    def visit(e: Expr, depth: int = 0) -> Expr:
        done = memo.get(e._token)
        if done is not None:
            return done
        new = e._map_dependencies(visit)
        for _ in range(MAX_LOCAL_REWRITES):
            replacement = rule(new)
            if replacement is None or replacement._token == new._token:
                break
            # The replacement may have fresh children that were never visited.
            new = replacement._map_dependencies(visit)
        else:
            raise OptimizerError(f"rewriting {type(e).__name__} did not settle after {MAX_LOCAL_REWRITES} steps")
        memo[e._token] = new
        memo[new._token] = new
        return new

    return visit(expr)


def simplify(expr: Expr) -> Expr:
    """Node rules and column pruning, repeated to a fixed point."""
    for _ in range(MAX_PASSES):
        new = rewrite(expr, lambda e: e._simplify_down())
        new = prune_columns(new)
        if new._token == expr._token:
            return new
        expr = new
    raise OptimizerError(f"the optimizer did not reach a fixed point within {MAX_PASSES} passes")


def lower(expr: Expr) -> Expr:
    """Replace abstract nodes by physical ones, then simplify what that exposed."""
    for _ in range(MAX_PASSES):
        new = simplify(rewrite(expr, lambda e: e._lower()))
        if new._token == expr._token:
            return new
        expr = new
    raise OptimizerError(f"lowering did not reach a fixed point within {MAX_PASSES} passes")


def topological(expr: Expr) -> tuple[list[Expr], dict[str, list[Expr]]]:
    """Distinct nodes with every consumer before its inputs, and each node's consumers."""
    nodes = {e._token: e for e in expr.walk()}
    consumers: dict[str, list[Expr]] = {token: [] for token in nodes}
    for e in nodes.values():
        for dep in e.dependencies():
            consumers[dep._token].append(e)
    waiting = {token: len(users) for token, users in consumers.items()}
    ready = [expr]
    order: list[Expr] = []
    while ready:
        e = ready.pop()
        order.append(e)
        for dep in e.dependencies():
            waiting[dep._token] -= 1
            if waiting[dep._token] == 0:
                ready.append(dep)
    return order, consumers


_UNSET: Any = object()


def column_demand(expr: Expr) -> dict[str, frozenset[Any] | None]:
    """For each node, the union of the columns its consumers read (``None``: all)."""
    order, _ = topological(expr)
    demand: dict[str, Any] = {expr._token: None}
    for e in order:
        mine = demand.get(e._token, _UNSET)
        if mine is _UNSET:
            mine = None
        for dep in e.dependencies():
            wanted = e._required_columns(dep, mine)
            before = demand.get(dep._token, _UNSET)
            if before is _UNSET:
                demand[dep._token] = wanted
            elif before is None or wanted is None:
                demand[dep._token] = None
            else:
                demand[dep._token] = before | wanted
    return demand


def prune_columns(expr: Expr) -> Expr:
    """Make every source that can produce only the columns its consumers read do so."""
    demand = column_demand(expr)
    replacements: dict[str, Expr] = {}
    for e in expr.walk():
        wanted = demand.get(e._token)
        meta = e._meta
        if wanted is None or not isinstance(meta, pd.DataFrame):
            continue
        present = list(meta.columns)
        if set(present) <= wanted:
            continue
        pruned = e._with_columns([c for c in present if c in wanted])
        if pruned is not None and pruned._token != e._token:
            replacements[e._token] = pruned
    if not replacements:
        return expr
    return rewrite(expr, lambda e: replacements.get(e._token))


def fuse_blockwise(expr: Expr) -> Expr:
    """Group Blockwise nodes into :class:`Fused` nodes, one task per output partition.

    A Blockwise node joins its consumers' group when all of its consumers are in that one
    group and no partition of it would be needed by two different output partitions of
    the group (which would compute it twice); otherwise it roots a group of its own.
    """
    order, consumers = topological(expr)
    group_of: dict[str, int] = {}
    groups: list[list[Blockwise]] = []
    # needed[token][j] = the root partition whose task computes partition j of that node.
    needed: dict[str, dict[int, int]] = {}
    for e in order:
        if not isinstance(e, Blockwise):
            continue
        users = consumers[e._token]
        user_groups = {group_of.get(u._token, -1) for u in users}
        target = next(iter(user_groups)) if len(user_groups) == 1 else -1
        if target >= 0:
            wanted = _partitions_needed(e, users, needed)
            if wanted is not None:
                group_of[e._token] = target
                groups[target].append(e)
                needed[e._token] = wanted
                continue
        group_of[e._token] = len(groups)
        groups.append([e])
        needed[e._token] = {i: i for i in range(e.npartitions)}

    rebuilt: dict[str, Expr] = {}

    def output_of(e: Expr) -> Expr:
        done = rebuilt.get(e._token)
        if done is not None:
            return done
        gid = group_of.get(e._token)
        if gid is None or len(groups[gid]) == 1:
            new = e._map_dependencies(output_of)
        else:
            members = groups[gid]
            inside = {m._token for m in members}
            outside: dict[str, Expr] = {}
            for m in members:
                for dep in m.dependencies():
                    if dep._token not in inside:
                        outside.setdefault(dep._token, dep)
            # Members were collected consumers-first; a fused task needs inputs first.
            new = Fused(tuple(reversed(members)), tuple(output_of(d) for d in outside.values()))
        rebuilt[e._token] = new
        return new

    return output_of(expr)


def _partitions_needed(e: Blockwise, users: list[Expr], needed: dict[str, dict[int, int]]) -> dict[int, int] | None:
    """Which root partition needs each partition of ``e``, or ``None`` on a conflict."""
    wanted: dict[int, int] = {}
    stem = e._name
    for user in users:
        assert isinstance(user, Blockwise)  # users in a group are Blockwise by construction
        for j, root_partition in needed[user._token].items():
            _, args, kwargs = user._task(j)
            for ref in references((args, kwargs), set()):
                head, _, part = ref.rpartition("-")
                if head != stem:
                    continue
                k = int(part)
                if wanted.setdefault(k, root_partition) != root_partition:
                    return None
    return wanted
