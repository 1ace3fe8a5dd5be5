"""Sequence files (SASRec, S3-Rec, ICLRec): each user's items in time order, with no clock.

    Toys_and_Games.txt (S3-Rec)       Video.txt (SASRec)
    1 11 12 13 14 15                  1 11
    2 16 12 17 18 19                  1 12
                                      2 16

Each line is `user item item ...`, separated by spaces (tabs and repeated spaces are tolerated); a
user's lines continue one sequence in file order, so both layouts above read the same. Every item is
one event. The files record no time, so events get an *ordinal clock* (`split.ordinal_ts`: a user's
events `ingest.ordinal_step_s` apart, every user ending at the same instant), and ingest splits them
leave-one-out by default.

Behaviour: these are reviews or ratings, interactions without a funnel, so they become `click`
unless the caller says otherwise. As `buy` the fake-order rule (a buy needs an earlier view of the
item) would judge nearly every row fake, since nothing in the file is a view.

Item attributes (`Toys_and_Games_item2attributes.json`, {"item": [attribute, ...]}) are side
information: leaf_category is the item's most specific attribute, by default the one shared by the
fewest items (ties: the one listed later); `AttributeRoles` can name a list position as the brand
(S3-Rec lists the brand first, then the categories root to leaf) or pick the leaf by position. Items
missing from the file, or with an empty list, keep unknown attributes; shop and price are unknown.

Rejected rows (one per item on a line, or per line without items): "blank line", "no items",
"bad encoding", and, when the file's ids are integers, "not an integer"; the column names the field
("user" or "item K"). Attribute entries that are not a list are quarantined from the items table.

    >>> data = load_sequences("Toys_and_Games.txt", attributes="Toys_and_Games_item2attributes.json")  # doctest: +SKIP
    >>> data.events.columns                                                                            # doctest: +SKIP
    ['user_id', 'item_id', 'behavior', 'ts']
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import polars as pl

from homefeed.config import Ingest
from homefeed.data.loaded import UNKNOWN_RAW, Loaded, assemble, complete_users, derived_items, policy_of
from homefeed.data.quarantine import QUARANTINE_SCHEMA, Checked, DataError, Policy, auto_int
from homefeed.data.rawfile import head_text, open_lines
from homefeed.data.schema import BEHAVIOR, BEHAVIORS
from homefeed.data.split import ordinal_ts
from homefeed.data.validate import BAD_CHAR, LINE, RAW

Position = Literal["first", "last"]


@dataclass(frozen=True)
class AttributeRoles:
    """Which of an item's attributes is what (`--attribute-map FILE.json` holds these keys).

    leaf: "fewest_items" (the attribute shared by the fewest items: the most specific), "first" or "last".
    brand: the list position holding the brand ("first" for S3-Rec files), or None (brand unknown).
    ignore: attribute ids never taken as the leaf (e.g. a catch-all root category).
    """

    leaf: Literal["fewest_items", "first", "last"] = "fewest_items"
    brand: Position | None = None
    ignore: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, doc: Mapping[str, Any] | None) -> "AttributeRoles":
        doc = dict(doc or {})
        unknown = sorted(set(doc) - {"leaf", "brand", "ignore"})
        if unknown:
            raise ValueError(f"attribute map has unknown key(s) {unknown}; valid: leaf, brand, ignore")
        if doc.get("leaf", "fewest_items") not in ("fewest_items", "first", "last"):
            raise ValueError(f"attribute map: leaf {doc['leaf']!r} is not one of fewest_items, first, last")
        if doc.get("brand") not in (None, "first", "last"):
            raise ValueError(f"attribute map: brand {doc['brand']!r} is not one of first, last, null")
        return cls(leaf=doc.get("leaf", "fewest_items"), brand=doc.get("brand"), ignore=tuple(doc.get("ignore", ())))


# ------------------------------------------------------------------------------------------- sequences

def _integer_ids(path: Path) -> bool:
    """Whether every token in the file's first 64 KiB is an integer (then a later non-integer is an error)."""
    tokens = head_text(path).split()[:-1]  # the last token may be cut off by the 64 KiB boundary
    return all(t.lstrip("-").isdigit() for t in tokens)


def _tokens(path: Path) -> tuple[pl.DataFrame, int]:
    """One row per token: line, pos (0 = the user), n (tokens on the line), token, raw; and the line count."""
    lines, _ = open_lines(path)
    text = pl.col(RAW).str.replace_all(r"\s+", " ").str.strip_chars()
    df = lines.select(pl.col(LINE).cast(pl.Int64).alias("line"), pl.col(RAW).alias("raw"),
                      pl.when(text != "").then(text.str.split(" ")).alias("token")).collect(engine="streaming")
    n_lines = df.height
    df = df.with_columns(n=pl.col("token").list.len().fill_null(0)).explode("token")
    return df.with_columns(pos=pl.int_range(pl.len()).over("line")), n_lines


def _problems(tokens: pl.DataFrame, *, integer_ids: bool) -> pl.DataFrame:
    """Rows (line, pos, column, reason) for the units rejected: each bad token, each line without an item.
    A bad user token rejects every item of its line."""
    bad_token = pl.col("token").str.contains(BAD_CHAR, literal=True)
    reason = pl.when(bad_token).then(pl.lit("bad encoding"))
    if integer_ids:
        reason = reason.when(pl.col("token").cast(pl.Int64, strict=False).is_null()).then(pl.lit("not an integer"))
    t = tokens.with_columns(reason.otherwise(pl.lit(None, pl.String)).alias("reason"))
    users = t.filter(pl.col("pos") == 0).select("line", user_reason="reason")
    t = t.join(users, on="line", how="left")
    empty = t.filter(pl.col("n") <= 1).select(
        "line", "pos", pl.lit(None, pl.String).alias("column"),
        pl.when(pl.col("n") == 0).then(pl.lit("blank line")).otherwise(pl.lit("no items")).alias("reason"))
    items = t.filter((pl.col("pos") > 0) & (pl.col("user_reason").is_not_null() | pl.col("reason").is_not_null()))
    items = items.select("line", "pos", pl.when(pl.col("user_reason").is_not_null()).then(pl.lit("user"))
                         .otherwise(pl.format("item {}", "pos")).alias("column"),
                         pl.coalesce("user_reason", "reason").alias("reason"))
    return pl.concat([empty, items]).sort("line", "pos")


def _describe(reason: str, column: str | None, raw: str | None) -> str:
    value = None
    if raw is not None and column is not None:
        parts = raw.split()
        i = 0 if column == "user" else int(column.split()[1])
        value = parts[i] if i < len(parts) else None
    return {"blank line": "blank line", "no items": f"user {raw.strip() if raw else ''!r} has no items",
            "bad encoding": "invalid UTF-8 bytes (is the file in another encoding, e.g. GBK?)",
            "not an integer": f"{value!r} is not an integer (the file's ids are integers)"}.get(reason, reason)


def read_sequences(path: str | Path, *, behavior: str, policy: Policy, step_s: int) -> tuple[pl.DataFrame, Checked]:
    """The events of a sequence file (user_id, item_id, behavior, ts on an ordinal clock) and its `Checked`."""
    path = Path(path)
    if behavior not in BEHAVIORS:
        raise ValueError(f"behavior {behavior!r} is not one of {', '.join(BEHAVIORS)}")
    tokens, _ = _tokens(path)
    problems = _problems(tokens, integer_ids=_integer_ids(path))
    if policy == "strict" and problems.height:
        line, _, column, reason = problems.row(0)
        raw = tokens.filter(pl.col("line") == line)["raw"][0]
        raise DataError(path, line, column, _describe(reason, column, raw))
    units = tokens.filter((pl.col("pos") > 0) | (pl.col("n") <= 1))  # events, and one unit per empty line
    users = tokens.filter(pl.col("pos") == 0).select("line", user_id="token")
    kept = (units.filter(pl.col("n") > 1).join(problems.select("line", "pos"), on=["line", "pos"], how="anti")
            .join(users, on="line").sort("line", "pos"))
    events = auto_int(kept.select("line", "user_id", item_id="token"), ["user_id", "item_id"]).with_columns(
        pl.lit(behavior, BEHAVIOR).alias("behavior"), ordinal_ts(step_s=step_s))
    quarantine = problems.join(tokens.select("line", "raw").unique("line"), on="line", how="left").select(
        pl.lit(str(path)).alias("file"), "line", "column", "reason", "raw").cast(QUARANTINE_SCHEMA)
    checked = Checked("events", str(path), events.select("line", "user_id", "item_id", "behavior", "ts"),
                      quarantine, input_rows=units.height)
    return checked.rows.drop("line"), checked


# ------------------------------------------------------------------------------------------ attributes

def _attribute_entries(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(item_id String, attrs List[String]) for every well-formed entry, and the quarantine of the others."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, None, None, "no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, getattr(e, "lineno", None), None, f"not a JSON object of item -> attribute list: {e}") from None
    if not isinstance(doc, dict):
        raise DataError(path, None, None, f"expected a JSON object {{item: [attribute, ...]}}, got {type(doc).__name__}")
    good, bad = {}, []
    for key, value in doc.items():
        if isinstance(value, list) and all(isinstance(a, (int, str)) and not isinstance(a, bool) for a in value):
            good[key] = [str(a) for a in value]
        else:
            bad.append((str(path), None, f"item {key}", "attributes not a list of ids", json.dumps(value)[:200]))
    items = pl.DataFrame({"item_id": list(good), "attrs": list(good.values())},
                         schema={"item_id": pl.String, "attrs": pl.List(pl.String)})
    return items, pl.DataFrame(bad, schema=QUARANTINE_SCHEMA, orient="row")


def pick_attributes(entries: pl.DataFrame, roles: AttributeRoles) -> pl.DataFrame:
    """(item_id, attrs) -> (item_id, leaf_category, brand): raw attribute ids, null where none applies.

    The brand position (if any) is set aside first; the leaf is chosen among the remaining attributes,
    less `roles.ignore`. "fewest_items" counts distinct items per attribute over the whole file.
    """
    long = (entries.with_columns(pl.col("attrs").list.len().alias("n")).explode("attrs")
            .with_columns(pos=pl.int_range(pl.len()).over("item_id")).filter(pl.col("attrs").is_not_null()))
    brand_at = {"first": pl.col("pos") == 0, "last": pl.col("pos") == pl.col("n") - 1}.get(roles.brand, pl.lit(False))
    brands = long.filter(brand_at).select("item_id", brand="attrs")
    rest = long.filter(~brand_at & ~pl.col("attrs").is_in([str(a) for a in roles.ignore]))
    if roles.leaf == "fewest_items":
        sizes = rest.group_by("attrs").agg(size=pl.col("item_id").n_unique())
        rest = rest.join(sizes, on="attrs").sort("item_id", "size", -pl.col("pos"))
        leaves = rest.unique("item_id", keep="first")
    else:
        leaves = rest.sort("item_id", "pos").unique("item_id", keep=roles.leaf)
    out = entries.select("item_id").join(leaves.select("item_id", leaf_category="attrs"), on="item_id", how="left")
    return out.join(brands, on="item_id", how="left")


def load_attributes(path: str | Path, roles: AttributeRoles, *, policy: Policy) -> Checked:
    """The item table from an item2attributes JSON file: item_id, leaf_category, brand, shop, price (raw ids)."""
    path = Path(path)
    entries, quarantine = _attribute_entries(path)
    if policy == "strict" and quarantine.height:
        _, _, column, reason, raw = quarantine.row(0)
        raise DataError(path, None, column, f"{reason}: {raw}")
    picked = auto_int(pick_attributes(entries, roles), ["item_id", "leaf_category", "brand"])
    fill = pl.lit(UNKNOWN_RAW)
    rows = picked.with_columns(
        *[pl.col(c).fill_null(fill if picked.schema[c] != pl.String else pl.lit(str(UNKNOWN_RAW))) for c in
          ("leaf_category", "brand")],
        shop=pl.lit(UNKNOWN_RAW, pl.Int64), price=pl.lit(None, pl.Float64))
    rows = rows.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
    return Checked("items", str(path), rows.select("line", "item_id", "leaf_category", "brand", "shop", "price"),
                   quarantine, input_rows=entries.height + quarantine.height)


# ---------------------------------------------------------------------------------------------- shared

def same_id_type(*frames: pl.DataFrame, column: str) -> list[pl.DataFrame]:
    """The id `column` of every frame as one dtype: Int64 if all are integers, else String."""
    if all(f.schema[column] == pl.Int64 for f in frames):
        return list(frames)
    return [f.with_columns(pl.col(column).cast(pl.String)) for f in frames]


def with_derived_items(catalogue: pl.DataFrame | None, item_ids: pl.Series) -> tuple[pl.DataFrame, int]:
    """The catalogue plus a row of unknown attributes for every event item it lacks; and how many were added."""
    derived = derived_items(item_ids)
    if catalogue is None:
        return derived, derived.height
    catalogue, derived = same_id_type(catalogue, derived, column="item_id")
    extra = derived.join(catalogue.select("item_id"), on="item_id", how="anti")
    extra = extra.with_columns(pl.col(c).cast(catalogue.schema[c]) for c in ("leaf_category", "brand", "shop", "price")
                               if c in catalogue.columns)
    return pl.concat([catalogue, extra], how="diagonal_relaxed"), extra.height


def load_sequences(path: str | Path, *, attributes: str | Path | None = None,
                   attribute_roles: AttributeRoles | Mapping[str, Any] | None = None, behavior: str = "click",
                   policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """A sequence file (and optionally its item2attributes JSON) -> events, items, users.

    behavior: what every row is (default "click"; see the module docstring for why not "buy").
    counts carry "items.derived_rows": event items the attribute file lacks, kept with unknown attributes.
    """
    policy = policy_of(policy, ingest)
    roles = attribute_roles if isinstance(attribute_roles, AttributeRoles) else AttributeRoles.parse(attribute_roles)
    events, seq = read_sequences(path, behavior=behavior, policy=policy, step_s=ingest.ordinal_step_s)
    checked = {"events": seq}
    catalogue = None
    if attributes is not None:
        checked["items"] = load_attributes(attributes, roles, policy=policy)
        catalogue = checked["items"].rows.drop("line")
    if events.height and catalogue is not None:
        events, catalogue = same_id_type(events, catalogue, column="item_id")
    items, n_derived = with_derived_items(catalogue, events["item_id"])
    loaded = assemble(checked, fmt="sequences", tables={"events": events, "items": items,
                                                         "users": complete_users(None, events["user_id"])})
    if attributes is not None:
        loaded.counts["items.derived_rows"] = n_derived
    return loaded
