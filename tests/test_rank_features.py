"""Point-in-time features (hand-computed values), THE leakage test, and the train-fitted encoders."""
import numpy as np
import polars as pl
import pytest
import torch

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR
from homefeed.rank.encoders import Encoders, FieldCode
from homefeed.rank.features import FeatureSettings, Queries, Timeline, gap_bucket, point_in_time
from test_rank_samples import toy_dataset

DAY = 86_400
T0 = 1_600_000_000 - (1_600_000_000 % DAY)


def tiny() -> Dataset:
    """User 1's log (item: leaf, brand): 1:(10,5) 2:(10,6) 3:(20,5) 4:(20,6); user 2 views item 1 once."""
    items = pl.DataFrame({"item_id": [1, 2, 3, 4], "leaf_category": [10, 10, 20, 20], "standard_category": [7, 7, 7, 8],
                          "brand": [5, 6, 5, 6], "shop": [1, 1, 2, 2], "price": [1.0, 5.0, 10.0, None],
                          "tags": [["b", "a"], ["a"], [], None]}).cast({"item_id": pl.Int32, "leaf_category": pl.Int32})
    users = pl.DataFrame({"user_id": [1, 2], "gender": ["F", None], "age": [30, 40], "city": ["x", "y"],
                          "purchase_power": [3, 1]}).cast({"user_id": pl.Int32})
    ev = pl.DataFrame([(1, 1, "pv", T0 - 3 * DAY), (1, 2, "pv", T0 - 3600), (1, 3, "cart", T0 - 60), (1, 1, "click", T0 - 30),
                       (1, 4, "pv", T0), (1, 2, "pv", T0 + 10), (2, 1, "pv", T0 - 10)],
                      schema=["user_id", "item_id", "behavior", "ts"], orient="row").with_columns(
        pl.col("user_id", "item_id").cast(pl.Int32), pl.col("behavior").cast(BEHAVIOR))
    ex = pl.DataFrame({"request_id": [1, 2, 3], "user_id": [1, 1, 1], "item_id": [2, 2, 2], "ts": [T0 - 7200, T0 - 100, T0],
                       "position": [0, 0, 0], "page": [0, 0, 0], "channel": ["p", "p", "p"], "trigger_item": [None, None, None],
                       "clicked": [0, 0, 0]}).cast({"user_id": pl.Int32, "item_id": pl.Int32, "trigger_item": pl.Int32})
    return Dataset(events=ev, items=items, users=users, exposures=ex, split=TimeSplit(T0 + DAY, T0 + 2 * DAY))


def rows(user, item, ts, trigger=0, channel="itemcf", position=3, page=1):
    return pl.DataFrame({"user_id": [user], "item_id": [item], "ts": [ts], "trigger_item": [trigger], "channel": [channel],
                         "position": [position], "page": [page]}).cast({"user_id": pl.Int32, "item_id": pl.Int32})


def test_timeline_counts_a_half_open_window():
    tl = Timeline(np.array([5, 5, 5, 9, 5]), np.array([10, 20, 30, 20, 40]), item=np.array([1, 2, 3, 4, 5]))
    # user 5 rows at 10, 20, 30, 40; at t=30 the window of 15 s is [15, 30): the row at 20 only
    lo, hi = tl.bounds(Queries(np.array([5, 5, 9, 7]), np.array([30, 30, 21, 99])), 15)
    assert (hi - lo).tolist() == [1, 1, 1, 0]
    lo, hi = tl.bounds(Queries(np.array([5, 5]), np.array([30, 5])))
    assert (hi - lo).tolist() == [2, 0]
    last = tl.last(Queries(np.array([5, 5]), np.array([35, 11])), 3)
    assert tl.columns["item"][last[0]].tolist() == [1, 2, 3] and last[1].tolist() == [0, -1, -1]


def test_point_in_time_values_by_hand():
    raw = point_in_time(tiny(), rows(1, 2, T0, trigger=1), FeatureSettings(max_len=3))
    f = raw.frame.row(0, named=True)
    # before T0: item1 pv (-3d), item2 pv (-1h), item3 cart (-60s), item1 click (-30s); the pv of item 4 AT T0 is not history
    assert f["user_leaf_1d"] == 2 and f["user_leaf_7d"] == 3    # leaf 10: items 1, 2 (item 1's -3d pv only in 7d)
    assert f["user_brand_1d"] == 1 and f["user_brand_7d"] == 1  # brand 6: item 2 (item 4 at T0 excluded)
    assert f["user_std_1d"] == 3 and f["user_item_1d"] == 1      # standard 7: items 1, 2, 3 within 1 day
    assert f["item_shown_1d"] == 2                               # exposures at -7200 and -100; the one at T0 is itself
    assert f["trigger_type"] == "click" and f["hour"] == (T0 // 3600 + 8) % 24
    assert (f["gender"], f["age"], f["standard_category"], f["tags"]) == ("F", 30, 7, "a")
    # last 3 pv/click before T0, oldest first: item 2 (-1h), item 1 (-30 s); the cart is not a click
    assert raw.seq["hist_item_id"].tolist() == [[1, 2, 1]] and raw.seq["hist_leaf_category"].tolist() == [[10, 10, 10]]
    assert raw.seq_gap_s.tolist() == [[3 * DAY, 3600, 30]]
    short = point_in_time(tiny(), rows(2, 3, T0), FeatureSettings(max_len=3))
    assert short.seq["hist_item_id"].tolist() == [[1, 0, 0]] and short.seq_gap_s.tolist() == [[10, -1, -1]]
    assert short.frame["trigger_type"][0] == "none" and short.frame["gender"][0] is None
    unseen = point_in_time(tiny(), rows(2, 3, T0, trigger=4), FeatureSettings())
    assert unseen.frame["trigger_type"][0] == "unseen"


def test_gap_buckets():
    assert gap_bucket(np.array([-1, 0, 59, 60, 179, 180, 10**9]), 16).tolist() == [0, 1, 1, 2, 2, 3, 15]


def _encode_at(dataset, sample_rows, enc, settings):
    return enc.transform(point_in_time(dataset, sample_rows, settings))


def _before(ds: Dataset, t: int) -> Dataset:
    return Dataset(events=ds.events.filter(pl.col("ts") < t), items=ds.items, users=ds.users, split=ds.split,
                   exposures=ds.exposures.filter(pl.col("ts") < t))


def test_no_feature_sees_an_event_at_or_after_the_sample_time():
    """THE leakage test: cut the logs at each sample time; the sample's tensors must not change."""
    ds = toy_dataset(n_users=40, n_items=30, days=4)
    settings = FeatureSettings(max_len=8)
    sample_rows = ds.exposures.select("user_id", "item_id", "ts", "channel", "position", "page", "trigger_item")
    enc = Encoders.fit(point_in_time(ds, sample_rows, settings), settings)
    full = _encode_at(ds, sample_rows, enc, settings)
    times = np.unique(sample_rows["ts"].to_numpy())
    rng = np.random.default_rng(0)
    checked = 0
    for t in rng.choice(times, 25, replace=False):
        at_t = sample_rows.with_row_index("i").filter(pl.col("ts") == t)
        cut = _encode_at(_before(ds, int(t)), at_t.drop("i"), enc, settings)
        idx = torch.from_numpy(at_t["i"].to_numpy().astype(np.int64))
        for k in ("sparse", "dense", "seq", "seq_gap"):
            assert torch.equal(full[k].index_select(0, idx), cut[k]), f"{k} of samples at ts={t} saw the future"
        checked += len(idx)
    assert checked >= 25
    # and the check has teeth: features that looked at ts <= t (simulated by querying at t + 1) differ from the cut
    t = int(ds.events.filter(pl.col("behavior") == "click")["ts"][5])
    at_t = sample_rows.filter(pl.col("ts") == t).with_columns(pl.col("ts") + 1)
    leaky = _encode_at(ds, at_t, enc, settings)
    cut = _encode_at(_before(ds, t), at_t, enc, settings)
    assert not torch.equal(leaky["seq"], cut["seq"])


def test_encoders_unknowns_bands_hashing_and_round_trip(tmp_path):
    ds = tiny()
    settings = FeatureSettings(n_price_bands=2)
    train_rows = pl.concat([rows(1, 1, T0), rows(1, 2, T0), rows(2, 3, T0)])
    enc = Encoders.fit(point_in_time(ds, train_rows, settings), settings)
    out = enc.transform(point_in_time(ds, rows(2, 4, T0 + 50, channel="never_seen"), settings))
    sp = {f.name: int(out["sparse"][0, i]) for i, f in enumerate(enc.spec.sparse)}
    assert sp["item_id"] == 0          # item 4 is neither a train target nor in a train sequence
    assert sp["channel"] == 0 and sp["brand"] == 2   # brands 5, 6 seen in train -> codes 1, 2
    assert sp["price_band"] == 0       # null price
    band = FieldCode("price_band", "item", "band", edges=np.array([2.0, 5.0]))
    assert band.encode(pl.Series([1.0, 2.0, 7.0, None])).tolist() == [1, 2, 3, 0]
    h = FieldCode("item_id", "item", "hash", buckets=7)
    codes = h.encode(np.array([0, 1, 2, 10**12]))
    assert codes[0] == 0 and ((codes[1:] >= 1) & (codes[1:] <= 7)).all()
    enc.save(tmp_path)
    back = Encoders.load(tmp_path)
    assert back.spec == enc.spec
    again = back.transform(point_in_time(ds, rows(2, 4, T0 + 50, channel="never_seen"), settings))
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_huge_id_space_is_hashed():
    ds = tiny()
    settings = FeatureSettings(hash_above=2, hash_buckets=11)
    enc = Encoders.fit(point_in_time(ds, pl.concat([rows(1, 1, T0), rows(1, 2, T0), rows(2, 3, T0)]), settings), settings)
    assert enc.spec.sparse[enc.spec.sparse_index("item_id")].vocab_size == 12
    assert enc.spec.sparse[enc.spec.sparse_index("leaf_category")].vocab_size == 3   # 2 values: not hashed


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="sample rows lack column 'ts'"):
        point_in_time(tiny(), rows(1, 1, T0).drop("ts"), FeatureSettings())
