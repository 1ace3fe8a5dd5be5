"""Sessions, the local-day time split and point-in-time history, on hand-made logs."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from homefeed.data.history import history_before, last_events
from homefeed.data.schema import BEHAVIOR
from homefeed.data.sessions import add_sessions, session_lengths
from homefeed.data.split import ORDINAL_END, leave_one_out, ordinal_ts, time_split

DAY, H = 86_400, 3_600


# --- sessions --------------------------------------------------------------------------------

def test_sessions_split_on_gaps_longer_than_gap_s_and_on_user_change():
    events = pl.DataFrame({
        "user_id": ["u7", "u3", "u7", "u7", "u3", "u7", "u7", "u3"],
        "ts": [4000, 50, 0, 60, 1850, 4100, 100, 3651],
        "item_id": [1, 2, 3, 4, 5, 6, 7, 8],
    })
    out = add_sessions(events, gap_s=1800)
    # u3: 50, 1850 (gap exactly 1800: same session), 3651 (gap 1801: new); u7: 0, 60, 100 | 4000, 4100
    assert out.select("user_id", "ts", "session_id").rows() == [
        ("u3", 50, 0), ("u3", 1850, 0), ("u3", 3651, 1),
        ("u7", 0, 2), ("u7", 60, 2), ("u7", 100, 2), ("u7", 4000, 3), ("u7", 4100, 3)]
    assert out.schema["session_id"] == pl.Int64
    assert add_sessions(events.reverse(), gap_s=1800)["session_id"].to_list() == out["session_id"].to_list()
    assert add_sessions(out, gap_s=50)["session_id"].to_list() == [0, 1, 2, 3, 4, 4, 5, 6]  # replaced, not duplicated


def test_session_lengths():
    out = session_lengths(add_sessions(pl.DataFrame({"user_id": [1, 1, 1, 2], "ts": [0, 100, 5000, 7]}), gap_s=1800))
    assert out.rows() == [(0, 1, 2, 0, 100, 100), (1, 1, 1, 5000, 5000, 0), (2, 2, 1, 7, 7, 0)]
    assert out.columns == ["session_id", "user_id", "n_events", "start_ts", "end_ts", "duration_s"]
    with pytest.raises(ValueError, match="run homefeed.data.sessions.add_sessions"):
        session_lengths(pl.DataFrame({"user_id": [1], "ts": [0]}))


# --- time split ------------------------------------------------------------------------------

def local(day: int, hour: float, tz: float = 8.0) -> int:
    """Unix seconds of local `day` (days since 1970-01-01) at `hour`, UTC+tz."""
    return int(day * DAY + hour * H - tz * H)


def test_time_split_boundaries_are_local_midnights():
    ts = [local(10, 23), local(11, 12), local(12, 23.999), local(13, 0), local(13, 23.99), local(14, 0), local(14, 0.5)]
    events = pl.DataFrame({"ts": ts})
    split = time_split(events, valid_days=1, test_days=1, tz_offset_hours=8)
    assert (split.train_end, split.valid_end) == (local(13, 0), local(14, 0))
    parts = events.select(split.expr())["literal"].to_list()
    assert parts == ["train", "train", "train", "valid", "valid", "test", "test"]
    two = time_split(events, valid_days=2, test_days=2, tz_offset_hours=8)
    assert (two.train_end, two.valid_end) == (local(11, 0), local(13, 0))
    assert time_split(events, valid_days=0, test_days=1, tz_offset_hours=8).train_end == local(14, 0)


def test_time_split_days_follow_the_time_zone():
    # UTC 1970-01-15 20:00 is local 01-16 04:00 at +8: at +8 the log spans 3 days, at UTC only 2
    events = pl.DataFrame({"ts": [14 * DAY + 12 * H, 15 * DAY + 20 * H]})
    assert time_split(events, valid_days=1, test_days=1, tz_offset_hours=8).valid_end == local(16, 0)
    with pytest.raises(ValueError, match="UTC"):
        time_split(events, valid_days=1, test_days=1, tz_offset_hours=0)


def test_time_split_too_few_days_says_how_many():
    events = pl.DataFrame({"ts": [local(10, 1), local(11, 22)]})
    with pytest.raises(ValueError) as e:
        time_split(events, valid_days=1, test_days=1, tz_offset_hours=8)
    assert "events span 2 local day(s) (1970-01-11 .. 1970-01-12, UTC+8 h) but the split needs at least 3" in str(e.value)
    with pytest.raises(ValueError, match="empty"):
        time_split(events.clear(), valid_days=1, test_days=1, tz_offset_hours=8)
    with pytest.raises(ValueError, match=">= 0"):
        time_split(events, valid_days=-1, test_days=1, tz_offset_hours=8)


def test_a_straggler_after_midnight_does_not_become_the_test_day():
    day = 86_400
    events = pl.DataFrame({"ts": [d * day + 3600 * h for d in range(10, 14) for h in range(20)] + [14 * day + 60]})
    split = time_split(events, valid_days=1, test_days=1, tz_offset_hours=0)
    assert split.valid_end == 13 * day and split.train_end == 12 * day  # day 13 is test; the straggler joins it
    assert split.filter(events, "test").height == 21


def test_time_split_by_hour_for_short_logs():
    events = pl.DataFrame({"ts": [1_000_000 + 600 * i for i in range(19)]})  # three hours of events
    split = time_split(events, valid_days=1, test_days=1, tz_offset_hours=0, unit="hour")
    assert split.valid_end % 3600 == 0 and split.valid_end - split.train_end == 3600
    assert split.valid_end <= events["ts"].max() and split.train_end > events["ts"].min()
    with pytest.raises(ValueError, match="valid units: day, hour"):
        time_split(events, unit="week")


# --- ordinal clock and leave-one-out ---------------------------------------------------------

def test_ordinal_clock_ends_every_user_together_in_row_order():
    df = pl.DataFrame({"user_id": [1, 2, 1, 1, 2], "item_id": [10, 20, 11, 12, 21]}).with_columns(ordinal_ts(step_s=60))
    assert df["ts"].to_list() == [ORDINAL_END - 120, ORDINAL_END - 60, ORDINAL_END - 60, ORDINAL_END, ORDINAL_END]
    with pytest.raises(ValueError, match="step_s"):
        ordinal_ts(step_s=0)


def test_leave_one_out_breaks_time_ties_by_input_order_and_needs_a_long_enough_user():
    events = pl.DataFrame({"user_id": [1, 1, 1, 1, 2], "item_id": [10, 11, 12, 13, 20], "ts": [5, 9, 9, 1, 3]})
    out, split, info = leave_one_out(events, step_s=60, ordinal=False)
    parts = out.with_columns(split.expr().alias("part")).select("item_id", "part").rows()
    assert parts == [(13, "train"), (10, "train"), (11, "valid"), (12, "test"), (20, "train")]
    assert (split.train_end, split.valid_end) == (5 + 60, 5 + 120) and info["users_train_only"] == 1  # after the last train event
    with pytest.raises(ValueError, match="at least 3 events"):
        leave_one_out(events.filter(pl.col("user_id") == 2), step_s=60, ordinal=False)


# --- point-in-time history -------------------------------------------------------------------

def events_frame(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"user_id": pl.Int32, "item_id": pl.Int32, "behavior": BEHAVIOR, "ts": pl.Int64},
                        orient="row")


EVENTS = events_frame([
    (1, 10, "pv", 5), (1, 11, "buy", 9), (1, 12, "click", 9), (1, 13, "fav", 20),
    (2, 20, "cart", 3), (1, 14, "pv", 1),
])


def test_history_excludes_the_query_time_itself():
    queries = pl.DataFrame({"user_id": pl.Series([1, 1, 1], dtype=pl.Int32), "ts": [9, 10, 1], "req": ["a", "b", "c"]})
    out = history_before(EVENTS, queries, max_len=10)
    assert out["hist_item_id"].to_list() == [[14, 10], [14, 10, 11, 12], []]   # events at ts 9 wait for ts 10
    assert out["hist_ts"].to_list() == [[1, 5], [1, 5, 9, 9], []]
    assert out["hist_behavior"].to_list()[1] == ["pv", "pv", "buy", "click"]
    assert out["req"].to_list() == ["a", "b", "c"] and out["hist_len"].to_list() == [2, 4, 0]


def test_history_max_len_keeps_the_most_recent_and_filters_behaviours():
    queries = pl.DataFrame({"user_id": pl.Series([2, 1, 3], dtype=pl.Int32), "ts": [4, 100, 100]})
    out = history_before(EVENTS, queries, max_len=2)
    assert out["hist_item_id"].to_list() == [[20], [12, 13], []]               # user 3 is unknown: empty
    buys = history_before(EVENTS, queries, max_len=2, behaviors=["buy", "cart"])
    assert buys["hist_item_id"].to_list() == [[20], [11], []]
    assert history_before(EVENTS, queries, max_len=0)["hist_len"].to_list() == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown behaviour"):
        history_before(EVENTS, queries, max_len=2, behaviors=["view"])


def test_history_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    n = 400
    events = events_frame(zip(rng.integers(0, 20, n).tolist(), rng.integers(0, 50, n).tolist(),
                              rng.choice(["pv", "click", "buy"], n).tolist(), rng.integers(0, 100, n).tolist()))
    queries = pl.DataFrame({"user_id": pl.Series(rng.integers(0, 22, 200), dtype=pl.Int32), "ts": rng.integers(-5, 110, 200)})
    out = history_before(events, queries, max_len=3)
    ordered = events.sort("user_id", "ts", maintain_order=True)
    for (u, t), got in zip(queries.iter_rows(), out["hist_item_id"].to_list()):
        before = ordered.filter((pl.col("user_id") == u) & (pl.col("ts") < t))
        assert got == before["item_id"].to_list()[-3:]


def test_last_events_before_a_cutoff():
    out = last_events(EVENTS, 9, n=2)
    assert out.select("user_id", "item_id", "recency").rows() == [(1, 14, 2), (1, 10, 1), (2, 20, 1)]
    assert last_events(EVENTS, 100, n=1, behaviors=["buy", "click"]).select("user_id", "item_id").rows() == [(1, 12)]
    assert last_events(EVENTS, 1, n=5).height == 0


def test_packed_sort_equals_the_multi_column_sort():
    from homefeed.data.sorting import sort_by

    rng = np.random.default_rng(1)
    n = 20_000
    df = pl.DataFrame({"ts": rng.integers(-50, 50, n), "user": rng.integers(0, 30, n).astype(np.int32),
                       "b": rng.integers(0, 3, n).astype(np.int8), "row": np.arange(n)})  # row: ties keep input order
    for keys in (("ts", "user", "b"), ("b", "ts"), ("user",)):
        assert sort_by(df, *keys).equals(df.sort(*keys, maintain_order=True))
    wide = df.with_columns(pl.col("ts") * (1 << 40), pl.col("user").cast(pl.Int64) * (1 << 30))  # > 63 bits: fallback
    assert sort_by(wide, "ts", "user", "b").equals(wide.sort("ts", "user", "b", maintain_order=True))
    nulls = df.with_columns(pl.when(pl.col("row") % 7 == 0).then(None).otherwise(pl.col("ts")).alias("ts"))
    assert sort_by(nulls, "user", "ts").equals(nulls.sort("user", "ts", maintain_order=True))
    text = df.with_columns(pl.col("user").cast(pl.String))
    assert sort_by(text, "user", "ts").equals(text.sort("user", "ts", maintain_order=True))
    assert sort_by(df.clear(), "ts", "user").height == 0
    with pytest.raises(ValueError, match="missing column"):
        sort_by(df, "nope")


def test_sessions_equal_the_multi_column_sort_version():
    # add_sessions sorts on one packed (user, ts) key; the sessions must be those of the plain sort
    rng = np.random.default_rng(2)
    n = 30_000
    ev = pl.DataFrame({"user_id": rng.integers(1, 400, n).astype(np.int32), "ts": rng.integers(0, 200_000, n),
                       "row": np.arange(n)})
    user, ts = pl.col("user_id"), pl.col("ts")
    starts = ((user != user.shift()) | ((ts - ts.shift()) > 1800)).fill_null(True)
    expected = ev.sort("user_id", "ts", maintain_order=True).with_columns(
        session_id=starts.cast(pl.Int64).cum_sum() - 1)
    assert add_sessions(ev, gap_s=1800).equals(expected)
    assert expected["session_id"].n_unique() > 1000
