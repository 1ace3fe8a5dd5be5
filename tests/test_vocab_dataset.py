"""Vocabularies and the dataset folder round-trip."""
import numpy as np
import polars as pl
import pytest

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR
from homefeed.data.user_state import states_at
from homefeed.data.vocab import UNKNOWN, Vocab


def test_vocab_codes_dense_sorted_and_unknown_is_zero(tmp_path):
    v = Vocab.fit(pl.Series([30, 10, 30]), pl.Series([20, None]), name="item")
    assert v.table["raw"].to_list() == [10, 20, 30] and v.table["code"].to_list() == [1, 2, 3]
    assert v.size == 4
    assert v.encode(pl.Series([20, 99])).to_list() == [2, UNKNOWN]
    assert v.decode(pl.Series([3, 0])).to_list() == [30, None]
    assert v.code_of(30) == 3 and v.code_of("30") == 3 and v.code_of("nope") == UNKNOWN
    v.save(tmp_path / "item.parquet")
    assert Vocab.load(tmp_path / "item.parquet").table.equals(v.table)


def test_string_ids_and_bad_table():
    v = Vocab.fit(pl.Series(["u2", "u1"]))
    assert v.encode(pl.Series(["u1", "u3"])).to_list() == [1, 0]
    with pytest.raises(ValueError, match="columns"):
        Vocab(pl.DataFrame({"a": [1]}))


def _dataset():
    events = pl.DataFrame({
        "user_id": [1, 1, 2, 1], "item_id": [1, 2, 2, 3],
        "behavior": pl.Series(["pv", "click", "buy", "cart"], dtype=BEHAVIOR), "ts": [10, 20, 30, 40],
    }).with_columns(pl.col("user_id", "item_id").cast(pl.Int32))
    items = pl.DataFrame({"item_id": [1, 2, 3], "leaf_category": [1, 1, 2], "brand": [1, 1, 1], "shop": [1, 2, 1],
                          "price": [1.0, 2.0, 3.0]})
    users = pl.DataFrame({"user_id": [1, 2], "gender": ["F", "M"]})
    return Dataset(events=events, items=items, users=users, split=TimeSplit(25, 35))


def test_split_parts_and_roundtrip(tmp_path):
    ds = _dataset()
    assert ds.events_in("train")["ts"].to_list() == [10, 20]
    assert ds.events_in("valid")["ts"].to_list() == [30]
    assert ds.events_in("test")["ts"].to_list() == [40]
    with pytest.raises(ValueError, match="valid parts"):
        ds.events_in("dev")
    ds.save(tmp_path / "ds")
    back = Dataset.load(tmp_path / "ds")
    assert back.events.equals(ds.events) and back.split == ds.split
    assert back.events.schema["behavior"] == BEHAVIOR
    with pytest.raises(FileNotFoundError, match="ingest"):
        Dataset.load(tmp_path / "missing")


def test_states_at_sees_only_the_past():
    ds = _dataset()
    s1, s2, s3 = states_at(ds.events, ds.users, 30, user_ids=np.array([1, 2, 9]))
    assert s1.items.tolist() == [1, 2] and s1.profile == {"gender": "F"}
    assert s2.items.size == 0  # the buy at ts 30 is not before 30
    assert s3.user_id == 9 and s3.items.size == 0
    assert s1.recent(behaviors=("click",)).tolist() == [2]
