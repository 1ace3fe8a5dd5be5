"""Loaders: raw logs in known layouts -> the four contract tables, validated, with raw ids kept.

Four layouts are understood (`detect_format` tells them apart):

* "world": a folder written by `homefeed generate` (world.json + events/items/users[/exposures].parquet);
* "taobao": Taobao UserBehavior CSV, no header: user_id,item_id,category_id,behavior_type,timestamp;
* "alimama": the Alibaba display-ad CTR folder: raw_sample.csv, ad_feature.csv, user_profile.csv
  (see `homefeed.data.formats`);
* "generic": any CSV/TSV/Parquet per table, with a column mapping `{"user_id": "uid", ...}`.

Every loader returns a `Loaded`: the tables, plus every rejected row in `quarantine` (file, line,
column, reason, raw) and `counts` such that, per input table, input_rows = kept_rows + quarantined_rows.
Attributes a format does not record are filled the same way everywhere: brand, shop and leaf_category
get the raw id `UNKNOWN_RAW` (-1; "-1" for string ids), price is null. Validation accepts a null price
only for formats that have no price column at all.

    >>> data = load_taobao("UserBehavior.csv")                       # doctest: +SKIP
    >>> data.counts["events.input_rows"] == data.events.height + data.quarantine.height   # doctest: +SKIP
    True
    >>> load_generic({"events": "log.tsv"}, {"events": {"user_id": "uid", "behavior": "=click"}})  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import polars as pl

from homefeed.config import Ingest
from homefeed.data.rawfile import Source, open_parquet, open_text
from homefeed.data.schema import BEHAVIOR, BEHAVIORS, CONTRACTS, ID_COLUMNS
from homefeed.data.quarantine import Checked, DataError, Policy, auto_int, conflicts, empty_quarantine, unknown
from homefeed.data.validate import Field, triage

UNKNOWN_RAW = -1
"""Raw id meaning "not recorded" for brand, shop, leaf_category. It is one shared id, so code that
spreads a page across brands or shops should skip it rather than treat all such items as one brand."""

TABLES = ("events", "exposures", "items", "users")
KINDS = {"request_id": "int", "position": "int", "page": "int", "age": "int", "purchase_power": "int",
         "session_id": "int", "clicked": "flag", "price": "float", "ts": "ts", "behavior": "code", "pools": "any",
         **{c: "key" for c in ID_COLUMNS}}
NON_NEGATIVE = {"position", "page", "age", "purchase_power"}
FILLABLE = {"leaf_category": UNKNOWN_RAW, "brand": UNKNOWN_RAW, "shop": UNKNOWN_RAW, "price": None}
"""Required item columns a file may lack: filled with these (price may be null only when absent)."""


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


def reject_unknown_items(c: Checked, src: Source, items: Checked, *, policy: Policy, column: str = "item_id") -> None:
    """Quarantine rows of `c` whose item is missing from the catalogue `items`."""
    source_column = next((f for f in src.columns if f in (column, "adgroup_id", "item_id")), column)
    bad = unknown(c.rows, column, items.rows["item_id"], what="item", where=f"the catalogue {items.file}",
                  source_column=source_column)
    c.reject(bad, policy=policy, raw=src.raw_lines)


def derived_items(item_ids: pl.Series) -> pl.DataFrame:
    """Items seen only in events: their attributes unknown (ids -1, price null)."""
    ids = item_ids.unique(maintain_order=True).alias("item_id")
    fill = pl.lit(UNKNOWN_RAW, pl.Int64) if ids.dtype != pl.String else pl.lit(str(UNKNOWN_RAW))
    return ids.to_frame().with_columns(leaf_category=fill, brand=fill, shop=fill, price=pl.lit(None, pl.Float64))


def complete_users(users: pl.DataFrame | None, *user_ids: pl.Series) -> pl.DataFrame:
    """`users` plus a row (attributes null) for every user id seen elsewhere but not in it."""
    seen = pl.concat([s.alias("user_id") for s in user_ids]).unique(maintain_order=True).to_frame()
    if users is None:
        return seen
    extra = seen.join(users.select("user_id"), on="user_id", how="anti")
    return pl.concat([users, extra], how="diagonal")


# ---------------------------------------------------------------------------------------------- taobao

TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
TAOBAO_FIELDS = [
    Field("user_id", "user_id", "id"),
    Field("item_id", "item_id", "id"),
    Field("leaf_category", "category_id", "id"),
    Field("behavior", "behavior_type", "code", codes={b: b for b in ("pv", "fav", "cart", "buy")}, dtype=BEHAVIOR),
    Field("ts", "timestamp", "ts"),
]


def _first_line_is_header(path: Path) -> bool:
    with Path(path).open("rb") as f:
        first = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff")
    return not first.split(",")[0].strip().lstrip("-").isdigit() and "behavior" in first.lower()


def load_taobao(path: str | Path, *, policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """Taobao UserBehavior CSV -> events (pv/fav/cart/buy) and items (leaf_category from category_id).

    Items get brand = shop = UNKNOWN_RAW and a null price (the format records none). A row giving its
    item another category than the item's first row did is quarantined ("conflicting item attributes").
    A header line naming the five columns is tolerated.
    """
    policy = policy_of(policy, ingest)
    header = Path(path).is_file() and _first_line_is_header(path)
    src = open_text(path, names=None if header else TAOBAO_COLUMNS)
    if header:
        check_columns(src, TAOBAO_COLUMNS, exact=True)
    c = triage(src, TAOBAO_FIELDS, table="events", ingest=ingest, policy=policy)
    reject_conflicts(c, src, ["item_id"], what="item", policy=policy, duplicates=False, fields=TAOBAO_FIELDS,
                     attrs=["leaf_category"])
    items = c.rows.select("item_id", "leaf_category").unique("item_id", keep="any").sort("item_id")
    items = items.with_columns(brand=pl.lit(UNKNOWN_RAW, pl.Int64), shop=pl.lit(UNKNOWN_RAW, pl.Int64),
                               price=pl.lit(None, pl.Float64))
    events = c.rows.select("user_id", "item_id", "behavior", "ts")
    users = events.select(pl.col("user_id").unique().sort())
    return assemble({"events": c}, fmt="taobao", tables={"events": events, "items": items, "users": users})


# --------------------------------------------------------------------------------------------- generic

def behavior_codes(behavior_map: Mapping[str, str] | None) -> dict[str, str]:
    """Raw behaviour value -> contract behaviour: the contract names themselves, plus `behavior_map`."""
    extra = dict(behavior_map or {})
    wrong = {k: v for k, v in extra.items() if v not in BEHAVIORS}
    if wrong:
        raise ValueError(f"behavior_map targets {wrong} are not behaviours; valid: {', '.join(BEHAVIORS)}")
    return {**{b: b for b in BEHAVIORS}, **extra}


def _constant(kind: str, text: str, codes: dict[str, str] | None):
    if kind == "code":
        if text not in codes:
            raise ValueError(f"constant '={text}' is not a behaviour; valid: {', '.join(codes)}")
        return codes[text]
    return int(text) if kind in ("int", "flag") else float(text) if kind == "float" else text


def contract_fields(table: str, src: Source, mapping: Mapping[str, str], *, behavior_map=None,
                    ts_format: str | None = None) -> list[Field]:
    """The fields of `table`'s contract, read from `src` under `mapping` (contract column -> file column,
    or "=VALUE" for a constant). Unmapped columns are looked up by their contract name."""
    contract = CONTRACTS[table]
    unknown_keys = sorted(set(mapping) - set(contract.names))
    if unknown_keys:
        raise ValueError(f"mapping for {table} names unknown column(s) {unknown_keys}; valid: {', '.join(contract.names)}")
    codes = behavior_codes(behavior_map)
    fields, missing = [], []
    for col in contract.columns:
        source, kind = mapping.get(col.name, col.name), KINDS.get(col.name, "text")
        opts = dict(kind=kind, codes=codes if kind == "code" else None, format=ts_format if kind == "ts" else None,
                    dtype=BEHAVIOR if kind == "code" else col.dtype if kind == "int" else None,
                    min=0 if col.name in NON_NEGATIVE else None)
        if source.startswith("="):
            fields.append(Field(col.name, None, fill=_constant(kind, source[1:], codes), **opts))
        elif source in src.columns:
            required = col.required and FILLABLE.get(col.name, 0) is not None
            fields.append(Field(col.name, source, required=required, fill=FILLABLE.get(col.name), **opts))
        elif col.name in mapping or (col.required and col.name not in FILLABLE):
            missing.append(source)
        elif col.required:
            fields.append(Field(col.name, None, fill=FILLABLE[col.name], **opts))
    if missing:
        check_columns(src, missing, exact=False)
    return fields


def open_any(path: str | Path, *, separator: str | None = None) -> Source:
    """Parquet by suffix (.parquet, .pq), otherwise delimited text with a header."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return open_parquet(path)
    return open_text(path, sep=separator, quotes=True)


def _unify_ids(checked: Mapping[str, Checked]) -> None:
    """Per id space (user, item, ...): plain-integer string ids become Int64; if any column of a space
    stays String, all its columns become String, so joins across tables match."""
    for c in checked.values():
        c.rows = auto_int(c.rows, [col for col in c.rows.columns if col in ID_COLUMNS])
    for space in set(ID_COLUMNS.values()):
        cols = [(c, col) for c in checked.values() for col, s in ID_COLUMNS.items() if s == space and col in c.rows.columns]
        if any(c.rows.schema[col] == pl.String for c, col in cols):
            for c, col in cols:
                c.rows = c.rows.with_columns(pl.col(col).cast(pl.String))


def load_tables(paths: Mapping[str, str | Path], mapping: Mapping[str, Mapping[str, str]] | None = None, *,
                behavior_map: Mapping[str, str] | None = None, separator: str | None = None,
                ts_format: str | None = None, policy: Policy | None = None, ingest: Ingest = Ingest(),
                fmt: str = "generic") -> Loaded:
    """Shared body of `load_generic` and `load_world`."""
    policy, mapping = policy_of(policy, ingest), dict(mapping or {})
    wrong = sorted((set(paths) | set(mapping)) - set(TABLES))
    if wrong:
        raise ValueError(f"unknown table(s) {wrong}; valid tables: {', '.join(TABLES)}")
    if "events" not in paths:
        raise ValueError(f"an events file is required; given: {', '.join(paths) or 'none'}")
    checked, sources, fields = {}, {}, {}
    for table in ("items", "users", "events", "exposures"):
        if table in paths:
            src = sources[table] = open_any(paths[table], separator=separator)
            fields[table] = contract_fields(table, src, mapping.get(table, {}), behavior_map=behavior_map, ts_format=ts_format)
            checked[table] = triage(src, fields[table], table=table, ingest=ingest, policy=policy)
    _unify_ids(checked)
    keys = {"items": ["item_id"], "users": ["user_id"], "exposures": ["request_id", "item_id"]}
    for table, key in keys.items():
        if table in checked:
            reject_conflicts(checked[table], sources[table], key, what=table[:-1], policy=policy, fields=fields[table])
    for table in ("events", "exposures"):
        if table in checked and "items" in checked:
            reject_unknown_items(checked[table], sources[table], checked["items"], policy=policy)
    tables = {t: c.rows.drop("line") for t, c in checked.items()}
    item_ids = [tables[t]["item_id"] for t in ("events", "exposures") if t in tables]
    tables.setdefault("items", derived_items(pl.concat(item_ids)))
    user_ids = [tables[t]["user_id"] for t in ("events", "exposures") if t in tables]
    tables["users"] = tables["users"] if "users" in tables else complete_users(None, *user_ids)
    return assemble(checked, fmt=fmt, tables=tables)


def load_generic(paths: Mapping[str, str | Path], mapping: Mapping[str, Mapping[str, str]] | None = None, *,
                 behavior_map: Mapping[str, str] | None = None, separator: str | None = None,
                 ts_format: str | None = None, policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """CSV/TSV/Parquet files, one per table (`events` required), read through a column mapping.

    paths: {"events": "log.csv", "items": "sku.parquet", ...}; mapping: {"events": {"user_id": "uid",
    "ts": "time", "behavior": "=buy"}} (contract column -> file column, "=VALUE" a constant).
    behavior_map: raw behaviour -> contract behaviour, e.g. {"view": "pv", "purchase": "buy"}.
    separator: None sniffs , tab ; | from the header. ts_format: strptime format when times are
    local date-times rather than unix seconds (converted with ingest.tz_offset_hours).
    Ids stay strings unless every value of an id space is a plain integer. Without an items file,
    items are derived from the events (attributes unknown); without a users file, users likewise.
    """
    return load_tables(paths, mapping, behavior_map=behavior_map, separator=separator, ts_format=ts_format,
                       policy=policy, ingest=ingest, fmt="generic")


WORLD_FILES = ("events", "items", "users", "exposures")


def load_world(folder: str | Path, *, policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """A folder written by `homefeed generate`: world.json and events/items/users[/exposures].parquet
    with contract columns. Columns outside the contracts (e.g. hidden ground truth) are not loaded."""
    folder = Path(folder)
    if not (folder / "world.json").is_file():
        raise DataError(folder, None, None, "not a generated world folder (no world.json)")
    paths = {t: folder / f"{t}.parquet" for t in WORLD_FILES if (folder / f"{t}.parquet").is_file()}
    for t in ("events", "items", "users"):
        if t not in paths:
            raise DataError(folder / f"{t}.parquet", None, None, "no such file (the world folder is incomplete)")
    return load_tables(paths, policy=policy, ingest=ingest, fmt="world")


# -------------------------------------------------------------------------------------------- dispatch

def detect_format(src: str | Path) -> str:
    """"world", "alimama", "taobao", or "generic" (which needs a column mapping: `load_generic`)."""
    src = Path(src)
    if src.is_dir():
        names = {p.name for p in src.iterdir()}
        if "world.json" in names and {"events.parquet", "items.parquet"} <= names:
            return "world"
        if {"raw_sample.csv", "ad_feature.csv"} <= names:
            return "alimama"
        return "generic"
    if src.is_file() and src.suffix.lower() not in (".parquet", ".pq"):
        with src.open("rb") as f:
            lines = [f.readline().decode("utf-8", errors="replace").strip() for _ in range(2)]
        for line in lines:
            parts = line.lstrip("\ufeff").split(",")
            if len(parts) == 5 and parts[3] in ("pv", "fav", "cart", "buy") and parts[0].isdigit():
                return "taobao"
    return "generic"


def load(src: str | Path, *, policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """Load `src` in whichever known format `detect_format` recognises."""
    from homefeed.data.formats import load_alimama

    fmt = detect_format(src)
    loaders = {"world": load_world, "alimama": load_alimama, "taobao": load_taobao}
    if fmt not in loaders:
        raise DataError(src, None, None, "format not recognised (world folder, alimama folder or Taobao CSV); "
                        "for other files use load_generic with a column mapping")
    return loaders[fmt](src, policy=policy, ingest=ingest)
