"""`Loaded`: what every loader returns, and the steps the loaders share.

A loader reads one layout of raw logs (see `homefeed.data.loaders`) into the four contract tables with
raw ids, and hands back a `Loaded`: the tables, every rejected row in `quarantine` (file, line,
column, reason, raw), and `counts` such that, for each input table, input_rows = kept_rows +
quarantined_rows. The helpers below are the steps loaders have in common: refusing a file whose
header lacks columns, quarantining repeated keys and events of items missing from the catalogue,
and filling in items and users seen only in events.

    >>> data = Loaded(events=ev, items=it, users=us, exposures=None, quarantine=q, counts={"events.input_rows": 3})  # doctest: +SKIP
    >>> data.input_rows                                                                                            # doctest: +SKIP
    {'events': 3}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import polars as pl

from homefeed.config import Ingest
from homefeed.data.quarantine import Checked, DataError, Policy, conflicts, empty_quarantine, unknown
from homefeed.data.rawfile import Source
from homefeed.data.validate import Field

UNKNOWN_RAW = -1
"""Raw id meaning "not recorded" for brand, shop, leaf_category. It is one shared id, so code that
spreads a page across brands or shops should skip it rather than treat all such items as one brand."""


@dataclass
class Loaded:
    """The contract tables with raw ids, the quarantine, and the accounting.

    events: user_id, item_id, behavior (schema.BEHAVIOR), ts (Int64 unix s) [, scene]
    exposures: request_id, user_id, item_id, ts, position, page, channel, clicked [, trigger_item]; or None
    items: item_id, leaf_category, brand, shop, price [, optional columns]; users: user_id [, gender, age, ...]
    quarantine: file, line (1-based, header counted), column (as in the file), reason, raw (the row's text)
    counts: "<table>.input_rows", "<table>.kept_rows", "<table>.quarantined_rows", "<table>.quarantined.<reason>"
    """

    events: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    exposures: pl.DataFrame | None
    quarantine: pl.DataFrame
    counts: dict[str, int]
    format: str = "generic"

    @property
    def input_rows(self) -> dict[str, int]:
        """Rows read per input table, e.g. {"events": 110300} (derived tables are not inputs)."""
        return {k.split(".")[0]: v for k, v in self.counts.items() if k.endswith(".input_rows")}

    def quarantine_counts(self) -> dict[str, dict[str, int]]:
        """Quarantined rows per input table and reason, e.g. {"events": {"bad timestamp": 2}}."""
        out: dict[str, dict[str, int]] = {t: {} for t in self.input_rows}
        for key, n in self.counts.items():
            table, _, reason = key.partition(".quarantined.")
            if reason:
                out[table][reason] = n
        return out


def assemble(checked: Mapping[str, Checked], *, fmt: str, tables: Mapping[str, pl.DataFrame]) -> Loaded:
    """A `Loaded` from final `tables` and the `Checked` files they came from (for the accounting)."""
    parts = [c.quarantine for c in checked.values()]
    quarantine = pl.concat([empty_quarantine(), *parts]) if parts else empty_quarantine()
    counts = {k: v for c in checked.values() for k, v in c.counts().items()}
    return Loaded(events=tables["events"], items=tables["items"], users=tables["users"],
                  exposures=tables.get("exposures"), quarantine=quarantine, counts=counts, format=fmt)


def policy_of(policy: Policy | None, ingest: Ingest) -> Policy:
    if policy not in (None, "quarantine", "strict"):
        raise ValueError(f"unknown policy {policy!r}; valid policies: quarantine, strict")
    return policy or ingest.policy


def check_columns(src: Source, expected: Sequence[str], *, exact: bool) -> None:
    """File-level: every expected column is in the header (and, if `exact`, no other)."""
    missing = [c for c in expected if c not in src.columns]
    extra = [c for c in src.columns if c not in expected] if exact else []
    line = 1 if src.header else None
    if missing:
        raise DataError(src.name, line, missing[0], f"missing column(s) {', '.join(map(repr, missing))}; "
                        f"the file has: {', '.join(src.columns)}")
    if extra:
        raise DataError(src.name, line, extra[0], f"unexpected column(s) {', '.join(map(repr, extra))}; "
                        f"expected exactly: {', '.join(expected)}")


def reject_conflicts(c: Checked, src: Source, key: list[str], *, what: str, policy: Policy, duplicates: bool = True,
                     fields: Sequence[Field] = (), attrs: list[str] | None = None) -> None:
    """Quarantine rows repeating an earlier row's `key`: with other `attrs` (default: all other
    columns), or (if `duplicates`) the same."""
    attrs = attrs if attrs is not None else [col for col in c.rows.columns if col not in (*key, "line")]
    names = {f.name: f.source for f in fields if f.source}
    c.reject(conflicts(c.rows, key, attrs, what=what, columns=names, duplicates=duplicates),
             policy=policy, raw=src.raw_lines)


def reject_unknown_items(c: Checked, src: Source, items: Checked, *, policy: Policy, source_column: str) -> None:
    """Quarantine rows of `c` whose item_id (`source_column` in the file) is missing from the catalogue `items`."""
    bad = unknown(c.rows, "item_id", items.rows["item_id"], what="item", where=f"the catalogue {items.file}",
                  source_column=source_column)
    c.reject(bad, policy=policy, raw=src.raw_lines)


def derived_items(item_ids: pl.Series) -> pl.DataFrame:
    """Items seen only in events: their attributes unknown (UNKNOWN_RAW ids, null price)."""
    fill = pl.lit(UNKNOWN_RAW, pl.Int64)
    return item_ids.unique(maintain_order=True).alias("item_id").to_frame().with_columns(
        leaf_category=fill, brand=fill, shop=fill, price=pl.lit(None, pl.Float64))


def complete_users(users: pl.DataFrame | None, *user_ids: pl.Series) -> pl.DataFrame:
    """`users` plus a row (attributes null) for every user id seen elsewhere but not in it."""
    seen = pl.concat([s.alias("user_id") for s in user_ids]).unique(maintain_order=True).to_frame()
    if users is None:
        return seen
    extra = seen.join(users.select("user_id"), on="user_id", how="anti")
    return pl.concat([users, extra], how="diagonal")

