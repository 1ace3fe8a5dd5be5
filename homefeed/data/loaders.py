"""Loaders: raw logs in known layouts -> the four contract tables, validated, with raw ids kept.

These layouts are understood (`detect_format` tells them apart):

* "world": a folder written by `homefeed generate` (world.json + events/items/users[/exposures].parquet);
* "taobao": Taobao UserBehavior CSV, no header: user_id,item_id,category_id,behavior_type,timestamp;
* "alimama": the Alibaba display-ad CTR folder: raw_sample.csv, ad_feature.csv, user_profile.csv
  (see `homefeed.data.formats`);
* "sequences": SASRec / S3-Rec `user item item ...` files, no clock (`homefeed.data.sequences`);
* "recbole": RecBole atomic files .inter/.item/.user (`homefeed.data.recbole`);
* "sessions": session logs such as DIGINETICA item views (`homefeed.data.session_logs`);
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

import re
from pathlib import Path
from typing import Mapping

import polars as pl

from homefeed.config import Ingest
from homefeed.data.formats import load_alimama, load_taobao
from homefeed.data.loaded import (UNKNOWN_RAW, Loaded, assemble, check_columns, complete_users, derived_items, policy_of,
                                  reject_conflicts, reject_unknown_items)
from homefeed.data.quarantine import Checked, DataError, Policy, auto_int
from homefeed.data.rawfile import Source, open_parquet, open_text
from homefeed.data.schema import BEHAVIOR, BEHAVIORS, CONTRACTS, ID_COLUMNS
from homefeed.data.validate import Field, triage

__all__ = ["DataError", "Loaded", "UNKNOWN_RAW", "detect_format", "load", "load_alimama", "load_generic", "load_taobao", "load_world"]

TABLES = ("events", "exposures", "items", "users")
KINDS = {"request_id": "int", "position": "int", "page": "int", "age": "int", "purchase_power": "int",
         "session_id": "int", "clicked": "flag", "price": "float", "ts": "ts", "behavior": "code", "pools": "any",
         **{c: "key" for c in ID_COLUMNS}}
NON_NEGATIVE = {"position", "page", "age", "purchase_power"}
FILLABLE = {"leaf_category": UNKNOWN_RAW, "brand": UNKNOWN_RAW, "shop": UNKNOWN_RAW, "price": None}
"""Required item columns a file may lack, and their fill. An empty id in a file is unknown too; an
empty price is a "missing value" (a null price only when the file has no price column at all)."""


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
            required = col.required and not (col.name in FILLABLE and kind == "key")
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
            fields[table] = contract_fields(table, src, mapping.get(table, {}), behavior_map=behavior_map,
                                            ts_format=ts_format)
            checked[table] = triage(src, fields[table], table=table, ingest=ingest, policy=policy)
    _unify_ids(checked)
    keys = {"items": ["item_id"], "users": ["user_id"], "exposures": ["request_id", "item_id"]}
    for table, key in keys.items():
        if table in checked:
            reject_conflicts(checked[table], sources[table], key, what=table[:-1], policy=policy, fields=fields[table])
    for table in ("events", "exposures"):
        if table in checked and "items" in checked:
            source = next((f.source for f in fields[table] if f.name == "item_id" and f.source), "item_id")
            reject_unknown_items(checked[table], sources[table], checked["items"], policy=policy, source_column=source)
    tables = {t: c.rows.drop("line") for t, c in checked.items()}
    item_ids = [tables[t]["item_id"] for t in ("events", "exposures") if t in tables]
    tables.setdefault("items", derived_items(pl.concat(item_ids)))
    user_ids = [tables[t]["user_id"] for t in ("events", "exposures") if t in tables]
    listed = tables.get("users")
    tables["users"] = complete_users(listed, *user_ids)
    loaded = assemble(checked, fmt=fmt, tables=tables)
    if listed is not None:  # users seen only in events or exposures: derived rows of the users table
        loaded.counts["users.derived_rows"] = tables["users"].height - listed.height
    return loaded


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
    items are derived from the events (attributes unknown); users seen in events or exposures but
    not in the users file (or without one) get a row of null attributes.
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

SESSION_HEADER = {"sessionid", "itemid"}  # DIGINETICA-style session logs (ignoring case and underscores)


def _looks_like_sequences(lines: list[str]) -> bool:
    """Every line `user item ...`: two or more space-separated integers, no other separator."""
    return bool(lines) and all(
        len(line.split()) >= 2 and all(t.isdigit() for t in line.split()) and not any(c in line for c in ",;|\t")
        for line in lines)


def detect_format(src: str | Path) -> str:
    """"world", "alimama", "recbole", "taobao", "sessions", "sequences", or "generic" (which needs a
    column mapping: `load_generic`). Only cheap, unambiguous signs count: folder contents, a `.inter`
    suffix, the first lines of a text file."""
    src = Path(src)
    if src.is_dir():
        names = {p.name for p in src.iterdir()}
        if "world.json" in names and {"events.parquet", "items.parquet"} <= names:
            return "world"
        if {"raw_sample.csv", "ad_feature.csv"} <= names:
            return "alimama"
        if sum(name.endswith(".inter") for name in names) == 1:
            return "recbole"
        return "generic"
    if src.suffix == ".inter":
        return "recbole"
    if src.is_file() and src.suffix.lower() not in (".parquet", ".pq"):
        with src.open("rb") as f:
            lines = [f.readline().decode("utf-8", errors="replace").lstrip("\ufeff").strip() for _ in range(5)]
        lines = [line for line in lines if line]
        for line in lines[:2]:
            parts = line.split(",")
            if len(parts) == 5 and parts[3] in ("pv", "fav", "cart", "buy") and parts[0].isdigit():
                return "taobao"
        header = {c.strip().lower().replace("_", "") for c in re.split(r"[,;\t|]", lines[0])} if lines else set()
        if SESSION_HEADER <= header:
            return "sessions"
        if _looks_like_sequences(lines):
            return "sequences"
    return "generic"


def load(src: str | Path, *, policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """Load `src` in whichever known format `detect_format` recognises."""
    fmt = detect_format(src)
    loaders = {"world": load_world, "alimama": load_alimama, "taobao": load_taobao}
    if fmt not in loaders:
        raise DataError(src, None, None, "format not recognised (world folder, alimama folder or Taobao CSV); "
                        "for other files use load_generic with a column mapping")
    return loaders[fmt](src, policy=policy, ingest=ingest)
