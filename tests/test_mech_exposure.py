"""Exposure templates: rotation by reported index, rebuild on new behaviour, JSON round trip."""
import json

import numpy as np
import polars as pl
import pytest

from homefeed.mechanism import exposure as ex
from homefeed.mechanism.scatter import ItemAttributes, Rule


def built(now=100):
    return ex.rebuilt(ex.ExposureState(), [np.array([1, 2]), np.array([3, 4]), np.array([5, 6])], now=now)


def test_nothing_built_means_rebuild():
    assert ex.current(ex.ExposureState(), now=0) is None


def test_rotation_follows_the_index_the_client_reports():
    st = built()
    assert ex.current(st, now=101) == (0, [1, 2])
    assert ex.current(st, now=102) == (0, [1, 2])  # not reported shown (an invalid view): same template again
    st = ex.on_shown(st, 0)
    assert ex.current(st, now=103) == (1, [3, 4])
    st = ex.on_shown(st, 2)  # the client skipped ahead
    assert ex.current(st, now=104) is None  # all shown: rebuild
    assert st.shown == [1, 2, 5, 6]


def test_new_behaviour_forces_a_rebuild_and_the_rebuild_clears_it():
    st = ex.on_behavior(built(now=100), ts=150)
    assert ex.current(st, now=160) is None
    st = ex.rebuilt(st, [np.array([7, 8])], now=160)
    assert ex.current(st, now=161) == (0, [7, 8])
    assert ex.current(ex.on_behavior(st, ts=120), now=161) == (0, [7, 8])  # behaviour older than the build


def test_templates_expire():
    st = built(now=0)
    cfg = ex.ExposureConfig(max_age_s=60)
    assert ex.current(st, now=60, config=cfg) is not None
    assert ex.current(st, now=61, config=cfg) is None


def test_state_round_trips_through_json():
    st = ex.on_behavior(ex.on_shown(built(), 1), ts=5)
    back = ex.ExposureState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        ex.ExposureState.from_dict({"colour": 1})


def test_bad_index_is_an_error():
    with pytest.raises(ValueError, match="out of range"):
        ex.on_shown(built(), 3)


def test_build_templates_makes_disjoint_scattered_pages():
    items = pl.DataFrame({"item_id": np.arange(1, 13), "brand": np.arange(12) % 3})
    attrs = ItemAttributes.from_items(items, dims=("item_id", "brand"))
    rules = [Rule(dim="item_id", hard=True), Rule(dim="brand", window=2, max_count=1)]
    cand = np.concatenate([np.arange(1, 13), np.arange(1, 13)])
    slots = np.repeat([0, 1], 12)  # every item is a candidate of both channels
    scores = np.concatenate([np.linspace(1, 0.1, 12), np.linspace(1, 0.1, 12)])
    pages = ex.build_templates(cand, scores, slots, attributes=attrs, layout=np.array([0, 1, 0, 1]), rules=rules,
                               n_templates=3, max_loss=None, exclude=np.isin(cand, [1]))
    shown = np.concatenate([p.items for p in pages])
    assert len(shown) == 12 and len(set(shown[shown > 0].tolist())) == 11 and 1 not in shown and shown[-1] == -1
    assert pages[0].items.tolist() == [2, 3, 4, 5]
