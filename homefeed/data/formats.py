"""The two public Alibaba log formats, as contract tables.

**Taobao UserBehavior** (Tianchi 649): one CSV file, no header,
`user_id,item_id,category_id,behavior_type,timestamp` with behaviours pv/fav/cart/buy. It becomes
events and items (leaf_category = category_id; brand = shop = UNKNOWN_RAW and price null, since the
format records none); a row giving its item another category than the item's first row did is
quarantined ("conflicting item attributes").

**Display-ad CTR set** ("Ad Display/Click Data on Taobao.com", Tianchi 56): a folder of three CSV
files with headers (the real user_profile.csv header ends in a space, which is tolerated):

    raw_sample.csv   user,time_stamp,adgroup_id,pid,nonclk,clk           one row per ad shown
    ad_feature.csv   adgroup_id,cate_id,campaign_id,customer,brand,price  one row per ad
    user_profile.csv userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,
                     shopping_level,occupation,new_user_class_level        one row per user (optional file)

They become exposures (one request per (user, time_stamp, pid): request_id numbers those groups in
time order; item_id = adgroup_id; channel = pid, the resource slot; clicked = clk; the set records no
slot order, so position = 0 and page = 0), events (each click, as behaviour "click"), items
(leaf_category = cate_id, shop = customer, brand "NULL" -> UNKNOWN_RAW, price) and users (gender from
final_gender_code 1 = M, 2 = F; age = age_level; purchase_power = pvalue_level; city null), plus a row
of null attributes for each user shown ads but absent from user_profile.csv.

    >>> data = load_taobao("UserBehavior.csv")    # doctest: +SKIP
    >>> data = load_alimama("data/alimama")       # doctest: +SKIP
    >>> data.exposures.columns                    # doctest: +SKIP
    ['request_id', 'user_id', 'item_id', 'ts', 'position', 'page', 'channel', 'clicked']
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from homefeed.config import Ingest
from homefeed.data.loaded import (UNKNOWN_RAW, Loaded, assemble, check_columns, complete_users, policy_of,
                                  reject_conflicts, reject_unknown_items)
from homefeed.data.quarantine import Policy, conflicts
from homefeed.data.rawfile import open_text
from homefeed.data.schema import BEHAVIOR
from homefeed.data.validate import Check, Field, triage

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


def _categories(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(item_id, leaf_category) of each item's first row, sorted by item_id, and the item_ids (one
    column) whose rows do not all agree. A stable sort by item then adjacent rows: cheaper than a
    group_by over millions of items."""
    s = rows.select("item_id", "leaf_category").sort("item_id", maintain_order=True)
    s = s.with_columns(_new=(pl.col("item_id") != pl.col("item_id").shift()).fill_null(True))
    changed = ~pl.col("_new") & (pl.col("leaf_category") != pl.col("leaf_category").shift())
    return s.filter("_new").drop("_new"), s.filter(changed).select("item_id").unique()


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
    items, suspects = _categories(c.rows)
    if suspects.height:
        bad = conflicts(c.rows.join(suspects, on="item_id", how="semi"), ["item_id"], ["leaf_category"], what="item",
                        columns={"leaf_category": "category_id"}, duplicates=False)
        c.reject(bad, policy=policy, raw=src.raw_lines)
    items = items.with_columns(brand=pl.lit(UNKNOWN_RAW, pl.Int64), shop=pl.lit(UNKNOWN_RAW, pl.Int64),
                               price=pl.lit(None, pl.Float64))
    events = c.rows.select("user_id", "item_id", "behavior", "ts")
    users = events.select(pl.col("user_id").unique().sort())
    return assemble({"events": c}, fmt="taobao", tables={"events": events, "items": items, "users": users})



# --------------------------------------------------------------------------------------------- alimama

RAW_SAMPLE = ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk")
AD_FEATURE = ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price")
USER_PROFILE = ("userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                "shopping_level", "occupation", "new_user_class_level")

SAMPLE_FIELDS = [
    Field("user_id", "user", "id"),
    Field("ts", "time_stamp", "ts"),
    Field("item_id", "adgroup_id", "id"),
    Field("channel", "pid", "text"),
    Field("nonclk", "nonclk", "flag"),
    Field("clicked", "clk", "flag"),
]
CLICK_AGREES = Check(
    pl.col("clk").cast(pl.Int64, strict=False) + pl.col("nonclk").cast(pl.Int64, strict=False) != 1,
    "clk and nonclk disagree", "clk",
)
ITEM_FIELDS = [
    Field("item_id", "adgroup_id", "id"),
    Field("leaf_category", "cate_id", "id"),
    Field("brand", "brand", "id", required=False, fill=UNKNOWN_RAW, null_tokens=("NULL",)),
    Field("shop", "customer", "id"),
    Field("price", "price", "float"),
]
USER_FIELDS = [
    Field("user_id", "userid", "id"),
    Field("gender", "final_gender_code", "code", required=False, codes={"1": "M", "2": "F"}),
    Field("age", "age_level", "int", required=False, dtype=pl.Int32, min=0),
    Field("city", None, "text"),
    Field("purchase_power", "pvalue_level", "int", required=False, dtype=pl.Int32, min=0),
]
EXPOSURE_COLUMNS = ["request_id", "user_id", "item_id", "ts", "position", "page", "channel", "clicked"]


def with_requests(shows: pl.DataFrame) -> pl.DataFrame:
    """Number the (ts, user_id, channel) groups 1, 2, ... in time order: the request ids.

    shows: rows with line, user_id, ts, channel, ...; returned sorted by (ts, user_id, channel, line)
    with request_id (Int64), position = page = 0 (Int32) added.
    """
    shows = shows.sort(["ts", "user_id", "channel", "line"])
    key = ["ts", "user_id", "channel"]
    new = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift()) for k in key])
    return shows.with_columns(request_id=new.cum_sum().cast(pl.Int64), position=pl.lit(0, pl.Int32),
                              page=pl.lit(0, pl.Int32))


def load_alimama(folder: str | Path, *, policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """The display-ad CTR folder -> exposures, click events, items, users (see the module docstring).

    Rows of raw_sample.csv whose ad is missing from ad_feature.csv are quarantined ("unknown item");
    a repeat of the same ad in the same request, "duplicate row" or "conflicting exposure attributes".
    """
    folder, policy = Path(folder), policy_of(policy, ingest)
    checked = {}
    ads = open_text(folder / "ad_feature.csv")
    check_columns(ads, AD_FEATURE, exact=True)
    items = checked["items"] = triage(ads, ITEM_FIELDS, table="items", ingest=ingest, policy=policy)
    reject_conflicts(items, ads, ["item_id"], what="item", policy=policy, fields=ITEM_FIELDS)
    users = None
    if (folder / "user_profile.csv").is_file():
        profiles = open_text(folder / "user_profile.csv")
        check_columns(profiles, USER_PROFILE, exact=True)
        users = checked["users"] = triage(profiles, USER_FIELDS, table="users", ingest=ingest, policy=policy)
        reject_conflicts(users, profiles, ["user_id"], what="user", policy=policy, fields=USER_FIELDS)
    sample = open_text(folder / "raw_sample.csv")
    check_columns(sample, RAW_SAMPLE, exact=True)
    shows = checked["exposures"] = triage(sample, SAMPLE_FIELDS, table="exposures", ingest=ingest, policy=policy,
                                          extra=(CLICK_AGREES,))
    reject_unknown_items(shows, sample, items, policy=policy, source_column="adgroup_id")
    shows.rows = with_requests(shows.rows.drop("nonclk"))
    reject_conflicts(shows, sample, ["request_id", "item_id"], what="exposure", policy=policy, fields=SAMPLE_FIELDS,
                     attrs=["clicked"])  # user, ts and channel are the request's own
    exposures = shows.rows.select(EXPOSURE_COLUMNS)
    events = exposures.filter(pl.col("clicked") == 1).select(
        "user_id", "item_id", pl.lit("click", BEHAVIOR).alias("behavior"), "ts")
    listed = None if users is None else users.rows.drop("line")
    tables = {"events": events, "exposures": exposures, "items": items.rows.drop("line"),
              "users": complete_users(listed, exposures["user_id"])}
    loaded = assemble(checked, fmt="alimama", tables=tables)
    if listed is not None:  # users shown ads but absent from user_profile.csv
        loaded.counts["users.derived_rows"] = tables["users"].height - listed.height
    return loaded
