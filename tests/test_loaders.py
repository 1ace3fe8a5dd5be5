"""Loaders and validation: each bad input gets its message (strict) and its accounting (quarantine)."""
import json
from pathlib import Path

import polars as pl
import pytest

from homefeed.config import Ingest
from homefeed.data.loaders import (UNKNOWN_RAW, DataError, Loaded, detect_format, load, load_alimama, load_generic,
                                   load_taobao, load_world)
from homefeed.data.schema import BEHAVIOR

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # ../shared/data beside the project
SLICE = SHARED / "taobao_userbehavior_slice.csv"
GOOD = "1,10,100,pv,1511658000\n2,11,101,buy,1511658001\n1,11,101,cart,1511658002\n"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def assert_accounted(data: Loaded) -> None:
    """Per input table: input = kept + quarantined, the reasons add up, and the quarantine frame agrees."""
    for table, n_in in data.input_rows.items():
        kept, quarantined = data.counts[f"{table}.kept_rows"], data.counts[f"{table}.quarantined_rows"]
        assert n_in == kept + quarantined
        assert sum(data.quarantine_counts()[table].values()) == quarantined
    assert data.quarantine.height == sum(data.counts[f"{t}.quarantined_rows"] for t in data.input_rows)
    assert data.quarantine.columns == ["file", "line", "column", "reason", "raw"]


# ---------------------------------------------------------------------------------------------- taobao

def test_taobao_good_file_gives_contract_tables(tmp_path):
    data = load_taobao(write(tmp_path / "ub.csv", GOOD))
    assert data.events.rows() == [(1, 10, "pv", 1511658000), (2, 11, "buy", 1511658001), (1, 11, "cart", 1511658002)]
    assert data.events.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64, "behavior": BEHAVIOR, "ts": pl.Int64})
    assert data.items.rows() == [(10, 100, UNKNOWN_RAW, UNKNOWN_RAW, None), (11, 101, UNKNOWN_RAW, UNKNOWN_RAW, None)]
    assert data.users["user_id"].to_list() == [1, 2]
    assert data.counts == {"events.input_rows": 3, "events.kept_rows": 3, "events.quarantined_rows": 0}
    assert data.exposures is None and data.quarantine.height == 0 and data.format == "taobao"


def test_taobao_header_crlf_and_detection(tmp_path):
    path = write(tmp_path / "ub.csv", ("user_id,item_id,category_id,behavior_type,timestamp\n" + GOOD).replace("\n", "\r\n"))
    data = load_taobao(path)
    assert data.events.height == 3 and data.events["ts"].to_list()[-1] == 1511658002
    assert detect_format(write(tmp_path / "x.csv", GOOD)) == "taobao"
    assert load(tmp_path / "x.csv").format == "taobao"


# (row appended after GOOD, i.e. on line 4, reason, column, words in the strict message)
BAD_ROWS = {
    "abc ts": ("3,12,102,pv,abc\n", "bad timestamp", "timestamp", "'abc' is not a unix timestamp"),
    "ms ts": ("3,12,102,pv,1511658002000\n", "timestamp out of range", "timestamp", "milliseconds"),
    "old ts": ("3,12,102,pv,5\n", "timestamp out of range", "timestamp", "outside [788918400, 4102444800)"),
    "behaviour": ("3,12,102,click,1511658002\n", "unknown behavior", "behavior_type", "'click' is not a valid behavior; valid values: pv, fav, cart, buy"),
    "not int": ("x3,12,102,pv,1511658002\n", "not an integer", "user_id", "'x3' is not an integer"),
    "empty id": ("3,,102,pv,1511658002\n", "missing value", "item_id", "empty value"),
    "extra field": ("3,12,102,pv,1511658002,9\n", "wrong field count", None, "6 fields, expected 5"),
    "short line": ("3,12,102,pv\n", "wrong field count", None, "4 fields, expected 5"),
    "semicolons": ("3;12;102;pv;1511658002\n", "wrong field count", None, "1 field, expected 5 (user_id,item_id,category_id,behavior_type,timestamp) (separated by ';'?)"),
    "blank": ("\n", "blank line", None, "blank line"),
    "conflict": ("3,10,999,pv,1511658002\n", "conflicting item attributes", "category_id", "item 10 has 999 here but 100 on line 1"),
    "truncated": ("3,12,10", "truncated last line", None, "last line has 3 of 5 fields and no final newline"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_taobao_bad_row_quarantined_or_raised(tmp_path, case):
    row, reason, column, message = BAD_ROWS[case]
    path = write(tmp_path / "ub.csv", GOOD + row)
    data = load_taobao(path)
    assert data.quarantine.rows() == [(str(path), 4, column, reason, row.rstrip("\n") or None)]
    assert data.counts == {"events.input_rows": 4, "events.kept_rows": 3, "events.quarantined_rows": 1,
                           f"events.quarantined.{reason}": 1}
    assert data.events.height == 3
    assert_accounted(data)
    with pytest.raises(DataError) as e:
        load_taobao(path, policy="strict")
    assert (e.value.file, e.value.line, e.value.column) == (str(path), 4, column)
    assert message in e.value.problem
    assert str(e.value).startswith(f"{path}:4: " + (f"column '{column}': " if column else ""))


def test_taobao_one_bad_encoding_line_is_quarantined(tmp_path):
    good = "".join(f"{i},10,100,pv,{1511658000 + i}\n" for i in range(200)).encode()
    path = write(tmp_path / "ub.csv", good + b"7,10,100,p\xffv,1511658000\n")
    data = load_taobao(path)
    assert data.quarantine.select("line", "reason").rows() == [(201, "bad encoding")]
    assert data.quarantine["raw"][0] == "7,10,100,p\ufffdv,1511658000"
    assert_accounted(data)
    with pytest.raises(DataError, match=r"ub.csv:201: invalid UTF-8 bytes on this line"):
        load_taobao(path, policy="strict")


FILE_PROBLEMS = {
    "empty": (b"", None, "empty file"),
    "whitespace": (b"\n\n", None, "empty file"),
    "semicolons": (GOOD.replace(",", ";").encode(), 1, "fields are separated by ';', not ','"),
    "tabs": (GOOD.replace(",", "\t").encode(), 1, "fields are separated by '\\t', not ','"),
    "six columns": (GOOD.replace("\n", ",x\n").encode(), 1, "lines have 6 fields, expected 5"),
    "gbk": ("1,10,100,pv,1511658000\n2,10,100,\u8d2d\u4e70,1511658000\n3,10,100,\u6536\u85cf,1511658000\n".encode("gbk"),
            2, "not UTF-8 text: 2 of 3 lines hold invalid bytes"),
    "utf16": (GOOD.encode("utf-16"), None, "NUL bytes"),
}


@pytest.mark.parametrize("case", sorted(FILE_PROBLEMS))
@pytest.mark.parametrize("policy", ["quarantine", "strict"])
def test_taobao_file_level_problems_raise_under_both_policies(tmp_path, case, policy):
    content, line, message = FILE_PROBLEMS[case]
    path = write(tmp_path / "ub.csv", content)
    with pytest.raises(DataError) as e:
        load_taobao(path, policy=policy)
    assert e.value.line == line and message in e.value.problem and e.value.file == str(path)


def test_taobao_missing_file_and_bad_policy(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_taobao(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="valid policies: quarantine, strict"):
        load_taobao(write(tmp_path / "ub.csv", GOOD), policy="lenient")


def test_taobao_ts_range_comes_from_ingest_settings(tmp_path):
    data = load_taobao(write(tmp_path / "ub.csv", GOOD), ingest=Ingest(ts_max=1511658001))
    assert data.events["ts"].to_list() == [1511658000]
    assert data.quarantine["line"].to_list() == [2, 3]
    assert_accounted(data)


@pytest.mark.skipif(not SLICE.exists(), reason="shared Taobao slice not present")
def test_real_taobao_slice_loads_without_problems():
    data = load_taobao(SLICE, policy="strict")
    assert data.events.height == 110_300 and data.quarantine.height == 0
    assert data.items.height == 84_793 and data.users.height == 66_454  # as documented in the data README
    assert data.events["behavior"].value_counts().sort("behavior").rows() == [("pv", 98_361), ("fav", 3_383), ("cart", 6_063), ("buy", 2_493)]
    assert (data.events["ts"].min(), data.events["ts"].max()) == (1511658000, 1511665811)


# --------------------------------------------------------------------------------------------- alimama

SAMPLE = "user,time_stamp,adgroup_id,pid,nonclk,clk\n"
ADS = "adgroup_id,cate_id,campaign_id,customer,brand,price\n1,6406,83237,1,95471,170.0\n2,1489,5,3,NULL,199.0\n"
PROFILE = ("userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,new_user_class_level \n"
           "581738,0,1,1,2,,3,0,\n234,0,5,2,5,3,3,0,3\n")


def alimama(tmp_path: Path, sample_rows: str, ads: str = ADS, profile: str | None = PROFILE) -> Path:
    folder = tmp_path / "alimama"
    write(folder / "raw_sample.csv", SAMPLE + sample_rows)
    write(folder / "ad_feature.csv", ads)
    if profile is not None:
        write(folder / "user_profile.csv", profile)
    return folder


def test_alimama_tables(tmp_path):
    folder = alimama(tmp_path, "581738,1494137644,1,430548_1007,1,0\n581738,1494137644,2,430548_1007,0,1\n"
                               "914836,1494000000,1,430539_1007,1,0\n")
    assert detect_format(folder) == "alimama"
    data = load_alimama(folder)
    assert data.exposures.rows() == [(1, 914836, 1, 1494000000, 0, 0, "430539_1007", 0),
                                     (2, 581738, 1, 1494137644, 0, 0, "430548_1007", 0),
                                     (2, 581738, 2, 1494137644, 0, 0, "430548_1007", 1)]
    assert data.events.rows() == [(581738, 2, "click", 1494137644)] and data.events.schema["behavior"] == BEHAVIOR
    assert data.items.rows() == [(1, 6406, 95471, 1, 170.0), (2, 1489, UNKNOWN_RAW, 3, 199.0)]
    assert data.users.rows() == [(581738, "M", 2, None, None), (234, "F", 5, None, 3), (914836, None, None, None, None)]
    assert data.input_rows == {"items": 2, "users": 2, "exposures": 3} and data.quarantine.height == 0


ALIMAMA_BAD = {
    "unknown ad": ("1,1494137644,9,p1,1,0\n", ADS, "raw_sample.csv", 3, "adgroup_id", "unknown item", "item 9 is not in the catalogue"),
    "clk disagrees": ("1,1494137644,1,p1,1,1\n", ADS, "raw_sample.csv", 3, "clk", "clk and nonclk disagree", "clk and nonclk disagree"),
    "repeat shown": ("1,1494137644,1,p1,1,0\n", ADS, "raw_sample.csv", 3, None, "duplicate row", "repeats exposure"),
    "nan price": ("", ADS + "3,1,1,1,1,nan\n", "ad_feature.csv", 4, "price", "NaN price", "price 'nan' is not a number (NaN)"),
    "negative price": ("", ADS + "3,1,1,1,1,-2.5\n", "ad_feature.csv", 4, "price", "negative price", "price '-2.5' is negative"),
    "item conflict": ("", ADS + "2,1489,5,4,NULL,199.0\n", "ad_feature.csv", 4, "customer", "conflicting item attributes", "item 2 has 4 here but 3 on line 3"),
}


@pytest.mark.parametrize("case", sorted(ALIMAMA_BAD))
def test_alimama_bad_rows(tmp_path, case):
    extra, ads, file, line, column, reason, message = ALIMAMA_BAD[case]
    folder = alimama(tmp_path, "1,1494137644,1,p1,1,0\n" + extra, ads=ads)
    data = load_alimama(folder)
    assert data.quarantine.select("file", "line", "column", "reason").rows() == [(str(folder / file), line, column, reason)]
    assert_accounted(data)
    assert data.exposures.height == 1
    with pytest.raises(DataError) as e:
        load_alimama(folder, policy="strict")
    assert (e.value.file, e.value.line, e.value.column) == (str(folder / file), line, column)
    assert message in e.value.problem


def test_alimama_missing_and_extra_columns_are_file_level(tmp_path):
    folder = alimama(tmp_path, "1,1494137644,1,p1,1,0\n", ads=ADS.replace("customer,", "").replace(",1,95471", ",95471").replace(",3,NULL", ",NULL"))
    with pytest.raises(DataError, match=r"ad_feature.csv:1: column 'customer': missing column\(s\) 'customer'; the file has: adgroup_id"):
        load_alimama(folder)
    folder = alimama(tmp_path, "1,1494137644,1,p1,1,0\n", ads=ADS.replace("price\n", "price,x\n").replace(".0\n", ".0,1\n"))
    with pytest.raises(DataError, match=r"unexpected column\(s\) 'x'"):
        load_alimama(folder, policy="quarantine")


def test_alimama_profile_empty_trailing_values_kept_but_short_lines_not(tmp_path):
    profile = PROFILE + "77,0,5,2\n"  # line 4: 4 of 9 fields; line 2 ends in empty values and is fine
    data = load_alimama(alimama(tmp_path, "581738,1494137644,1,p1,1,0\n", profile=profile))
    assert data.quarantine.select("line", "reason").rows() == [(4, "wrong field count")]
    assert data.users.filter(pl.col("user_id") == 581738).rows() == [(581738, "M", 2, None, None)]
    assert_accounted(data)


# --------------------------------------------------------------------------------------------- generic

def test_generic_mapping_behaviours_constants_and_string_ids(tmp_path):
    events = write(tmp_path / "log.tsv", "uid\tsku\taction\ttime\nu1\t007\tview\t1511658000\nu2\t8\tpurchase\t1511658001.0\n")
    items = write(tmp_path / "sku.csv", 'sku,cat,title\n007,5,"Toy, red"\n8,5,Ball\n')
    data = load_generic({"events": events, "items": items},
                        {"events": {"user_id": "uid", "item_id": "sku", "behavior": "action", "ts": "time"},
                         "items": {"item_id": "sku", "leaf_category": "cat"}},
                        behavior_map={"view": "pv", "purchase": "buy"})
    assert data.events.rows() == [("u1", "007", "pv", 1511658000), ("u2", "8", "buy", 1511658001)]
    # item ids stay strings ("007" is not a plain integer); leaf_category, brand and shop are integers
    assert data.items.rows() == [("007", 5, UNKNOWN_RAW, UNKNOWN_RAW, None, "Toy, red"), ("8", 5, UNKNOWN_RAW, UNKNOWN_RAW, None, "Ball")]
    assert data.users.rows() == [("u1",), ("u2",)]
    assert_accounted(data)
    data = load_generic({"events": events}, {"events": {"user_id": "uid", "item_id": "sku", "ts": "time", "behavior": "=click"}})
    assert data.events["behavior"].to_list() == ["click", "click"]
    assert data.items["item_id"].to_list() == ["007", "8"]  # derived from the events, attributes unknown


def test_generic_unknown_item_and_unknown_behaviour(tmp_path):
    events = write(tmp_path / "e.csv", "user_id,item_id,behavior,ts\n1,10,pv,1511658000\n1,99,pv,1511658001\n1,10,like,1511658002\n")
    items = write(tmp_path / "i.csv", "item_id,leaf_category,brand,shop,price\n10,1,2,3,9.5\n")
    data = load_generic({"events": events, "items": items})
    assert data.quarantine.select("line", "column", "reason").rows() == [(3, "item_id", "unknown item"), (4, "behavior", "unknown behavior")]
    assert data.events.rows() == [(1, 10, "pv", 1511658000)]
    assert_accounted(data)
    with pytest.raises(DataError, match=r"e.csv:4: column 'behavior': 'like' is not a valid behavior"):
        load_generic({"events": events, "items": items}, policy="strict")


def test_generic_mapping_errors_name_the_valid_choices(tmp_path):
    events = write(tmp_path / "e.csv", "uid,item_id,behavior,ts\n1,10,pv,1511658000\n")
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['userid'\]; valid: user_id, item_id, behavior, ts"):
        load_generic({"events": events}, {"events": {"userid": "uid"}})
    with pytest.raises(DataError, match=r"e.csv:1: column 'user_id': missing column\(s\) 'user_id'; the file has: uid, item_id"):
        load_generic({"events": events})
    with pytest.raises(ValueError, match="unknown table"):
        load_generic({"event": events})
    with pytest.raises(ValueError, match="not behaviours"):
        load_generic({"events": events}, {"events": {"user_id": "uid"}}, behavior_map={"view": "look"})


@pytest.mark.parametrize("policy", ["quarantine", "strict"])
def test_generic_header_only_and_unrecognised_files(tmp_path, policy):
    events = write(tmp_path / "e.csv", "user_id,item_id,behavior,ts\n")
    with pytest.raises(DataError, match=r"e.csv: no data rows after the header"):
        load_generic({"events": events}, policy=policy)
    assert detect_format(events) == "generic"
    with pytest.raises(DataError, match="format not recognised"):
        load(events, policy=policy)


def test_generic_datetime_strings_use_the_local_offset(tmp_path):
    events = write(tmp_path / "e.csv", "user_id,item_id,behavior,ts\n1,10,pv,2017-11-26 09:00:00\n1,10,pv,26/11/2017\n")
    data = load_generic({"events": events}, ts_format="%Y-%m-%d %H:%M:%S", ingest=Ingest(tz_offset_hours=8))
    assert data.events["ts"].to_list() == [1511658000]  # 09:00 China time = 01:00 UTC
    assert data.quarantine.select("line", "reason").rows() == [(3, "bad timestamp")]


def test_generic_parquet_rows_checked_with_row_numbers(tmp_path):
    path = tmp_path / "e.parquet"
    pl.DataFrame({"user_id": [1, 2, 3], "item_id": [5, 5, 5], "behavior": ["pv", "buy", "pv"],
                  "ts": ["1511658000", "abc", "1511658002"]}).write_parquet(path)
    data = load_generic({"events": path})
    assert data.quarantine.rows() == [(str(path), 2, "ts", "bad timestamp", "2,5,buy,abc")]
    assert data.events["ts"].to_list() == [1511658000, 1511658002]
    assert_accounted(data)


# ----------------------------------------------------------------------------------------------- world

def world(tmp_path: Path, events: dict) -> Path:
    folder = tmp_path / "world"
    folder.mkdir()
    (folder / "world.json").write_text(json.dumps({"seed": 7}))
    pl.DataFrame(events).write_parquet(folder / "events.parquet")
    pl.DataFrame({"item_id": [10, 11], "leaf_category": [1, 2], "brand": [3, 3], "shop": [4, 5], "price": [9.9, 5.0],
                  "pools": [["new"], []], "true_quality": [0.3, 0.9]}).write_parquet(folder / "items.parquet")
    pl.DataFrame({"user_id": [1, 2], "gender": ["F", "M"], "age": [30, 40]}).write_parquet(folder / "users.parquet")
    pl.DataFrame({"request_id": [1, 1], "user_id": [1, 1], "item_id": [10, 11], "ts": [1511658000] * 2, "position": [0, 1],
                  "page": [0, 0], "channel": ["itemcf", "swing"], "clicked": [1, 0]}).write_parquet(folder / "exposures.parquet")
    return folder


def test_world_folder(tmp_path):
    folder = world(tmp_path, {"user_id": [1, 2, 2], "item_id": [10, 11, 12], "behavior": ["click", "buy", "pv"],
                              "ts": [1511658000, 1511658001, 1511658002], "scene": ["homepage", "search", "search"]})
    assert detect_format(folder) == "world"
    data = load(folder)
    assert data.format == "world" and "true_quality" not in data.items.columns  # hidden truth is not loaded
    assert data.items["pools"].to_list() == [["new"], []]
    assert data.events.rows() == [(1, 10, "click", 1511658000, "homepage"), (2, 11, "buy", 1511658001, "search")]
    assert data.quarantine.select("line", "column", "reason").rows() == [(3, "item_id", "unknown item")]
    assert data.exposures["clicked"].dtype == pl.Int8 and data.exposures.height == 2
    assert_accounted(data)
    (folder / "world.json").unlink()
    with pytest.raises(DataError, match="no world.json"):
        load_world(folder)
