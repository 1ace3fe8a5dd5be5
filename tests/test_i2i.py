"""The i2i table artefact and trigger expansion, on hand-made tables and users."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.recall.base import NO_TRIGGER
from homefeed.recall.i2i import I2ITable, TriggerSettings, expand_triggers, trigger_weights

PV, CART, BUY = BEHAVIOR_CODE["pv"], BEHAVIOR_CODE["cart"], BEHAVIOR_CODE["buy"]


def table() -> I2ITable:
    # 1 -> [2 (0.8), 3 (0.4)];  2 -> [1 (0.9)];  4 -> [3 (0.5), 5 (0.2)]
    return I2ITable.from_rows([1, 1, 2, 4, 4], [2, 3, 1, 3, 5], [0.8, 0.4, 0.9, 0.5, 0.2], n_items=6)


def state(items, behaviors, ts, now=1000) -> UserState:
    return UserState(user_id=1, now=now, items=np.array(items, np.int32), behaviors=np.array(behaviors, np.int8),
                     ts=np.array(ts, np.int64))


FLAT = TriggerSettings(half_life_s=0, half_life_events=0, behavior_weights={"pv": 1.0, "cart": 3.0, "buy": 2.0})


# --- the table ---------------------------------------------------------------------------------

def test_from_rows_sorts_rows_breaks_ties_by_code_truncates_and_drops_non_positive():
    t = I2ITable.from_rows([2, 0, 2, 2, 2, 0], [5, 1, 3, 4, 1, 2], [0.5, 1.0, 0.9, 0.5, 0.0, np.nan],
                           n_items=3, top_n=2)
    assert t.indptr.tolist() == [0, 1, 1, 3]
    assert t.neighbors_of(0)[0].tolist() == [1]
    items, scores = t.neighbors_of(2)
    assert items.tolist() == [3, 4] and scores.tolist() == pytest.approx([0.9, 0.5])  # 4 beats 5 on the tie
    assert t.neighbors.dtype == np.int32 and t.scores.dtype == np.float32 and t.indptr.dtype == np.int64
    assert t.neighbors_of(7)[0].size == 0 and t.neighbors_of(-1)[0].size == 0


def test_from_sparse_drops_the_diagonal_and_keeps_top_n():
    m = sp.csr_matrix(np.array([[5.0, 1.0, 3.0], [2.0, 9.0, 0.0], [0.0, 0.0, 1.0]]))
    t = I2ITable.from_sparse(m, top_n=1)
    assert [t.neighbors_of(i)[0].tolist() for i in range(3)] == [[2], [0], []]
    kept = I2ITable.from_sparse(m, top_n=3, drop_self=False)
    assert kept.neighbors_of(0)[0].tolist() == [0, 2, 1]
    assert np.allclose(kept.to_sparse().toarray(), m.toarray())
    with pytest.raises(ValueError, match="square"):
        I2ITable.from_sparse(sp.csr_matrix(np.ones((2, 3))), top_n=1)


def test_save_load_round_trip(tmp_path):
    t = table()
    path = t.save(tmp_path / "deep" / "t.i2i")
    back = I2ITable.load(path)
    assert path.name == "t.i2i"
    for name in ("indptr", "neighbors", "scores"):
        a, b = getattr(back, name), getattr(t, name)
        assert np.array_equal(a, b) and a.dtype == b.dtype
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not an i2i table"):
        I2ITable.load(tmp_path / "other.npz")


def test_inconsistent_arrays_are_rejected():
    with pytest.raises(ValueError, match="indptr ends at 3"):
        I2ITable(np.array([0, 3]), np.array([1, 2]), np.array([1.0, 1.0]))


def test_discretize_into_equal_frequency_levels_keeps_row_order():
    t = I2ITable.from_rows([0, 0, 0, 1, 1], [1, 2, 3, 0, 2], [0.9, 0.5, 0.2, 0.5, 0.1], n_items=4)
    # all scores ascending 0.1 0.2 0.5 0.5 0.9 -> ranks 0 1 2 2 4; level = 1 + (L * rank) // 5
    assert t.discretize(2).scores.tolist() == [2, 1, 1, 1, 1]
    assert t.discretize(5).scores.tolist() == [5, 3, 2, 3, 1]
    assert t.discretize(5).neighbors.tolist() == t.neighbors.tolist()
    with pytest.raises(ValueError, match="levels"):
        t.discretize(0)


# --- trigger expansion -------------------------------------------------------------------------

def test_trigger_weights_sum_behaviour_weights_with_recency_decay():
    s = TriggerSettings(half_life_s=1000, half_life_events=0, behavior_weights={"pv": 1.0, "cart": 3.0})
    items, w = trigger_weights(state([4, 1, 4, 2], [PV, PV, CART, BUY], [0, 0, 1000, 1000]), s)
    # 4: pv aged 1000 s (0.5) + cart now (3); 1: pv aged 1000 (0.5); 2: buy has no weight here
    assert items.tolist() == [1, 4] and w.tolist() == pytest.approx([0.5, 3.5])
    by_order = s.model_copy(update={"half_life_events": 2.0})  # each weight also halves every 2 later events
    items, w = trigger_weights(state([4, 1, 4, 2], [PV, PV, CART, BUY], [0, 0, 1000, 1000]), by_order)
    assert items.tolist() == [1, 4] and w.tolist() == pytest.approx([0.5 * 2 ** -1, 0.5 * 2 ** -1.5 + 3 * 2 ** -0.5])


def test_the_event_order_alone_ranks_triggers_of_a_log_without_a_clock():
    same_time = state([1, 4], [PV, PV], [1000, 1000])
    items, w = trigger_weights(same_time, TriggerSettings())  # default: half-life of 10 events
    assert items.tolist() == [1, 4] and w.tolist() == pytest.approx([2 ** -0.1, 1.0])


def test_expand_sums_over_triggers_and_keeps_the_best_trigger():
    # triggers 1 (w 1) and 4 (pv + cart = 4): 2 <- 0.8 (1); 3 <- 0.4 (1) + 2.0 (4); 5 <- 0.8 (4)
    out = expand_triggers(table(), state([1, 4, 4], [PV, PV, CART], [1000] * 3), 10, settings=FLAT, channel="itemcf")
    assert out.items.tolist() == [3, 2, 5]  # 2 and 5 tie at 0.8: lower code first
    assert out.scores.tolist() == pytest.approx([2.4, 0.8, 0.8])
    assert out.triggers.tolist() == [4, 1, 4] and out.channel == "itemcf"
    top1 = expand_triggers(table(), state([1, 4, 4], [PV, PV, CART], [1000] * 3), 1, settings=FLAT)
    assert top1.items.tolist() == [3]


def test_expand_options_per_trigger_n_triggers_and_recency():
    s = state([1, 4, 4], [PV, PV, CART], [1000] * 3)
    out = expand_triggers(table(), s, 10, settings=FLAT.model_copy(update={"per_trigger": 1}))
    assert out.items.tolist() == [3, 2] and out.scores.tolist() == pytest.approx([2.0, 0.8])
    out = expand_triggers(table(), s, 10, settings=FLAT.model_copy(update={"n_triggers": 1}))  # only the cart on 4
    assert out.items.tolist() == [3, 5] and out.scores.tolist() == pytest.approx([1.5, 0.6])
    decayed = TriggerSettings(half_life_s=500, half_life_events=0, behavior_weights={"pv": 1.0})
    out = expand_triggers(table(), state([1, 4], [PV, PV], [0, 1000]), 10, settings=decayed)
    # trigger 1 aged 1000 s = 2 half-lives -> 0.25; trigger 4 -> 1
    assert dict(zip(out.items.tolist(), out.scores.tolist())) == pytest.approx({3: 0.6, 2: 0.2, 5: 0.2})


def test_bought_items_are_dropped_unless_kept_and_triggers_can_be_excluded():
    s = state([1, 4, 5], [PV, CART, BUY], [1000] * 3)
    assert 5 not in expand_triggers(table(), s, 10, settings=FLAT).items.tolist()
    assert 5 in expand_triggers(table(), s, 10, settings=FLAT.model_copy(update={"keep_bought": True})).items.tolist()
    both = state([1, 2], [PV, PV], [1000, 1000])  # 1 -> 2, 3 and 2 -> 1
    assert sorted(expand_triggers(table(), both, 10, settings=FLAT).items.tolist()) == [1, 2, 3]
    excl = expand_triggers(table(), both, 10, settings=FLAT.model_copy(update={"exclude_triggers": True}))
    assert excl.items.tolist() == [3]


def test_empty_history_and_unknown_items_give_empty_candidates():
    assert len(expand_triggers(table(), state([], [], []), 10, settings=FLAT)) == 0
    out = expand_triggers(table(), state([99, 0], [PV, PV], [1000, 1000]), 10, settings=FLAT)
    assert len(out) == 0 and out.items.dtype == np.int32 and NO_TRIGGER == -1


def test_unknown_behaviour_names_list_the_valid_ones():
    with pytest.raises(ValidationError, match="valid behaviours: pv, click, fav, cart, buy"):
        TriggerSettings(behavior_weights={"view": 1.0})
    with pytest.raises(ValidationError, match="extra"):
        TriggerSettings(n_trigger=3)
