"""The `deepwalk` and `eges` recall channels: the recall contract, save/load, cold items, evaluation on the tiny shop."""
from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from homefeed.data.dataset import Dataset
from homefeed.data.user_state import states_at
from homefeed.recall.graph.channel import EGES, DeepWalk, DeepWalkSettings, EGESSettings
from homefeed.recall.evaluate import relevant_items
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
    assert not np.any(dw.vectors_[cold]) and not np.any(eges.context_[cold])
    listed = lambda table: np.isin(table.neighbors, np.flatnonzero(cold)).sum()  # noqa: E731
    rows = lambda table: np.diff(table.indptr)[np.flatnonzero(cold)]  # noqa: E731
    # context similarity: cold items are triggers (rows of their own) but never candidates (no z)
    assert np.all(rows(eges.table_) > 0) and listed(eges.table_) == 0
    # cosine similarity: they are candidates too, through their side-information vectors
    assert listed(eges.with_similarity("cosine").table_) > 0 and np.all(rows(eges.with_similarity("cosine").table_) > 0)
    assert listed(dw.with_similarity("cosine").table_) == 0 and np.all(rows(dw.table_) == 0)


def test_context_similarity_ranks_by_h_dot_z(fitted):
    rec = fitted["eges"]
    item = int(np.flatnonzero(rec.warm_ & (rec.norms_ > 0))[5])
    scores = rec.centre_[item] @ rec.context_.T
    scores[[0, item]] = -np.inf
    scores[~rec.warm_] = -np.inf
    expected = np.argsort(-scores, kind="stable")[:10]
    got, got_scores = rec.table_.neighbors_of(item)
    np.testing.assert_array_equal(got[:10], expected)
    np.testing.assert_allclose(got_scores[:10], 1 / (1 + np.exp(-scores[expected])), rtol=1e-4)
    twin = rec.with_similarity("cosine")
    assert twin.settings.similarity == "cosine" and rec.settings.similarity == "context"
    cos = rec.vectors_ @ rec.vectors_[item]
    cos[[0, item]] = -np.inf
    assert twin.table_.neighbors_of(item)[0][0] == int(np.argmax(cos))


def test_save_load_round_trip(tmp_path, tiny, fitted):
    rec = fitted["eges"]
    rec.save(tmp_path / "eges")
    back = EGES.load(tmp_path / "eges")
    for name in ("vectors_", "norms_", "context_", "warm_", "centre_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rec, name))
    np.testing.assert_array_equal(back.table_.neighbors, rec.table_.neighbors)
    assert back.settings == rec.settings
    for s in states_at(tiny.events, tiny.users, tiny.split.valid_end)[:20]:
        np.testing.assert_array_equal(back.recall(s, 20).items, rec.recall(s, 20).items)
    index = back.index()  # the ANN index rebuilds from the saved vectors
    assert len(index) == int((back.norms_ > 0).sum()) and len(back.context_index()) == int(back.warm_[1:].sum())
    with pytest.raises(FileNotFoundError, match="vectors.npz"):
        (tmp_path / "eges" / "vectors.npz").unlink()
        EGES.load(tmp_path / "eges")


def test_evaluate_graph_on_the_tiny_shop(tiny, fitted):
    s = EGESSettings(**{**FAST, "walks": {"walks_per_node": 5, "length": 20}})
    result = evaluate_graph(tiny, settings=s, methods=("deepwalk", "eges"), baselines={"itemcf_like": fitted["deepwalk"]},
                            fitted=fitted, k=50)
    auc = result["auc"]
    assert set(auc) == {"deepwalk", "eges"}
    # measured over holdout seeds 0-2: DeepWalk 0.95-0.96, EGES 0.946-0.956 (at most 0.007 below DeepWalk)
    assert all(0.9 < v <= 1.0 for v in auc.values()), auc
    assert auc["eges"] >= auc["deepwalk"] - 0.02, auc
    hr = result["cold_start_hitrate@50"]
    assert set(hr) == {"deepwalk", "eges", "eges_cosine", "itemcf_like"}
    assert hr["deepwalk"] == hr["eges"] == hr["itemcf_like"] == 0.0  # no context vector, no recall of cold items
    assert result["setup"]["cold_items"] > 0


def made_cold(ds: Dataset, n: int, *, seed: int = 0) -> Dataset:
    """`ds` with every event before the test days removed for n random items acted on in the test days."""
    test_items = np.unique(ds.events_in("test")["item_id"].to_numpy())
    pick = np.random.default_rng(seed).choice(test_items, n, replace=False)
    before_test = pl.col("ts") < ds.split.valid_end
    return dataclasses.replace(ds, events=ds.events.filter(~(pl.col("item_id").is_in(pick.tolist()) & before_test)))


def test_eges_recalls_cold_items_better_than_chance(tiny):
    """The tiny shop has 26 cold items and 6 users acting on them in test: too few to tell. So 150 items acted on
    in test lose every earlier event; EGES (cosine twin) knows them only by leaf, brand, shop and price band.
    Each user's hit is compared with the chance that the same number of cold items, drawn at random, hits.
    Measured: 94 hits for 433 users against 24.4 by chance (item seeds 1, 2: 78 against 20.5, 69 against 16.5);
    with the side codes shuffled across items, 26 hits against 23.4."""
    ds = made_cold(tiny, 150)
    cold = cold_items(ds)
    cold[0] = False
    rec = fast(EGES).fit(ds).with_similarity("cosine")
    users, relevant = relevant_items(ds, "test")
    keep = [i for i, r in enumerate(relevant) if cold[r].any()]
    n_cold, hits, chance = int(cold.sum()), 0, 0.0
    for state, i in zip(states_at(ds.events, ds.users, ds.split.valid_end, user_ids=users[keep]), keep):
        wanted = np.unique(relevant[i][cold[relevant[i]]])
        got = rec.recall(state, 50).items
        picked = int(cold[got].sum())
        hits += bool(np.isin(wanted, got).any())
        chance += 1 - np.prod([(n_cold - wanted.size - j) / (n_cold - j) for j in range(picked)])
    assert len(keep) > 200 and hits > 2.5 * chance, (len(keep), hits, chance)
