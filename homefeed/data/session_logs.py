"""Session logs: item views grouped by a session id, often anonymous (DIGINETICA, CIKM Cup 2016).

    sessionId;userId;itemId;timeframe;eventdate          (train-item-views.csv)
    1;NA;81766;526309;2016-05-09
    1;NA;31331;1031018;2016-05-09

Columns are found by name, ignoring case and underscores (so SR-GNN's `session_id;user_id;...` copy
reads the same); a `mapping` ({key: column}) overrides. Keys:

* session_id, item_id (required); user_id (optional; empty or `null_user`, default "NA", is anonymous);
* the time: `date` (default column eventdate, format `date_format`, "%Y-%m-%d", local midnight in
  ingest.tz_offset_hours) plus `time_offset_ms` (default column timeframe: milliseconds since the
  session started); or `ts` (unix seconds, or a local date-time in `date_format`), plus the offset if given;
* behavior: what every row is (default "pv": these are item-page views), null_user, date_format.

Anonymous sessions become users: a session takes the user id found on any of its rows, else the
user `session:<id>`. Rows come back in (user, time) order, ties in the log's millisecond order, so
ingest's sessions (cut at ingest.session_gap_s) follow the log's.

    >>> data = load_session_log("train-item-views.csv")     # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import polars as pl

from homefeed.config import Ingest
from homefeed.data.loaded import Loaded, assemble, check_columns, complete_users, policy_of
from homefeed.data.quarantine import DataError, Policy, auto_int
from homefeed.data.rawfile import open_text
from homefeed.data.schema import BEHAVIOR, BEHAVIORS
from homefeed.data.sequences import with_derived_items
from homefeed.data.validate import Field, triage

DEFAULT_COLUMNS = {"session_id": "sessionid", "user_id": "userid", "item_id": "itemid", "time_offset_ms": "timeframe",
                   "date": "eventdate"}
OPTIONS = {"behavior": "pv", "null_user": "NA", "date_format": "%Y-%m-%d"}
ANONYMOUS = "session:"  # user id prefix of an anonymous session


def _plain(name: str) -> str:
    return name.strip().lower().replace("_", "")


def session_columns(header: tuple[str, ...], mapping: Mapping[str, Any]) -> dict[str, str]:
    """Contract key -> file column, from `mapping` or the DIGINETICA names; keys absent from both are left out."""
    unknown = sorted(set(mapping) - set(DEFAULT_COLUMNS) - {"ts"} - set(OPTIONS))
    if unknown:
        raise ValueError(f"session-log mapping has unknown key(s) {unknown}; valid: "
                         f"{', '.join([*DEFAULT_COLUMNS, 'ts', *OPTIONS])}")
    plain = {_plain(c): c for c in header}
    out = {k: mapping[k] for k in (*DEFAULT_COLUMNS, "ts") if mapping.get(k)}
    for key, default in DEFAULT_COLUMNS.items():
        if key not in mapping and default in plain and not (key == "date" and "ts" in out):
            out[key] = plain[default]
    return out


def load_session_log(path: str | Path, mapping: Mapping[str, Any] | None = None, *, behavior: str | None = None,
                     policy: Policy | None = None, ingest: Ingest = Ingest()) -> Loaded:
    """A session log (CSV/TSV with a header, separator sniffed) -> events, items (attributes unknown), users."""
    policy, mapping = policy_of(policy, ingest), dict(mapping or {})
    opts = {**OPTIONS, **{k: mapping[k] for k in OPTIONS if k in mapping}}
    behavior = behavior or opts["behavior"]
    if behavior not in BEHAVIORS:
        raise ValueError(f"behavior {behavior!r} is not one of {', '.join(BEHAVIORS)}")
    src = open_text(path, sep=None)
    cols = session_columns(src.columns, mapping)
    missing = [k for k in ("session_id", "item_id") if k not in cols] + ([] if {"ts", "date"} & set(cols) else ["date"])
    if missing:
        raise DataError(src.name, 1, None, f"no column for {', '.join(missing)} (looked for "
                        f"{', '.join(DEFAULT_COLUMNS.get(k, k) for k in missing)}); the file has {', '.join(src.columns)}; "
                        'name them in a mapping, e.g. {"session_id": "sid", "item_id": "sku", "ts": "time"}')
    check_columns(src, list(cols.values()), exact=False)  # mapped columns must exist
    time = cols.get("ts") or cols["date"]
    fields = [Field("session", cols["session_id"], "key"),
              Field("user", cols.get("user_id"), "key", required=False, null_tokens=(opts["null_user"],)),
              Field("item_id", cols["item_id"], "key"),
              Field("offset_ms", cols.get("time_offset_ms"), "int", required=bool(cols.get("time_offset_ms")),
                    fill=0, min=0),
              Field("start", time, "ts", format=None if "ts" in cols and "date_format" not in mapping
                    else opts["date_format"])]
    c = triage(src, fields, table="events", ingest=ingest, policy=policy)
    session_user = pl.col("user").drop_nulls().first().over("session")
    user = pl.coalesce(session_user, pl.lit(ANONYMOUS) + pl.col("session").cast(pl.String))
    ev = (c.rows.with_columns(user_id=user, ts=pl.col("start") + pl.col("offset_ms") // 1000,
                              behavior=pl.lit(behavior, BEHAVIOR))
          .sort("user_id", "start", "offset_ms", "line"))
    events = auto_int(ev.select("user_id", "item_id", "behavior", "ts"), ["user_id", "item_id"])
    items, _ = with_derived_items(None, events["item_id"])
    return assemble({"events": c}, fmt="sessions",
                    tables={"events": events, "items": items, "users": complete_users(None, events["user_id"])})
