"""RecBole atomic files: `NAME.inter` (interactions), optional `NAME.item` and `NAME.user`.

Each file is tab-separated with one header line naming every column `field:type`
(type token, token_seq, float or float_seq; RecBole's own datasets, e.g. ml-100k, use this layout):

    ml-100k.inter   user_id:token  item_id:token  rating:float  timestamp:float
    ml-100k.item    item_id:token  movie_title:token_seq  release_year:token  class:token_seq
    ml-100k.user    user_id:token  age:token  gender:token  occupation:token  zip_code:token

Contract columns are read from fields by name; `mapping` ({contract column: field name}) overrides:

* events: user_id (or session_id when there is no user_id), item_id, ts from `timestamp` (unix
  seconds). Every row is one `behavior` (default "click": a rating is an interaction, not a
  purchase funnel). Without a timestamp field, each user's rows in file order get an ordinal clock
  (see `homefeed.data.split`) and ingest splits them leave-one-out. Ratings are not filtered.
* items: leaf_category = the first token of the first category-like field (categories, category,
  class, genre, genres, cate_id, category_id; `leaf_token="last"` takes the last token instead,
  for path-like categories); brand, price, title when present. Items missing from `.item` keep
  unknown attributes.
* users: gender, age (an integer), city (a `city` field, else the first three characters of a
  `zip_code`: its region); other fields, e.g. occupation, are not used.

    >>> data = load_recbole("data/ml-100k")            # doctest: +SKIP
    >>> data.items.columns                             # doctest: +SKIP
    ['item_id', 'leaf_category', 'brand', 'shop', 'price', 'title']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import polars as pl

from homefeed.config import Ingest
from homefeed.data.loaded import UNKNOWN_RAW, Loaded, assemble, complete_users, policy_of, reject_conflicts
from homefeed.data.quarantine import Checked, DataError, Policy, auto_int
from homefeed.data.rawfile import Source, open_text
from homefeed.data.schema import BEHAVIOR, BEHAVIORS
from homefeed.data.sequences import same_id_type, with_derived_items
from homefeed.data.split import ordinal_ts
from homefeed.data.validate import Field, triage

CATEGORY_FIELDS = ("categories", "category", "class", "genre", "genres", "cate_id", "category_id")
TITLE_FIELDS = ("title", "movie_title", "item_name", "name")
MAPPING_KEYS = ("user_id", "item_id", "ts", "leaf_category", "brand", "price", "title", "gender", "age", "city",
                "leaf_token")


def atomic_files(src: str | Path) -> dict[str, Path]:
    """{"inter": ..., "item": ..., "user": ...} for a folder holding one `.inter` file, or a `.inter` file
    (its `.item` and `.user` siblings of the same stem, where they exist)."""
    src = Path(src)
    if src.is_dir():
        inters = sorted(src.glob("*.inter"))
        if len(inters) != 1:
            found = ", ".join(p.name for p in inters) or "none"
            raise DataError(src, None, None, f"a RecBole folder needs exactly one .inter file; found {found} "
                            "(pass the .inter file itself to choose)")
        src = inters[0]
    if src.suffix != ".inter":
        raise DataError(src, None, None, "not a RecBole .inter file (nor a folder holding one)")
    if not src.is_file():
        raise DataError(src, None, None, "no such file")
    files = {"inter": src}
    for kind in ("item", "user"):
        if src.with_suffix(f".{kind}").is_file():
            files[kind] = src.with_suffix(f".{kind}")
    return files


def _fields(src: Source) -> dict[str, str]:
    """Field name -> header column ("user_id" -> "user_id:token"); refuses a header without types."""
    out = {}
    for col in src.columns:
        name, sep, kind = col.partition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            raise DataError(src.name, 1, col, "RecBole headers name every column `field:type` with type token, "
                            "token_seq, float or float_seq")
        out[name] = col
    return out


def _source(fields: dict[str, str], mapping: Mapping[str, str], name: str, *candidates: str) -> str | None:
    """The header column for contract column `name`: the mapped field, else the first candidate present."""
    if name in mapping:
        if mapping[name] not in fields:
            raise ValueError(f"mapping {name!r} -> {mapping[name]!r}: no such field; fields: {', '.join(fields)}")
        return fields[mapping[name]]
    return next((fields[c] for c in candidates if c in fields), None)


def has_timestamps(src: str | Path, mapping: Mapping[str, Any] | None = None) -> bool:
    """Whether the `.inter` file records times (then the log has a clock)."""
    inter = open_text(atomic_files(src)["inter"], sep="\t")
    return _source(_fields(inter), dict(mapping or {}), "ts", "timestamp") is not None


def _check_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(mapping) - set(MAPPING_KEYS))
    if unknown:
        raise ValueError(f"RecBole mapping has unknown key(s) {unknown}; valid: {', '.join(MAPPING_KEYS)}")
    if mapping.get("leaf_token", "first") not in ("first", "last"):
        raise ValueError(f"RecBole mapping: leaf_token {mapping['leaf_token']!r} is not first or last")
    return dict(mapping)


def _events(path: Path, mapping: dict, *, behavior: str, policy: Policy, ingest: Ingest) -> tuple[Checked, bool]:
    src = open_text(path, sep="\t")
    fields = _fields(src)
    user, item = _source(fields, mapping, "user_id", "user_id", "session_id"), _source(fields, mapping, "item_id", "item_id")
    if user is None or item is None:
        raise DataError(path, 1, None, f"needs a user_id (or session_id) and an item_id field; fields: {', '.join(fields)}")
    ts = _source(fields, mapping, "ts", "timestamp")
    spec = [Field("user_id", user, "key"), Field("item_id", item, "key"), Field("behavior", None, "code", fill=behavior,
                                                                                dtype=BEHAVIOR)]
    spec.append(Field("ts", ts, "ts") if ts else Field("ts", None, "int", fill=0))
    c = triage(src, spec, table="events", ingest=ingest, policy=policy)
    if ts is None:  # rows in file order are each user's order
        c.rows = c.rows.sort("line").with_columns(ordinal_ts(step_s=ingest.ordinal_step_s))
    return c, ts is not None


def _items(path: Path, mapping: dict, *, policy: Policy, ingest: Ingest) -> Checked:
    src = open_text(path, sep="\t")
    fields = _fields(src)
    item = _source(fields, mapping, "item_id", "item_id")
    if item is None:
        raise DataError(path, 1, None, f"needs an item_id field; fields: {', '.join(fields)}")
    leaf = _source(fields, mapping, "leaf_category", *CATEGORY_FIELDS)
    spec = [Field("item_id", item, "key"),
            Field("leaf_category", leaf, "key", required=False, fill=UNKNOWN_RAW),
            Field("brand", _source(fields, mapping, "brand", "brand"), "key", required=False, fill=UNKNOWN_RAW),
            Field("shop", None, "key", fill=UNKNOWN_RAW),
            Field("price", _source(fields, mapping, "price", "price"), "float", required=False)]
    title = _source(fields, mapping, "title", *TITLE_FIELDS)
    if title:
        spec.append(Field("title", title, "text", required=False))
    c = triage(src, spec, table="items", ingest=ingest, policy=policy)
    if leaf and leaf.endswith("_seq"):  # "Animation Children's Comedy" -> "Animation"
        tokens = pl.col("leaf_category").str.split(" ")
        pick = tokens.list.last() if mapping.get("leaf_token") == "last" else tokens.list.first()
        c.rows = c.rows.with_columns(pick.alias("leaf_category"))
    reject_conflicts(c, src, ["item_id"], what="item", policy=policy, fields=spec)
    return c


def _users(path: Path, mapping: dict, *, policy: Policy, ingest: Ingest) -> Checked:
    src = open_text(path, sep="\t")
    fields = _fields(src)
    user = _source(fields, mapping, "user_id", "user_id", "session_id")
    if user is None:
        raise DataError(path, 1, None, f"needs a user_id field; fields: {', '.join(fields)}")
    city = _source(fields, mapping, "city", "city")
    zip_code = None if city else _source(fields, {}, "city", "zip_code", "zip")
    spec = [Field("user_id", user, "key"),
            Field("gender", _source(fields, mapping, "gender", "gender"), "text", required=False),
            Field("age", _source(fields, mapping, "age", "age"), "int", required=False, dtype=pl.Int32, min=0),
            Field("city", city or zip_code, "text", required=False)]
    c = triage(src, spec, table="users", ingest=ingest, policy=policy)
    if zip_code:
        c.rows = c.rows.with_columns(pl.col("city").str.slice(0, 3))
    reject_conflicts(c, src, ["user_id"], what="user", policy=policy, fields=spec)
    return c


def load_recbole(src: str | Path, *, mapping: Mapping[str, Any] | None = None, behavior: str = "click",
                 policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """RecBole atomic files (a folder, or its `.inter` file) -> events, items, users (see the module docstring).

    counts carry "items.derived_rows" / "users.derived_rows": event items (users) the `.item` (`.user`)
    file lacks, kept with unknown attributes.
    """
    policy, mapping = policy_of(policy, ingest), _check_mapping(mapping or {})
    if behavior not in BEHAVIORS:
        raise ValueError(f"behavior {behavior!r} is not one of {', '.join(BEHAVIORS)}")
    files = atomic_files(src)
    checked = {"events": _events(files["inter"], mapping, behavior=behavior, policy=policy, ingest=ingest)[0]}
    if "item" in files:
        checked["items"] = _items(files["item"], mapping, policy=policy, ingest=ingest)
    if "user" in files:
        checked["users"] = _users(files["user"], mapping, policy=policy, ingest=ingest)
    for c in checked.values():
        c.rows = auto_int(c.rows, [col for col in ("user_id", "item_id", "leaf_category", "brand", "shop") if col in c.rows.columns])
    events = checked["events"].rows.select("user_id", "item_id", "behavior", "ts")
    catalogue = checked["items"].rows.drop("line") if "items" in checked else None
    if catalogue is not None:
        events, catalogue = same_id_type(events, catalogue, column="item_id")
    items, n_derived = with_derived_items(catalogue, events["item_id"])
    users = checked["users"].rows.drop("line") if "users" in checked else None
    if users is not None:
        events, users = same_id_type(events, users, column="user_id")
    all_users = complete_users(users, events["user_id"])
    loaded = assemble(checked, fmt="recbole", tables={"events": events, "items": items, "users": all_users})
    if catalogue is not None:
        loaded.counts["items.derived_rows"] = n_derived
    if users is not None:
        loaded.counts["users.derived_rows"] = all_users.height - users.height
    return loaded
