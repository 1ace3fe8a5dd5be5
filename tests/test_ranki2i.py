"""Ranki2i: CTR smoothing (pair -> item -> global) and the re-scored table, worked out by hand."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR, EXPOSURES
from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.recall.i2i import I2ITable
from homefeed.recall.itemcf import ItemCF
from homefeed.recall.ranki2i import RankI2I, RankI2ISettings, rank_table, smoothed_ctr
from homefeed.recall.swing import Swing
from recall_contract import RecallerContract

N_ITEMS = 10
PRIORS = RankI2ISettings(item_prior=4.0, pair_prior=2.0)


def exposures(ts: int = 0) -> pl.DataFrame:
    # (trigger, item, clicked, channel): trigger 3 -> 5 clicked twice; 4 -> 5 twice, no click; 6 shown 6 times,
    # 4 of them with trigger 3, never clicked.  10 exposures, 2 clicks.
    rows = ([(3, 5, 1, "itemcf")] * 2 + [(4, 5, 0, "swing")] * 2 + [(3, 6, 0, "itemcf")] * 4
            + [(None, 6, 0, "popular")] * 2)
    return EXPOSURES.conform(pl.DataFrame({
        "request_id": list(range(len(rows))), "user_id": [1] * len(rows), "item_id": [r[1] for r in rows],
        "ts": [ts] * len(rows), "position": [0] * len(rows), "page": [0] * len(rows), "channel": [r[3] for r in rows],
        "trigger_item": [r[0] for r in rows], "clicked": [r[2] for r in rows]}))


def test_smoothing_backs_off_from_pair_to_item_to_global():
    ctr = smoothed_ctr(exposures(), N_ITEMS, settings=PRIORS)
    assert ctr.global_ctr == pytest.approx(3 / 12)  # (2 + 1) / (10 + 2)
    assert ctr.item_ctr[[5, 6, 7]] == pytest.approx([(2 + 1) / 8, (0 + 1) / 10, 0.25])  # m_item = 4, p0 = 0.25
    got = ctr.lookup(np.array([3, 4, 3, 3, 9]), np.array([5, 5, 6, 7, 5]))
    assert got == pytest.approx([(2 + 2 * 0.375) / 4, (0 + 2 * 0.375) / 4, (0 + 2 * 0.1) / 6, 0.25, 0.375])


def test_channel_filter_limits_the_pairs_learnt():
    ctr = smoothed_ctr(exposures(), N_ITEMS, settings=PRIORS.model_copy(update={"channels": ["swing"]}))
    # (3, 5) was only shown by itemcf: it falls back to item 5's CTR
    assert ctr.lookup(np.array([3, 4]), np.array([5, 5])) == pytest.approx([0.375, 0.1875])


def test_no_exposures_leaves_the_order_alone():
    ctr = smoothed_ctr(None, N_ITEMS)
    assert ctr.lookup(np.array([1]), np.array([2])) == pytest.approx([0.5])
    with pytest.raises(ValueError, match="lack column"):
        smoothed_ctr(pl.DataFrame({"item_id": [1]}), N_ITEMS)


def base() -> I2ITable:
    # row 3: 6 (1.0), 5 (0.5), 7 (0.2);  row 4: 5 (1.0)
    return I2ITable.from_rows([3, 3, 3, 4], [6, 5, 7, 5], [1.0, 0.5, 0.2, 1.0], N_ITEMS)


def test_rank_table_multiplies_and_re_sorts():
    t = rank_table(base(), smoothed_ctr(exposures(), N_ITEMS, settings=PRIORS), top_n=2)
    items, scores = t.neighbors_of(3)
    # 6: 1.0 * 0.2 / 6, 5: 0.5 * 0.6875, 7: 0.2 * 0.25 -> 5, 7 (6 cut by top_n = 2)
    assert items.tolist() == [5, 7] and scores.tolist() == pytest.approx([0.34375, 0.05])
    assert t.neighbors_of(4)[1].tolist() == pytest.approx([0.1875])


def dataset(with_exposures: bool = True) -> Dataset:
    items = pl.DataFrame({"item_id": list(range(1, N_ITEMS)), "leaf_category": [1] * 9, "brand": [1] * 9,
                          "shop": [1] * 9, "price": [1.0] * 9}, schema_overrides={"item_id": pl.Int32})
    log = [(1, 3), (1, 5), (1, 6), (2, 3), (2, 6), (3, 3), (3, 5), (3, 7)]
    events = pl.DataFrame({"user_id": [u for u, _ in log], "item_id": [i for _, i in log], "ts": [0] * len(log),
                           "behavior": ["pv"] * len(log)}, schema_overrides={"behavior": BEHAVIOR})
    late = exposures(ts=500).with_columns(clicked=pl.lit(1, pl.Int8))  # after train_end: ignored
    return Dataset(events=events, items=items, users=pl.DataFrame({"user_id": [1, 2, 3]}), split=TimeSplit(100, 200),
                   exposures=pl.concat([exposures(), late]) if with_exposures else None)


def test_channel_rescores_a_given_base_table_from_train_exposures(tmp_path):
    rec = RankI2I(settings=PRIORS, base_table=base()).fit(dataset())
    assert rec.name == "ranki2i" and rec.ctr_.global_ctr == pytest.approx(0.25)
    assert rec.table_.neighbors_of(3)[0].tolist() == [5, 7, 6]
    state = UserState(user_id=1, now=100, items=np.array([3], np.int32),
                      behaviors=np.array([BEHAVIOR_CODE["pv"]], np.int8), ts=np.array([100]))
    out = rec.recall(state, 2)
    assert out.items.tolist() == [5, 7] and out.triggers.tolist() == [3, 3] and out.channel == "ranki2i"
    rec.save(tmp_path / "r")
    assert np.array_equal(RankI2I.load(tmp_path / "r").recall(state, 2).items, out.items)


def test_channel_fits_its_own_base_and_copes_without_exposures():
    plain = RankI2I().fit(dataset(with_exposures=False))
    itemcf = ItemCF().fit(dataset(with_exposures=False)).table_
    assert np.array_equal(plain.table_.neighbors, itemcf.neighbors) and plain.table_.nnz > 0
    assert np.allclose(plain.table_.scores, itemcf.scores * 0.5)
    swing = RankI2I(settings=RankI2ISettings(base="swing")).fit(dataset())
    base = Swing().fit(dataset()).table_
    pairs = lambda t: set(zip(np.repeat(np.arange(t.n_items), np.diff(t.indptr)).tolist(), t.neighbors.tolist()))
    assert swing.table_.nnz == base.nnz > 0 and pairs(swing.table_) == pairs(base)  # the same entries, re-scored
    with pytest.raises(ValueError, match="base_table has 3 rows"):
        RankI2I(base_table=I2ITable.from_rows([], [], [], 3)).fit(dataset())


class TestRankI2IOnSwingContract(RecallerContract):
    def make(self):
        return RankI2I(settings=RankI2ISettings(base="swing", item_prior=10.0, pair_prior=5.0, top_n=40))

    def make_keeping_bought(self):
        return RankI2I(settings=RankI2ISettings(triggers={"keep_bought": True}))
