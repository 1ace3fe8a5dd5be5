"""Printing results: one table layout and one JSON form for every `evaluate` and `bench` command.

Every evaluation in homefeed ends in the same shape, rows of named metrics:
`{row_name: {metric: value}}` (a channel, a model, a mechanism variant per row). This module turns
that shape into a rich `Table` for people and into JSON for scripts, so recall, rank and mechanism
reports look alike and none of them formats numbers by hand.

    >>> rows = {"itemcf": {"hitrate@50": 0.31, "users_served": 812}, "popular": {"hitrate@50": 0.12}}
    >>> table = metrics_table(rows, title="recall")   # columns: name, hitrate@50, users_served
    >>> print(to_json(rows))                           # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import numpy as np
from rich.console import Console
from rich.table import Table

MISSING = "-"


def format_value(value, *, digits: int = 4) -> str:
    """A metric for a table cell: ints as ints, floats with `digits` decimals, nan and None as '-'."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return MISSING if math.isnan(value) else f"{float(value):.{digits}f}"
    return str(value)


def metric_columns(rows: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Every metric name in `rows`, in order of first appearance."""
    seen: dict[str, None] = {}
    for metrics in rows.values():
        seen.update(dict.fromkeys(metrics))
    return list(seen)


def metrics_table(rows: Mapping[str, Mapping[str, object]], *, title: str | None = None,
                  columns: Iterable[str] | None = None, name_header: str = "name", digits: int = 4) -> Table:
    """A rich Table with one row per entry of `rows` and one column per metric.

    Parameters:
        rows: `{row_name: {metric: value}}`; a metric missing from a row prints as '-'.
        columns: metric names to show, in order (default: all, in order of first appearance).
        name_header: header of the first column (e.g. "channel", "model").
    """
    columns = list(columns) if columns is not None else metric_columns(rows)
    table = Table(title=title)
    table.add_column(name_header, style="bold")
    for c in columns:
        table.add_column(c, justify="right")
    for name, metrics in rows.items():
        table.add_row(str(name), *(format_value(metrics.get(c), digits=digits) for c in columns))
    return table


def _plain(obj):
    """numpy scalars/arrays and tuples -> JSON types; nan -> None (JSON has no nan)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    return obj


def to_json(obj, *, indent: int | None = 2) -> str:
    """`obj` (nested dicts of metrics, numpy values allowed) as a JSON string; nan becomes null."""
    return json.dumps(_plain(obj), indent=indent)


def print_json(obj, *, console: Console | None = None) -> None:
    """Print `obj` as JSON on stdout, nothing else, so `--json` output pipes into `jq`."""
    text = to_json(obj)
    if console is None:
        print(text)
    else:
        console.print(text, markup=False, highlight=False, soft_wrap=True)


def print_table(table: Table, *, console: Console | None = None) -> None:
    (console or Console()).print(table)
