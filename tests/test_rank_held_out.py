"""Leave-one-out logs in ranking: held-out events are sampled at their user's own time, with the split's parts kept."""
import numpy as np
import polars as pl

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR
from homefeed.data.split import leave_one_out
from homefeed.rank.features import FeatureSettings, point_in_time
from homefeed.rank.held_out import HeldOutView, held_out_view, is_leave_one_out
from homefeed.rank.samples import SampleSettings, build_all

DAY = 86_400
T0 = 1_600_000_000


def _logged_clock_loo(n_users: int = 40, per_user: int = 8, seed: int = 0) -> Dataset:
    """Users each active for one hour on their own day, months apart, split leave-one-out on the logged clock."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        start = T0 + u * 3 * DAY  # user u's burst: the last users' are ~4 months after the first's
        for k in range(per_user):
            rows.append((u, int(rng.integers(1, 31)), "pv", start + 60 * k))
    ev = pl.DataFrame(rows, schema=["user_id", "item_id", "behavior", "ts"], orient="row").with_columns(
        pl.col("user_id", "item_id").cast(pl.Int32), pl.col("behavior").cast(BEHAVIOR))
    ev, split, _ = leave_one_out(ev, step_s=60, ordinal=False)
    items = pl.DataFrame({"item_id": np.arange(1, 31, dtype=np.int32), "leaf_category": (1 + np.arange(30) % 5).astype(np.int32)})
    users = pl.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int32)})
    return Dataset(events=ev, items=items, users=users, split=split)


def test_leave_one_out_is_recognised_by_its_shape():
    ds = _logged_clock_loo()
    assert is_leave_one_out(ds)
    days = Dataset(events=ds.events, items=ds.items, users=ds.users,
                   split=TimeSplit(train_end=T0 + 60 * DAY, valid_end=T0 + 61 * DAY))
    assert not is_leave_one_out(days)  # a time split of whole days
    assert held_out_view(days) is days


def test_held_out_events_sit_one_step_after_their_users_previous_event():
    ds = _logged_clock_loo()
    view = held_out_view(ds)
    assert isinstance(view, HeldOutView)
    for part in ("train", "valid", "test"):  # the parts (and every label) stay what the split made them
        assert view.events_in(part).height == ds.events_in(part).height
        assert view.events_in(part).select("user_id", "item_id").sort("user_id").equals(
            ds.events_in(part).select("user_id", "item_id").sort("user_id"))
    last_train = view.events_in("train").group_by("user_id").agg(pl.col("ts").max().alias("last"))
    valid = view.events_in("valid").join(last_train, on="user_id")
    test = view.events_in("test").join(last_train, on="user_id")
    assert (valid["ts"] - valid["last"]).to_list() == [60] * valid.height
    assert (test["ts"] - test["last"]).to_list() == [120] * test.height
    assert held_out_view(view) is view


def test_the_view_changes_nothing_on_an_ordinal_clock():
    ds = _logged_clock_loo()
    ev, split, _ = leave_one_out(ds.events.drop("ts").with_columns(pl.lit(0, pl.Int64).alias("ts")), step_s=60, ordinal=True)
    ordinal = Dataset(events=ev, items=ds.items, users=ds.users, split=split)
    view = held_out_view(ordinal)
    assert view.events["ts"].equals(ordinal.events["ts"])


def test_every_valid_user_keeps_a_sample_and_sees_its_own_recent_history():
    ds = _logged_clock_loo()
    parts = build_all(ds, SampleSettings(drop_bots=False))  # the activity filter on (7 days), as by default
    users = ds.events_in("valid")["user_id"].n_unique()
    assert parts["valid"].report["removed"]["inactive"] == 0
    assert int(parts["valid"].tensors["label"].sum()) == users
    assert "leave-one-out" in parts["valid"].report["clock"]
    # the valid samples' 1-day counts see the user's train burst, as the train samples' do
    view = held_out_view(ds)
    rows = view.events_in("valid").select("user_id", "item_id", "ts")
    now = point_in_time(view, rows, FeatureSettings()).frame["user_leaf_1d"]
    at_split = point_in_time(ds, ds.events_in("valid").select("user_id", "item_id", "ts"), FeatureSettings()).frame["user_leaf_1d"]
    assert (at_split > 0).mean() <= 0.1  # at the split instant, months after most bursts: nothing in the last day
    assert (now > 0).mean() > 0.5
