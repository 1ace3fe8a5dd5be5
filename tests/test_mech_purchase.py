"""Purchase filtering: blocking periods from repurchase intervals, block on buy, unblock after m clicks."""
import json

import numpy as np
import polars as pl

from homefeed.mechanism import purchase_filter as pf

DAY = pf.DAY


def periods(days=10.0):
    return pf.BlockingPeriods(pl.DataFrame({"standard_category": [3], "block_days": [days]}), default_days=2.0)


def test_buy_blocks_the_category_for_its_period_then_expires():
    st = pf.on_event(pf.PurchaseState(), standard=3, behavior="buy", ts=0, periods=periods())
    assert pf.allowed(st, np.array([3, 4]), now=DAY).tolist() == [False, True]
    assert pf.allowed(st, np.array([3]), now=10 * DAY).tolist() == [True]
    st = pf.on_event(st, standard=9, behavior="buy", ts=0, periods=periods())  # unknown category: default 2 days
    assert pf.blocked(st, now=DAY).tolist() == [3, 9] and pf.blocked(st, now=2 * DAY).tolist() == [3]


def test_m_clicks_during_the_block_lift_it():
    cfg = pf.PurchaseConfig(unblock_clicks=3, click_behaviors=["click", "pv"])
    st = pf.on_event(pf.PurchaseState(), standard=3, behavior="buy", ts=0, periods=periods(), config=cfg)
    for k, ts in enumerate([100, 200]):
        st = pf.on_event(st, standard=3, behavior="click", ts=ts, periods=periods(), config=cfg)
        assert pf.blocked(st, now=300).tolist() == [3], k
    st = pf.on_event(st, standard=4, behavior="click", ts=250, periods=periods(), config=cfg)  # other category: no effect
    st = pf.on_event(st, standard=3, behavior="cart", ts=260, periods=periods(), config=cfg)  # not a click behaviour
    assert st.blocks[3][1] == 2
    st = pf.on_event(st, standard=3, behavior="pv", ts=300, periods=periods(), config=cfg)
    assert pf.blocked(st, now=301).size == 0


def test_a_new_buy_resets_the_click_count_and_state_round_trips():
    st = pf.on_event(pf.PurchaseState(), standard=3, behavior="buy", ts=0, periods=periods())
    st = pf.on_event(st, standard=3, behavior="click", ts=5, periods=periods())
    st = pf.on_event(st, standard=3, behavior="buy", ts=DAY, periods=periods())
    assert st.blocks[3] == [11 * DAY, 0]
    assert pf.PurchaseState.from_dict(json.loads(json.dumps(st.to_dict()))) == st


def test_repurchase_intervals_merge_a_basket_and_censor_the_last_buy():
    buys = pl.DataFrame({"user_id": [1, 1, 1, 1, 2], "standard_category": [5, 5, 5, 6, 5],
                         "ts": [0, 3600, 10 * DAY, 0, 2 * DAY]})
    iv = pf.repurchase_intervals(buys, end_ts=20 * DAY).sort("standard_category", "days")
    assert iv.rows() == [(5, 10.0, True), (5, 10.0, False), (5, 18.0, False), (6, 20.0, False)]


def test_kaplan_meier_quantile_by_hand():
    # category 1: 10 users rebuy after 2, 4, ..., 20 days; each second buy is censored at end_ts (19, 17, ..., 1 days).
    # Risk sets 19, 17, 15, 13 at t = 2, 4, 6, 8: S = 18/19 * 16/17 * 14/15 * 12/13 = 0.768, first <= 0.8 at t=8.
    # category 2: 30 buyers, none rebuys within the 14-day log: a long-cycle category.
    # category 3: 3 buyers only: default.
    rows = []
    for u in range(10):
        rows += [(u, 1, 0), (u, 1, (u + 1) * 2 * DAY)]
    rows += [(100 + u, 2, 0) for u in range(30)] + [(200 + u, 3, 0) for u in range(3)]
    buys = pl.DataFrame(rows, schema=["user_id", "standard_category", "ts"], orient="row")
    cfg = pf.PurchaseConfig(min_buyers=10, quantile=0.2, long_days=90.0, default_days=7.0)
    t = pf.estimate_blocking_periods(buys, end_ts=21 * DAY, config=cfg).table.sort("standard_category")
    assert t["source"].to_list() == ["estimated", "long", "default"]
    assert t["block_days"].to_list() == [8.0, 90.0, 7.0]


def test_censoring_lowers_the_risk_set():
    # 4 buyers: rebuys at 1 and 3 days; two censored at 2 days. S(1)=3/4, S(3)=3/4*(1-1/1)=0 -> q=0.5 reached at 3.
    buys = pl.DataFrame({"user_id": [1, 1, 2, 2, 3, 4], "standard_category": [1] * 6,
                         "ts": [0, DAY, 0, 3 * DAY, 2 * DAY, 2 * DAY]})
    cfg = pf.PurchaseConfig(min_buyers=1, quantile=0.5, basket_gap_s=3600)
    t = pf.estimate_blocking_periods(buys, end_ts=4 * DAY, config=cfg).table
    assert t["block_days"].to_list() == [3.0]


def test_periods_save_and_load(tmp_path):
    p = pf.BlockingPeriods(pl.DataFrame({"standard_category": [1, 2], "block_days": [3.0, 40.0]}), default_days=9.0)
    back = pf.BlockingPeriods.load(p.save(tmp_path / "periods.parquet"))
    assert back.days_of(np.array([2, 1, 7])).tolist() == [40.0, 3.0, 9.0]
