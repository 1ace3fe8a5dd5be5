"""The real-log formats (sequences, RecBole, session logs) and leave-one-out, on small hand-written files,
then every shared real log through the CLI (skipped when ../shared/data is absent)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from homefeed.cli import app
from homefeed.config import Config, load_config
from homefeed.data.dataset import Dataset
from homefeed.data.ingest import IngestError, emptied_message, ingest
from homefeed.data.loaders import UNKNOWN_RAW, DataError, detect_format
from homefeed.data.recbole import load_recbole
from homefeed.data.schema import BEHAVIOR
from homefeed.data.sequences import load_sequences
from homefeed.data.session_logs import load_session_log
from homefeed.data.split import ORDINAL_END
from test_loaders import assert_accounted, write

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def assert_report_accounted(report: dict) -> None:
    for name, t in report["tables"].items():
        assert t["input_rows"] + t["derived_rows"] == (t["kept_rows"] + t["quarantined_rows"]
                                                       + sum(t["removed_by_cleaning"].values())), name


def sequences_of(events: pl.DataFrame) -> dict:
    return {u: items for u, items in events.sort("user_id", "ts", maintain_order=True)
            .group_by("user_id", maintain_order=True).agg("item_id").iter_rows()}


# ---------------------------------------------------------------------------------------------- sequences

S3REC = "1 10 11 12 13\n2 11 12 14\n3 10 14\n"
SASREC = "1 10\n1 11\n1 12\n1 13\n2 11\n2 12\n2 14\n3 10\n3 14\n"


def test_both_sequence_layouts_read_the_same_with_an_ordinal_clock(tmp_path):
    a = load_sequences(write(tmp_path / "a.txt", S3REC))
    b = load_sequences(write(tmp_path / "b.txt", SASREC))
    assert sequences_of(a.events) == sequences_of(b.events) == {1: [10, 11, 12, 13], 2: [11, 12, 14], 3: [10, 14]}
    assert a.events.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64, "behavior": BEHAVIOR, "ts": pl.Int64})
    assert set(a.events["behavior"].to_list()) == {"click"}
    last = a.events.group_by("user_id").agg(pl.col("ts").max(), pl.col("ts").diff().drop_nulls().unique().alias("steps"))
    assert set(last["ts"].to_list()) == {ORDINAL_END}  # every user ends at the same instant ...
    assert all(s == [60] for s in last["steps"].to_list())  # ... with events one ordinal step apart
    assert a.counts["events.input_rows"] == 9 and a.quarantine.height == 0
    assert detect_format(tmp_path / "a.txt") == detect_format(tmp_path / "b.txt") == "sequences"


def test_bad_sequence_lines_are_quarantined_with_line_and_column(tmp_path):
    path = write(tmp_path / "s.txt", b"1 10 11\n\n2\n3 10 \xff\xfe 12\n1 12\n")
    data = load_sequences(path)
    q = data.quarantine.select("line", "column", "reason").rows()
    assert q == [(2, None, "blank line"), (3, None, "no items"), (4, "item 2", "bad encoding")]
    assert data.quarantine["file"].unique().to_list() == [str(path)]
    assert sequences_of(data.events) == {1: [10, 11, 12], 3: [10, 12]}  # the rest of line 4 is kept, in order
    assert data.counts["events.input_rows"] == 8  # 6 items + 2 lines without one
    assert_accounted(data)
    with pytest.raises(DataError) as e:
        load_sequences(path, policy="strict")
    assert (e.value.line, e.value.column) == (2, None) and "blank line" in str(e.value)


def test_non_integer_id_in_an_integer_file_is_rejected(tmp_path):
    body = "".join(f"{u} {u % 97 + 1} {u % 89 + 1}\n" for u in range(1, 8000))  # > 64 KiB of integer ids
    path = write(tmp_path / "s.txt", body + "9000 5 B00X 6\n")
    data = load_sequences(path)
    assert data.quarantine.select("line", "column", "reason").rows() == [(8000, "item 2", "not an integer")]
    assert sequences_of(data.events.filter(pl.col("user_id") == 9000)) == {9000: [5, 6]}
    with pytest.raises(DataError, match="'B00X' is not an integer") as e:
        load_sequences(path, policy="strict")
    assert (e.value.line, e.value.column) == (8000, "item 2")


ATTRS = {"10": [7, 1, 2], "11": [8, 1, 2, 3], "12": [7, 1, 3], "13": [9, 1], "20": "not a list"}


def test_attributes_give_the_most_specific_leaf_and_unknown_for_missing_items(tmp_path):
    seqs = write(tmp_path / "s.txt", S3REC)
    attrs = write(tmp_path / "a.json", json.dumps(ATTRS))
    data = load_sequences(seqs, attributes=attrs)
    items = {r["item_id"]: r for r in data.items.iter_rows(named=True)}
    # item counts: 1 -> 4 items, 2 -> 2, 3 -> 2, 7 -> 2, 8 -> 1, 9 -> 1: fewest wins, ties go to the later attribute
    assert [items[i]["leaf_category"] for i in (10, 11, 12, 13)] == [2, 8, 3, 9]
    assert items[14]["leaf_category"] == UNKNOWN_RAW and items[14]["brand"] == UNKNOWN_RAW  # not in the file
    assert data.counts["items.derived_rows"] == 1 and data.counts["items.quarantined_rows"] == 1
    assert data.quarantine.filter(pl.col("file") == str(attrs)).select("column", "reason").rows() == [
        ("item 20", "attributes not a list of ids")]
    assert_accounted(data)
    roles = load_sequences(seqs, attributes=attrs, attribute_roles={"brand": "first"})
    items = {r["item_id"]: r for r in roles.items.iter_rows(named=True)}
    assert [items[i]["brand"] for i in (10, 11, 12)] == [7, 8, 7]
    assert [items[i]["leaf_category"] for i in (10, 11, 12, 13)] == [2, 3, 3, 1]  # brands no longer compete
    with pytest.raises(ValueError, match="unknown key"):
        load_sequences(seqs, attributes=attrs, attribute_roles={"brnad": "first"})


# ----------------------------------------------------------------------------------------------- recbole

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "1\t10\t4\t881250949\n1\t11\t3\t881250950\n2\t10\t5\t881250960\n")
ITEM = "item_id:token\tmovie_title:token_seq\tclass:token_seq\n10\tToy Story\tAnimation Comedy\n11\tHeat\tAction\n"
USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n"


def recbole(tmp_path: Path, inter: str = INTER, item: str | None = ITEM, user: str | None = USER) -> Path:
    folder = tmp_path / "rb"
    write(folder / "ml.inter", inter)
    if item is not None:
        write(folder / "ml.item", item)
    if user is not None:
        write(folder / "ml.user", user)
    return folder


def test_recbole_folder_gives_events_items_and_users(tmp_path):
    folder = recbole(tmp_path)
    assert detect_format(folder) == detect_format(folder / "ml.inter") == "recbole"
    data = load_recbole(folder)
    assert data.events.rows() == [(1, 10, "click", 881250949), (1, 11, "click", 881250950), (2, 10, "click", 881250960)]
    items = data.items.select("item_id", "leaf_category", "title").rows()
    assert items == [(10, "Animation", "Toy Story"), (11, "Action", "Heat")]
    assert data.users.sort("user_id").rows() == [(1, "M", 24, "857"), (2, None, None, None)]
    assert data.counts["users.derived_rows"] == 1 and data.counts["items.derived_rows"] == 0
    assert_accounted(data)


def test_recbole_bad_rows_and_bad_header(tmp_path):
    folder = recbole(tmp_path, INTER + "3\t\t4\t881250970\n3\t12\t4\tyesterday\n", user=None)
    data = load_recbole(folder)
    assert data.quarantine.select("line", "column", "reason").rows() == [
        (5, "item_id:token", "missing value"), (6, "timestamp:float", "bad timestamp")]
    assert data.events.height == 3
    assert_accounted(data)
    with pytest.raises(DataError) as e:
        load_recbole(folder, policy="strict")
    assert (e.value.line, e.value.column) == (5, "item_id:token")
    write(folder / "ml.inter", "user_id\titem_id\n1\t10\n")
    with pytest.raises(DataError, match="field:type") as e:
        load_recbole(folder)
    assert e.value.line == 1


def test_recbole_without_timestamps_is_ordered_by_file_and_split_leave_one_out(tmp_path):
    inter = "user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u in (1, 2) for i in (10, 11, 12, 13))
    folder = recbole(tmp_path, inter, item=None, user=None)
    ds, report = ingest(folder, tmp_path / "ds", fmt="recbole")
    assert report["clock"] == "ordinal" and report["split"]["method"] == "leave_one_out"
    test = ds.vocabs["item"].decode(ds.events_in("test")["item_id"]).to_list()
    assert test == [13, 13]


# ---------------------------------------------------------------------------------------------- sessions

DIGI = ("sessionId;userId;itemId;timeframe;eventdate\n"
        "1;NA;81766;526309;2016-05-09\n"
        "1;NA;31331;1031018;2016-05-09\n"
        "1;NA;32118;243569;2016-05-09\n"
        "2;5;9;100;2016-05-10\n"
        "2;NA;8;2000;2016-05-10\n")


def test_session_log_users_times_and_order(tmp_path):
    path = write(tmp_path / "views.csv", DIGI)
    assert detect_format(path) == "sessions"
    data = load_session_log(path, ingest=Config().ingest.model_copy(update={"tz_offset_hours": 0}))
    midnight = 1462752000  # 2016-05-09 00:00 UTC
    assert data.events.rows() == [
        ("5", 9, "pv", midnight + 86400), ("5", 8, "pv", midnight + 86400 + 2),  # the session's user, both rows
        ("session:1", 32118, "pv", midnight + 243), ("session:1", 81766, "pv", midnight + 526),
        ("session:1", 31331, "pv", midnight + 1031)]  # sorted by timeframe, not file order
    sr_gnn = write(tmp_path / "sample.csv", DIGI.replace("sessionId;userId;itemId", "session_id;user_id;item_id"))
    assert load_session_log(sr_gnn).events["item_id"].to_list() == load_session_log(path).events["item_id"].to_list()


def test_session_log_bad_rows_missing_columns_and_mapping(tmp_path):
    path = write(tmp_path / "views.csv", DIGI + "3;NA;7;-5;2016-05-11\n3;NA;7;10;11/05/2016\n")
    data = load_session_log(path)
    assert data.quarantine.select("line", "column", "reason").rows() == [
        (7, "timeframe", "negative value"), (8, "eventdate", "bad timestamp")]
    assert_accounted(data)
    with pytest.raises(DataError) as e:
        load_session_log(path, policy="strict")
    assert (e.value.line, e.value.column) == (7, "timeframe")
    other = write(tmp_path / "other.csv", "sid,sku,time\na,1,1462752000\na,2,1462752060\n")
    with pytest.raises(DataError, match="no column for session_id, item_id"):
        load_session_log(other)
    data = load_session_log(other, {"session_id": "sid", "item_id": "sku", "ts": "time", "behavior": "click"})
    assert data.events.rows() == [("session:a", 1, "click", 1462752000), ("session:a", 2, "click", 1462752060)]


# ----------------------------------------------------------------------------------- ingest, leave-one-out

def test_leave_one_out_holds_out_each_users_last_two_items(tmp_path):
    seqs = write(tmp_path / "s.txt", "1 10 11 12 13\n2 11 12 14\n3 10 14\n4 15 10 11 12 13 14\n")
    ds, report = ingest(seqs, tmp_path / "ds")
    assert report["format"] == "sequences" and report["split"]["method"] == "leave_one_out"
    assert report["split"]["users_tested"] == 3 and report["split"]["users_train_only"] == 1
    assert_report_accounted(report)
    decode = lambda df: {(u, i) for u, i in zip(ds.vocabs["user"].decode(df["user_id"]).to_list(),
                                                 ds.vocabs["item"].decode(df["item_id"]).to_list())}
    assert decode(ds.events_in("test")) == {(1, 13), (2, 14), (4, 14)}
    assert decode(ds.events_in("valid")) == {(1, 12), (2, 12), (4, 13)}
    assert decode(ds.events_in("train")) == {(1, 10), (1, 11), (2, 11), (3, 10), (3, 14), (4, 15), (4, 10), (4, 11), (4, 12)}
    assert ds.events_in("train")["ts"].max() < ds.split.train_end <= ds.events_in("valid")["ts"].min()
    # no clock gap: each user's whole sequence is one session
    assert ds.events.group_by("user_id").agg(pl.col("session_id").n_unique())["session_id"].to_list() == [1] * 4
    assert Dataset.load(tmp_path / "ds").split == ds.split
    with pytest.raises(IngestError, match="--split leave_one_out"):
        ingest(seqs, tmp_path / "ds2", load_config(overrides=["ingest.split=time"]))


def test_leave_one_out_on_a_log_with_a_clock_moves_only_valid_and_test(tmp_path):
    inter = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{900_000_000 + 86400 * (10 * u + i)}\n" for u in (1, 2) for i in (3, 1, 2, 4))
    folder = recbole(tmp_path, inter, item=None, user=None)
    ds, report = ingest(folder, tmp_path / "ds", load_config(overrides=["ingest.split=leave_one_out"]))
    assert report["clock"] == "logged" and report["split"]["clock"] == "logged"
    decode = lambda df: ds.vocabs["item"].decode(df["item_id"]).to_list()
    assert decode(ds.events_in("test")) == [4, 4] and decode(ds.events_in("valid")) == [3, 3]  # by time, not file order
    train = ds.events_in("train").sort("user_id", "ts")
    assert train["ts"].to_list() == [900_000_000 + 86400 * d for d in (11, 12, 21, 22)]  # logged times kept
    assert ds.split.train_end > train["ts"].max()


def test_short_log_and_empty_log_say_what_to_set(tmp_path):
    short = write(tmp_path / "ub.csv", "1,10,100,pv,1511658000\n1,11,100,pv,1511658060\n")
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", "ingest", str(short), "--out", str(tmp_path / "ds")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "ingest.split_unit=hour" in message and "--split leave_one_out" in message
    bad = write(tmp_path / "bad.csv", "1,10,100,pv,abc\n")
    with pytest.raises(IngestError, match="no event row passed validation.*bad timestamp"):
        ingest(bad, tmp_path / "ds2", fmt="taobao")
    events = pl.DataFrame({"behavior": pl.Series(["buy"] * 4, dtype=BEHAVIOR)})
    assert "--behavior click" in emptied_message("r.txt", events, {"crawler": 0, "fake_order": 4})


# ------------------------------------------------------------------------------------ shared real logs

SHARED_LOGS = {  # name: (files, extra CLI arguments)
    "toys": (["Toys_and_Games.txt"], ["--attributes", str(SHARED / "Toys_and_Games_item2attributes.json")]),
    "video_games": (["amazon_video_games_sasrec.txt"], []),
    "ml-100k": (["ml-100k.inter"], []),
    "diginetica": (["diginetica_sample_train-item-views.csv"], []),
    "taobao_slice": (["taobao_userbehavior_slice.csv"], ["--set", "ingest.split_unit=hour"]),
    "taobao_tail": (["taobao_userbehavior_tail.csv"], []),
}


@pytest.mark.parametrize("name", list(SHARED_LOGS))
def test_shared_real_log_ingests_through_the_cli(name, tmp_path):
    files, extra = SHARED_LOGS[name]
    if not all((SHARED / f).exists() for f in files):
        pytest.skip(f"shared real data not present in {SHARED}")
    done = CliRunner().invoke(app, ["ingest", str(SHARED / files[0]), "--out", str(tmp_path / "ds"), "--json", *extra])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert_report_accounted(report)
    events = report["tables"]["events"]
    removed = sum(events["removed_by_cleaning"].values())
    assert removed < 0.01 * events["input_rows"], events
    assert events["quarantined_rows"] == 0
    assert min(report["split"][part] for part in ("train", "valid", "test")) > 0
