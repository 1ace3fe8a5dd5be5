"""Ranking samples: protocols, cleaning steps with hand-counted removals, DIN negatives, tensors."""
import numpy as np
import polars as pl
import pytest
import torch

from homefeed.config import Cleaning, CrawlerRule, FakeOrderRule, TimeWindow
from homefeed.data.clean import clean_events, save_verdicts
from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR
from homefeed.data.vocab import Vocab
from homefeed.rank.samples import SampleSettings, build_all, build_samples, choose_protocol

DAY = 86_400
T0 = 1_600_000_000 - (1_600_000_000 % DAY)  # a UTC midnight


def toy_dataset(*, n_users=120, n_items=60, days=6, seed=0, exposures=True) -> Dataset:
    """An encoded shop with planted signal: each user clicks items of a favourite leaf far more often.

    Users browse (pv) mostly their favourite leaf; exposures of 6 items per request are clicked with
    probability 0.4 for the favourite leaf and 0.04 otherwise; every click is also a click event.
    Train = days 0..days-3, valid = the next day, test = the last day.
    """
    rng = np.random.default_rng(seed)
    leaf = 1 + np.arange(n_items) % 6                      # item code i+1 -> leaf
    fav = rng.integers(1, 7, n_users)                      # user code u+1 -> favourite leaf
    items = pl.DataFrame({"item_id": np.arange(1, n_items + 1, dtype=np.int32), "leaf_category": leaf.astype(np.int32),
                          "brand": (1 + np.arange(n_items) % 4).astype(np.int32), "shop": (1 + np.arange(n_items) % 5).astype(np.int32),
                          "price": rng.lognormal(3, 1, n_items), "pools": [["a", "b"][: 1 + i % 2] for i in range(n_items)]})
    users = pl.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int32), "gender": rng.choice(["F", "M"], n_users),
                          "age": rng.integers(18, 60, n_users).astype(np.int32), "city": rng.choice(["a", "b", "c"], n_users),
                          "purchase_power": rng.integers(1, 6, n_users).astype(np.int32)})
    n_ev = n_users * days * 4
    ev_user = rng.integers(1, n_users + 1, n_ev)
    same = rng.random(n_ev) < 0.8
    ev_item = np.where(same, fav[ev_user - 1] + 6 * rng.integers(0, n_items // 6, n_ev), rng.integers(1, n_items + 1, n_ev))
    ev_ts = T0 + rng.integers(0, days * DAY, n_ev)
    n_req = n_users * days * 2
    req_user = rng.integers(1, n_users + 1, n_req)
    req_ts = T0 + rng.integers(0, days * DAY, n_req)
    ex_user, ex_ts = np.repeat(req_user, 6), np.repeat(req_ts, 6)
    ex_item = np.concatenate([rng.choice(np.arange(1, n_items + 1), 6, replace=False) for _ in range(n_req)])
    clicked = (rng.random(ex_user.size) < np.where(leaf[ex_item - 1] == fav[ex_user - 1], 0.4, 0.04)).astype(np.int8)
    exp = pl.DataFrame({"request_id": np.repeat(np.arange(n_req), 6), "user_id": ex_user.astype(np.int32),
                        "item_id": ex_item.astype(np.int32), "ts": ex_ts, "position": np.tile(np.arange(6), n_req).astype(np.int32),
                        "page": np.zeros(ex_user.size, np.int32), "channel": rng.choice(["popular", "itemcf"], ex_user.size),
                        "trigger_item": np.where(rng.random(ex_user.size) < 0.5, ex_item, 0).astype(np.int32), "clicked": clicked})
    events = pl.concat([
        pl.DataFrame({"user_id": ev_user.astype(np.int32), "item_id": ev_item.astype(np.int32), "behavior": "pv", "ts": ev_ts, "scene": "browse"}),
        exp.filter(pl.col("clicked") == 1).select("user_id", "item_id", behavior=pl.lit("click"), ts="ts", scene=pl.lit("homepage")),
    ]).with_columns(pl.col("behavior").cast(BEHAVIOR)).sort("ts", "user_id")
    if not exposures:  # a log without impressions has no homepage clicks either
        events = events.filter(pl.col("behavior") == "pv")
    split = TimeSplit(train_end=T0 + (days - 2) * DAY, valid_end=T0 + (days - 1) * DAY)
    return Dataset(events=events, items=items, users=users, split=split, exposures=exp if exposures else None)


def _ds(events, exposures=None, items=None, users=None, split=None):
    items = items if items is not None else pl.DataFrame({"item_id": [1, 2, 3, 4], "leaf_category": [1, 1, 2, 2], "brand": [1, 1, 1, 1],
                                                          "shop": [1, 1, 1, 1], "price": [1.0, 2.0, 3.0, 4.0]}).cast({"item_id": pl.Int32})
    users = users if users is not None else pl.DataFrame({"user_id": [1, 2, 3]}).cast(pl.Int32)
    ev = pl.DataFrame(events, schema=["user_id", "item_id", "behavior", "ts"], orient="row").with_columns(
        pl.col("user_id", "item_id").cast(pl.Int32), pl.col("behavior").cast(BEHAVIOR))
    return Dataset(events=ev, items=items, users=users, exposures=exposures,
                   split=split or TimeSplit(train_end=T0 + 10 * DAY, valid_end=T0 + 11 * DAY))


def _exposures(rows):
    cols = ["request_id", "user_id", "item_id", "ts", "position", "page", "channel", "clicked"]
    return pl.DataFrame(rows, schema=cols, orient="row").with_columns(
        pl.col("user_id", "item_id").cast(pl.Int32), pl.col("position", "page").cast(pl.Int32), pl.col("clicked").cast(pl.Int8))


NO_FILTERS = SampleSettings(drop_bots=False, active_min_actions=0)


def test_protocol_is_chosen_from_the_exposure_log():
    assert choose_protocol(toy_dataset(), SampleSettings())[0] == "exposures"
    assert choose_protocol(toy_dataset(exposures=False), SampleSettings())[0] == "din"
    assert choose_protocol(toy_dataset(), SampleSettings(protocol="din"))[0] == "din"


def test_exposure_samples_follow_the_batch_contract():
    ds = toy_dataset()
    s = build_samples(ds, part="train", settings=NO_FILTERS)
    n, t = len(s), s.tensors
    assert n == ds.exposures_in("train").height
    assert t["sparse"].dtype == torch.int64 and t["sparse"].shape == (n, len(s.spec.sparse))
    assert t["dense"].dtype == torch.float32 and t["dense"].shape == (n, len(s.spec.dense))
    assert t["seq"].shape == (n, s.spec.max_len, len(s.spec.sequence)) and t["seq"].dtype == torch.int64
    assert t["seq_gap"].shape == (n, s.spec.max_len) and t["label"].dtype == torch.float32
    sizes = torch.tensor([f.vocab_size for f in s.spec.sparse])
    assert (t["sparse"] >= 0).all() and (t["sparse"] < sizes).all()
    assert int(t["label"].sum()) == int(ds.exposures_in("train")["clicked"].sum())
    assert s.report["protocol"] == "exposures" and s.report["rows"] == n


def test_invalid_exposures_blacklist_and_windows_are_removed_and_counted():
    ev = [(1, 1, "pv", T0), (2, 2, "pv", T0), (3, 3, "pv", T0)]
    ex = _exposures([
        (1, 1, 1, T0 + 100, 0, 0, "popular", 0),
        (1, 1, 1, T0 + 100, 0, 0, "popular", 0),   # duplicate (request, item): invalid
        (1, 1, 9, T0 + 100, 1, 0, "popular", 0),   # item 9 not in the catalogue: invalid
        (2, 0, 2, T0 + 200, 0, 0, "popular", 1),   # unknown user code 0: invalid
        (3, 2, 3, T0 + 300, -1, 0, "popular", 0),  # negative position: invalid
        (4, 2, 4, T0 + 400, 0, 0, "popular", 1),   # item 4 blacklisted
        (5, 3, 2, T0 + 3600, 0, 0, "itemcf", 1),   # 08:00 local (+8 h) -> ... kept
        (6, 3, 3, T0 + 16 * 3600 + 60, 0, 0, "itemcf", 0),  # 00:01 local: inside the window 23:50-00:10
    ])
    ds = _ds(ev, exposures=ex)
    settings = NO_FILTERS.model_copy(update={"blacklist_items": [4],
                                             "abnormal_windows": [TimeWindow(name="night", start="23:50", end="00:10")]})
    s = build_samples(ds, part="train", settings=settings)
    assert s.report["removed"] == {"invalid": 4, "blacklist": 1, "bots": 0, "abnormal_window:night": 1, "inactive": 0}
    assert len(s) == 2 and s.tensors["user"].tolist() == [1, 3]


def test_inactive_users_are_dropped_point_in_time():
    # user 1 visited the homepage a day before; user 2 only 8 days before (outside the 7-day window)
    ex = _exposures([(1, 1, 1, T0 + 5 * DAY, 0, 0, "p", 0), (2, 2, 1, T0 - 3 * DAY, 0, 0, "p", 0),
                     (3, 1, 2, T0 + 6 * DAY, 0, 0, "p", 1), (4, 2, 2, T0 + 6 * DAY, 0, 0, "p", 1)])
    ds = _ds([(3, 3, "pv", T0)], exposures=ex)
    s = build_samples(ds, part="train", settings=SampleSettings(drop_bots=False))
    assert s.tensors["user"].tolist() == [1]  # request 1 has nothing before it, request 4's user was last seen 9 days ago
    assert s.report["removed"]["inactive"] == 3


def test_crawlers_and_cheaters_come_from_the_ingest_verdicts(tmp_path):
    ev = [(1, 1, "pv", T0 + i) for i in range(40)]                       # 40 pv in one minute: a crawler
    ev += [(2, k, "buy", T0 + DAY + 10 * k) for k in (1, 2, 3)]          # buys never viewed: fake orders
    ev += [(3, 1, "pv", T0 + 50), (3, 1, "buy", T0 + 60)]                # a normal buyer
    ex = _exposures([(u, u, 2, T0 + 2 * DAY, 0, 0, "p", 0) for u in (1, 2, 3)])
    ds = _ds(ev, exposures=ex)
    # as ingest does: judge the raw log (rules loosened for a log of three users), keep the cleaned
    # events in the dataset and the verdicts in its folder
    lenient = Cleaning(crawler=CrawlerRule(rate_factor=0.01), fake_orders=FakeOrderRule(min_history_s=0),
                       max_removed_share={"buy": 1.0}, abnormal_windows=[])
    res = clean_events(ds.events, lenient, tz_offset_hours=0)
    ds.events = res.kept
    save_verdicts(res, tmp_path)
    settings = SampleSettings(active_min_actions=0)
    ds.path = tmp_path
    s = build_samples(ds, part="train", settings=settings)
    assert s.tensors["user"].tolist() == [3]
    assert s.report["removed"]["bots"] == 2 and s.report["verdicts"] == "from ingest"
    assert s.report["crawler_users"] == 1 and s.report["cheating_users"] == 1
    strict = build_samples(ds, part="train", settings=settings.model_copy(update={"cheat_min_fake_orders": 4}))
    assert strict.tensors["user"].tolist() == [2, 3]                    # 3 fake orders are under 4
    # the cleaned log itself holds no evidence any more: without verdicts nobody is dropped, and it says so
    ds.path = None
    blind = build_samples(ds, part="train", settings=settings)
    assert blind.tensors["user"].tolist() == [1, 2, 3] and blind.report["verdicts"].startswith("none")


def test_verdicts_name_raw_ids_and_are_encoded_with_the_dataset_vocabulary(tmp_path):
    ev = [(1, 1, "pv", T0 + i) for i in range(40)] + [(3, 1, "pv", T0 + 50)]
    ex = _exposures([(u, u, 2, T0 + 2 * DAY, 0, 0, "p", 0) for u in (1, 2, 3)])
    ds = _ds(ev, exposures=ex)
    raw = ds.events.with_columns(pl.col("user_id").cast(pl.Int64) + 100)  # raw ids 101, 103 -> codes 1, 3
    res = clean_events(raw, Cleaning(crawler=CrawlerRule(rate_factor=0.01), abnormal_windows=[]), tz_offset_hours=0)
    assert res.verdicts().rows() == [(101, "crawler", 40)]
    save_verdicts(res, tmp_path)
    ds.path, ds.vocabs = tmp_path, {"user": Vocab.fit(pl.Series([101, 102, 103]), name="user")}
    s = build_samples(ds, part="train", settings=SampleSettings(active_min_actions=0))
    assert s.tensors["user"].tolist() == [2, 3] and s.report["crawler_users"] == 1


def test_din_protocol_positives_and_popularity_negatives():
    ds = toy_dataset(exposures=False)
    settings = NO_FILTERS.model_copy(update={"neg_ratio": 3})
    s = build_samples(ds, part="train", settings=settings)
    assert s.protocol == "din"
    ev = ds.events_in("train")
    n_pos = ev.unique(["user_id", "item_id"]).height   # no click rows -> pv is the click; first per (user, item)
    assert int(s.tensors["label"].sum()) == n_pos
    assert len(s) - n_pos >= 3 * n_pos * 0.98          # few negatives dropped for hitting the positive item
    # negatives follow popularity: the most viewed item is drawn more than the least viewed one
    neg_items = s.tensors["sparse"][s.tensors["label"] == 0, s.spec.sparse_index("item_id")]
    counts = ev.group_by("item_id").len().sort("len")
    top, low = s.encoders.fields[s.spec.sparse_index("item_id")].encode(
        np.array([counts["item_id"][-1], counts["item_id"][0]]))
    assert (neg_items == top).sum() > (neg_items == low).sum()
    again = build_samples(ds, part="train", settings=settings)
    assert torch.equal(again.tensors["sparse"], s.tensors["sparse"])  # seeded


def test_encoders_are_fitted_on_train_only():
    ds = toy_dataset()
    parts = build_all(ds, NO_FILTERS)
    # an item only in the test exposures encodes as unknown: drop item 7 from train and valid
    ds2 = toy_dataset()
    ds2.exposures = ds2.exposures.filter((pl.col("item_id") != 7) | (pl.col("ts") >= ds2.split.valid_end))
    ds2.events = ds2.events.filter((pl.col("item_id") != 7) | (pl.col("ts") >= ds2.split.valid_end))
    p2 = build_all(ds2, NO_FILTERS)
    item_enc = p2["train"].encoders.fields[p2["train"].spec.sparse_index("item_id")]
    assert item_enc.encode(np.array([7]))[0] == 0 and item_enc.encode(np.array([8]))[0] > 0
    assert parts["test"].spec == parts["train"].spec


def test_unknown_part_and_behaviour_are_clear_errors():
    with pytest.raises(ValueError, match="unknown split part 'tset'.*train, valid, test"):
        build_samples(toy_dataset(), part="tset")
    with pytest.raises(ValueError, match=r"unknown behaviour\(s\) \['clik'\]"):
        build_samples(toy_dataset(exposures=False), part="train", settings=SampleSettings(positive_behaviors=["clik"]))


def test_train_window_keeps_the_last_days_but_the_full_history():
    ds = toy_dataset()
    full = build_samples(ds, part="train", settings=NO_FILTERS)
    last = build_samples(ds, part="train", settings=NO_FILTERS.model_copy(update={"train_window_days": 1.0}),
                         encoders=full.encoders)
    assert last.ts.min() >= ds.split.train_end - DAY and len(last) == (full.ts >= ds.split.train_end - DAY).sum()
    assert last.report["removed"]["before_train_window"] == len(full) - len(last)
    same = torch.from_numpy(np.flatnonzero(full.ts >= ds.split.train_end - DAY))
    assert torch.equal(full.take(same)["seq"], last.tensors["seq"])  # history from before the window is kept


def test_tiny_world_end_to_end(tiny_dataset_dir):
    ds = Dataset.load(tiny_dataset_dir)
    parts = build_all(ds, SampleSettings())
    assert {p: s.protocol for p, s in parts.items()} == {"train": "exposures", "valid": "exposures", "test": "exposures"}
    sizes = torch.tensor([f.vocab_size for f in parts["train"].spec.sparse])
    for s in parts.values():
        assert len(s) > 100 and 0.005 < s.report["ctr"] < 0.3
        assert ((s.tensors["sparse"] >= 0) & (s.tensors["sparse"] < sizes)).all()
        assert torch.isfinite(s.tensors["dense"]).all()
        assert (s.tensors["seq"][..., 0] > 0).any(dim=1).float().mean() > 0.5   # most samples have a history
    kept = sum(len(s) for s in parts.values()) + sum(sum(s.report["removed"].values()) for s in parts.values())
    assert kept == ds.exposures.height                                          # every exposure accounted for
