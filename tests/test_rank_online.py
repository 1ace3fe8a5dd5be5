"""The online feature path equals the training feature code, tensor for tensor: the train/serve skew guard.

For the tiny shop and encoders fitted on its train exposures (several feature settings), many
(user, now) states from `states_at` and random candidate sets (unknown item code 0, codes beyond
the item table, items the user touched, triggers of every kind, unseen channels and pages,
exposures) must give `OnlineFeatures` tensors equal to `Encoders.transform(point_in_time(...))` on
the same one-user slice (`ServedRanker.exact_features`).
"""
import numpy as np
import polars as pl
import pytest
import torch

from homefeed.data.dataset import Dataset
from homefeed.data.user_state import UserState, states_at
from homefeed.rank.encoders import Encoders
from homefeed.rank.features import FeatureSettings, point_in_time
from homefeed.recall.merge import MergedCandidates
from homefeed.serve.ranker import ServedRanker

DAY = 86_400
EDGES = np.array([DAY, 7 * DAY, DAY // 4, 3 * DAY, 30 * DAY, 30 * DAY + 1])  # count windows of the settings below
NAMES = ("itemcf", "swing", "popular", "a_channel_never_trained_on")

SETTINGS = {
    "default": (FeatureSettings(), True),
    # hashed user/item ids, rare values unknown, other windows/behaviours/sequence, a negative time zone
    "variant": (FeatureSettings(max_len=5, seq_behaviors=["click"], cross_behaviors=["click", "cart", "buy"],
                                cross_windows_days=[0.25, 3.0, 30.0], min_count=3, hash_above=300, hash_buckets=97,
                                tz_offset_hours=-5.5, n_gap_buckets=6, n_price_bands=4), True),
    # fitted without exposures (the DIN protocol): no item_shown_* columns, no user id field
    "no_exposures": (FeatureSettings(use_user_id=False, max_len=30), False),
}


@pytest.fixture(scope="module")
def shop(tiny_dataset_dir) -> Dataset:
    """The tiny shop with a standard_category column (some null), some items missing from the table, null prices/brands."""
    ds = Dataset.load(tiny_dataset_dir)
    items = (ds.items.filter(pl.col("item_id") % 13 != 0)
             .with_columns(pl.when(pl.col("item_id") % 11 == 0).then(None).otherwise(pl.col("leaf_category") % 7)
                           .alias("standard_category"),
                           pl.when(pl.col("item_id") % 17 == 0).then(None).otherwise(pl.col("price")).alias("price"),
                           pl.when(pl.col("item_id") % 19 == 0).then(None).otherwise(pl.col("brand")).alias("brand")))
    return Dataset(events=ds.events, items=items, users=ds.users, exposures=ds.exposures, split=ds.split, vocabs=ds.vocabs)


def fitted(ds: Dataset, settings: FeatureSettings, exposures: bool) -> Encoders:
    train = ds.split.filter(ds.exposures, "train")
    rows = train.gather(np.random.default_rng(1).choice(train.height, 12_000, replace=False))
    fit_ds = ds if exposures else Dataset(events=ds.events, items=ds.items, users=ds.users, split=ds.split, vocabs=ds.vocabs)
    return Encoders.fit(point_in_time(fit_ds, rows, settings), settings)


def candidates(rng, state: UserState, n_items: int) -> MergedCandidates:
    """n random candidates: any code (0 and codes past the table included), items the user touched, every trigger kind."""
    n = int(rng.integers(1, 400))
    pool = [rng.integers(0, n_items + 5, n)]
    if state.items.size:
        pool.append(rng.choice(state.items, n))
    items = np.concatenate(pool)[rng.permutation(n * len(pool))[:n]]
    triggers = rng.choice(np.concatenate([[-1, 0], rng.integers(1, n_items, 3), state.items[-8:]]), n)
    return MergedCandidates(items=items.astype(np.int32), scores=np.zeros(n, np.float32), triggers=triggers.astype(np.int32),
                            channels=rng.integers(0, len(NAMES), n).astype(np.int8), sources=np.zeros(n, np.uint32),
                            names=NAMES)


def exposures(rng, ds: Dataset, state: UserState, cands: MergedCandidates) -> tuple[np.ndarray, np.ndarray] | None:
    """The user's logged exposures plus made-up ones of candidates (some at or after `now`: never counted)."""
    if rng.random() < 0.2:
        return None
    logged = ds.exposures.filter(pl.col("user_id") == state.user_id)
    m = int(rng.integers(0, 60))
    made_up = rng.choice(cands.items, m)
    ts = state.now - np.where(rng.random(m) < 0.3, rng.choice(EDGES, m), rng.integers(-2, 12 * DAY, m))
    return (np.concatenate([logged["item_id"].to_numpy(), made_up]).astype(np.int64),
            np.concatenate([logged["ts"].to_numpy(), ts]).astype(np.int64))


def states(rng, ds: Dataset) -> list[UserState]:
    """Active, cold (no events yet), unknown (code 0) and out-of-vocabulary users at several times, some odd ones."""
    ev = ds.events
    first = ev.group_by("user_id").agg(pl.col("ts").min())
    out = []
    for now in (ds.split.train_end - DAY + 123, ds.split.valid_end, int(ev["ts"].max()) + 3600):
        active = rng.choice(ev.filter(pl.col("ts") < now)["user_id"].unique().to_numpy(), 10, replace=False)
        cold = first.filter(pl.col("ts") >= now)["user_id"].to_numpy()[:2]
        users = np.concatenate([active, cold, [0, ds.vocabs["user"].size + 7]])
        out += states_at(ev, ds.users, now, max_len=200, user_ids=users)
    odd = []
    for s in out[:6]:  # shuffled order with tied times; an unknown city, a missing age; events at and after now
        p = rng.permutation(s.items.size)  # and events exactly on the edges of every count window
        ts = s.ts.copy()
        ts[::3] = ts[0] if ts.size else ts[::3]
        edge = s.items[-1] if s.items.size else 5
        items = np.concatenate([s.items[p], [5, 6], [edge] * len(EDGES)]).astype(np.int32)
        odd.append(UserState(user_id=s.user_id, now=s.now, items=items,
                             behaviors=np.concatenate([s.behaviors[p], [1, 1], [1, 3] * (len(EDGES) // 2)]).astype(np.int8),
                             ts=np.concatenate([ts[p], [s.now, s.now + 9], s.now - EDGES]).astype(np.int64),
                             profile={**s.profile, "city": "atlantis", "age": None}))
    return out + odd


@pytest.mark.parametrize("name", list(SETTINGS))
def test_online_features_equal_the_training_feature_code(shop, name):
    settings, with_exposures = SETTINGS[name]
    enc = fitted(shop, settings, with_exposures)
    ranker = ServedRanker(None, enc, shop.items, shop.users, shop.vocabs, [])
    rng = np.random.default_rng(len(name))
    n_items = shop.vocabs["item"].size
    seen = {"cross": 0, "shown": 0, "triggers": set(), "seq_steps": 0, "unknown_item": 0, "pages": set()}
    all_states = states(rng, shop)
    for state in all_states:
        cands = candidates(rng, state, n_items)
        context = {"page": int(rng.choice([0, 1, 2, 7]))}
        shown = exposures(rng, shop, state, cands)
        fast = ranker.features(state, cands, context, shown)
        exact = ranker.exact_features(state, cands, context, shown)
        assert set(fast) == set(exact)
        for k in ("sparse", "seq", "seq_gap"):
            assert fast[k].dtype == exact[k].dtype and fast[k].shape == exact[k].shape, k
            assert torch.equal(fast[k], exact[k]), f"{k} differs for user {state.user_id} at {state.now} ({name})"
        assert fast["dense"].dtype == torch.float32
        torch.testing.assert_close(fast["dense"], exact["dense"], rtol=0, atol=1e-6)
        sp = {f.name: exact["sparse"][:, i] for i, f in enumerate(enc.spec.sparse)}
        seen["cross"] += int((sp.get("user_item_1d", sp.get("user_item_3d", torch.zeros(1))) > 1).sum())
        seen["shown"] += int(sum((v > 1).sum() for c, v in sp.items() if c.startswith("item_shown")))
        seen["triggers"] |= set(sp["trigger_type"].tolist())
        seen["seq_steps"] += int((exact["seq_gap"][0] > 0).sum())
        seen["unknown_item"] += int((sp["item_id"] == 0).sum())
        seen["pages"] |= set(sp["page"].tolist())
    # the comparison covered the interesting cases, not just empty features
    assert seen["cross"] > 20 and seen["seq_steps"] > 20 and seen["unknown_item"] > 0
    assert len(seen["triggers"]) >= 4 and len(seen["pages"]) >= 2
    assert (seen["shown"] > 0) == with_exposures
    assert any(s.items.size == 0 for s in all_states) and any(s.user_id == 0 for s in all_states)


def test_negative_codes_and_a_field_it_cannot_compute(shop):
    enc = fitted(shop, SETTINGS["default"][0], True)
    ranker = ServedRanker(None, enc, shop.items, shop.users, shop.vocabs, [])
    state = states_at(shop.events, shop.users, shop.split.valid_end, user_ids=np.array([1]))[0]
    cands = MergedCandidates(items=np.array([-3, 0, 1, ranker.online.size + 1], np.int32), scores=np.zeros(4, np.float32),
                             triggers=np.array([-5, 0, 1, 2], np.int32), channels=np.zeros(4, np.int8),
                             sources=np.zeros(4, np.uint32), names=("itemcf",))
    fast, exact = ranker.features(state, cands, {}), ranker.exact_features(state, cands, {})
    assert all(torch.equal(fast[k], exact[k]) for k in ("sparse", "seq", "seq_gap"))
    assert (fast["sparse"][[0, 1, 3], enc.spec.sparse_index("item_id")] == 0).all()
    enc.fields.append(type(enc.fields[0])("colour", "item", "vocab", values=np.array(["red"])))
    with pytest.raises(ValueError, match="colour.*it computes: .*brand"):
        type(ranker.online)(enc, shop.items)
