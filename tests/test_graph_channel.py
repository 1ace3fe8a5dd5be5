"""The `deepwalk` and `eges` recall channels: the recall contract, save/load, cold items, evaluation on the tiny shop."""
from __future__ import annotations

import numpy as np
import pytest

from homefeed.data.dataset import Dataset
from homefeed.data.user_state import states_at
from homefeed.recall.graph.channel import EGES, DeepWalk, DeepWalkSettings, EGESSettings
from homefeed.recall.graph_evaluate import cold_items, evaluate_graph
from recall_contract import RecallerContract

FAST = {"walks": {"walks_per_node": 3, "length": 10}, "train": {"dim": 16, "epochs": 2, "batch_size": 1024, "lr": 0.05},
        "top_n": 30}


def fast(cls, **changes):
    settings = cls.Settings(**{**FAST, **changes})
    return cls(settings=settings)


class TestDeepWalkContract(RecallerContract):
    def make(self):
        return fast(DeepWalk)

    def make_keeping_bought(self):
        return fast(DeepWalk, triggers={"keep_bought": True})


class TestEGESContract(RecallerContract):
    def make(self):
        return fast(EGES)

    def make_keeping_bought(self):
        return fast(EGES, triggers={"keep_bought": True})


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="walks_per_nod"):
        DeepWalkSettings(walks={"walks_per_nod": 3})
    with pytest.raises(ValueError, match="mode"):
        EGESSettings(mode="deepwalk")
    assert EGES.name == "eges" and DeepWalk.name == "deepwalk"


@pytest.fixture(scope="module")
def tiny(tiny_dataset_dir):
    return Dataset.load(tiny_dataset_dir)


@pytest.fixture(scope="module")
def fitted(tiny):
    return {"deepwalk": fast(DeepWalk).fit(tiny), "eges": fast(EGES).fit(tiny)}


def test_eges_gives_cold_items_vectors_and_neighbours_deepwalk_cannot(tiny, fitted):
    cold = cold_items(tiny)
    cold[0] = False
    assert cold.any(), "the tiny shop should have items without training events"
    eges, dw = fitted["eges"], fitted["deepwalk"]
    assert np.all(np.linalg.norm(eges.vectors_[cold], axis=1) > 0.99)
    assert not np.any(dw.vectors_[cold])
    listed = lambda table: np.isin(table.neighbors, np.flatnonzero(cold)).sum()  # noqa: E731
    assert listed(eges.table_) > 0 and listed(dw.table_) == 0
    assert np.all(np.diff(eges.table_.indptr)[np.flatnonzero(cold)] > 0)  # cold items have rows of their own


def test_save_load_round_trip(tmp_path, tiny, fitted):
    rec = fitted["eges"]
    rec.save(tmp_path / "eges")
    back = EGES.load(tmp_path / "eges")
    np.testing.assert_array_equal(back.vectors_, rec.vectors_)
    np.testing.assert_array_equal(back.warm_, rec.warm_)
    np.testing.assert_array_equal(back.table_.neighbors, rec.table_.neighbors)
    assert back.settings == rec.settings
    for s in states_at(tiny.events, tiny.users, tiny.split.valid_end)[:20]:
        np.testing.assert_array_equal(back.recall(s, 20).items, rec.recall(s, 20).items)
    index = back.index()  # the ANN index rebuilds from the saved vectors
    assert len(index) == int(np.any(back.vectors_ != 0, axis=1).sum())
    with pytest.raises(FileNotFoundError, match="vectors.npz"):
        (tmp_path / "eges" / "vectors.npz").unlink()
        EGES.load(tmp_path / "eges")


def test_evaluate_graph_on_the_tiny_shop(tiny, fitted):
    s = EGESSettings(**{**FAST, "walks": {"walks_per_node": 2, "length": 10}})
    result = evaluate_graph(tiny, settings=s, methods=("deepwalk", "eges"), baselines={"itemcf_like": fitted["deepwalk"]},
                            fitted=fitted, k=50)
    assert set(result["auc"]) == {"deepwalk", "eges"}
    assert all(0.5 < v <= 1.0 for v in result["auc"].values()), result["auc"]
    hr = result["cold_start_hitrate@50"]
    assert set(hr) == {"deepwalk", "eges", "itemcf_like"}
    assert hr["deepwalk"] == 0.0 and hr["itemcf_like"] == 0.0  # no vector, no recall of cold items
    assert result["setup"]["cold_items"] > 0
