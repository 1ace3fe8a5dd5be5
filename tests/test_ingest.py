"""The whole ingest on the tiny shop and on bad input, through the library and the real CLI."""
import json
import subprocess
import sys

import polars as pl
import pytest

from homefeed.config import Config, load_config
from homefeed.data.dataset import Dataset
from homefeed.data.ingest import ingest
from homefeed.data.loaders import DataError


def test_every_row_is_accounted_for(tiny_dataset_dir):
    report = json.loads((tiny_dataset_dir / "report.json").read_text())
    for name, t in report["tables"].items():
        assert t["input_rows"] == t["kept_rows"] + t["quarantined_rows"] + sum(t["removed_by_cleaning"].values()), name
    assert report["input_rows"] == report["kept_rows"] + report["quarantined_rows"] + sum(report["removed_by_cleaning"].values())
    assert report["removed_by_cleaning"]["crawler"] > 0 and report["removed_by_cleaning"]["fake_order"] > 0
    s = report["split"]
    assert s["train"] > s["valid"] > 0 and s["test"] > 0


def test_dataset_is_encoded_sessionised_and_split(tiny_dataset_dir, tiny_world):
    ds = Dataset.load(tiny_dataset_dir)
    ev = ds.events
    assert ev.schema["user_id"] == pl.Int32 and ev["user_id"].min() >= 1
    assert ev["item_id"].max() <= len(ds.vocabs["item"])
    assert set(ds.vocabs) >= {"user", "item", "leaf_category", "brand", "shop"}
    # codes decode back to the raw ids of the world
    raw_items = set(pl.read_parquet(tiny_world / "items.parquet")["item_id"].to_list())
    assert set(ds.vocabs["item"].decode(ev["item_id"].unique()).to_list()) <= raw_items
    # a session never spans more than the gap
    gaps = ev.sort("user_id", "ts").with_columns(gap=pl.col("ts").diff().over("session_id")).filter(pl.col("gap") > 1800)
    assert gaps.height == 0
    assert ds.exposures is not None and ds.exposures["clicked"].sum() > 0
    assert ds.split.train_end < ds.split.valid_end <= ev["ts"].max()


def test_quarantine_policy_keeps_going_and_strict_stops(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("1,10,100,pv,1511658000\n1,11,100,pv,1511658060\n2,10,100,teleport,1511658100\n"
                   "2,12,101,buy,15116581xx\n3,10,100,pv,1511744400\n3,11,100,pv,1511830800\n")
    cfg = load_config(overrides=["ingest.split_unit=hour", "ingest.valid_days=1", "ingest.test_days=1"])
    _, report = ingest(csv, tmp_path / "ds", cfg, fmt="taobao")
    q = pl.read_parquet(tmp_path / "ds" / "quarantine.parquet")
    assert report["tables"]["events"]["quarantined_rows"] == 2 == q.height
    assert sorted(q["line"].to_list()) == [3, 4] and "reason" in q.columns
    assert report["tables"]["events"]["input_rows"] == 6
    strict = Config.model_validate({"ingest": {"policy": "strict", "split_unit": "hour"}})
    with pytest.raises(DataError) as e:
        ingest(csv, tmp_path / "ds2", strict, fmt="taobao")
    assert e.value.line == 3 and "teleport" in str(e.value)


def test_cli_strict_exits_nonzero_with_the_message(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("1,10,100,pv,1511658000\n2,10,100,teleport,1511658100\n")
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", "ingest", str(csv), "--format", "taobao",
                           "--out", str(tmp_path / "ds"), "--policy", "strict"], capture_output=True, text=True)
    assert done.returncode != 0
    assert "log.csv:2" in done.stderr and "teleport" in done.stderr


def test_cli_json_report_and_config_typo(tmp_path, tiny_world):
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", "ingest", str(tiny_world), "--out", str(tmp_path / "ds"),
                           "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["format"] == "world" and report["kept_rows"] > 0
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", "ingest", str(tiny_world), "--out", str(tmp_path / "ds"),
                           "--set", "ingest.sesion_gap_s=5"], capture_output=True, text=True)
    assert done.returncode == 2 and "sesion_gap_s" in done.stderr and "session_gap_s" in done.stderr


def test_ingest_saves_the_cleaning_verdicts_that_ranking_reuses(tiny_dataset_dir):
    import polars as pl

    from homefeed.data.dataset import Dataset
    from homefeed.rank.samples import SampleSettings, find_bad_users

    report = json.loads((tiny_dataset_dir / "report.json").read_text())
    verdicts = pl.read_parquet(tiny_dataset_dir / "cleaning_verdicts.parquet")
    removed = report["cleaning"]["removed"]
    assert int(verdicts["n"].sum()) == removed.get("crawler", 0) + removed.get("fake_order", 0) > 0
    bad, info = find_bad_users(Dataset.load(tiny_dataset_dir), SampleSettings())
    assert info["verdicts"] == "from ingest" and info["crawler_users"] > 0  # read from the folder
    assert info["bad_users"] == bad.size
