"""The faiss wrapper: exact and approximate inner-product search, missing slots, save/load, i2i tables, online queries."""
from __future__ import annotations

import numpy as np
import pytest

from homefeed.recall.ann import AnnIndex, i2i_table, normalize, resolve_spec, search_candidates


@pytest.fixture(scope="module")
def vectors():
    return normalize(np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32))


def test_exact_search_matches_numpy_and_maps_ids(vectors):
    ids = np.arange(2000) + 100
    index = AnnIndex.build(vectors, ids=ids, spec="Flat")
    d, i = index.search(vectors[:5], 10)
    full = vectors[:5] @ vectors.T
    expected = np.argsort(-full, axis=1)[:, :10] + 100
    np.testing.assert_array_equal(i, expected)
    np.testing.assert_allclose(d, np.take_along_axis(full, expected - 100, 1), rtol=1e-5)
    assert i[:, 0].tolist() == [100, 101, 102, 103, 104]  # each vector finds itself first


def test_missing_slots_are_minus_one_and_minus_inf():
    x = np.array([[1, 0, 0], [0.5, 0.5, 0], [-1, 0, 1]], np.float32)
    d, i = AnnIndex.build(x, ids=np.array([7, 8, 9]), spec="Flat").search(x[:1], 5)
    assert i[0].tolist() == [7, 8, 9, -1, -1]
    assert d[0, :3].tolist() == [1.0, 0.5, -1.0] and np.all(np.isneginf(d[0, 3:]))
    d, i = AnnIndex.build(x, spec="Flat").search(x, 0)
    assert d.shape == (3, 0) and i.shape == (3, 0)


@pytest.mark.parametrize("spec, params", [("HNSW32", "efSearch=64"), ("IVF16,Flat", "nprobe=8")])
def test_approximate_indexes_find_most_exact_neighbours(vectors, spec, params):
    exact = AnnIndex.build(vectors, spec="Flat").search(vectors[:200], 20)[1]
    approx = AnnIndex.build(vectors, spec=spec, params=params).search(vectors[:200], 20)[1]
    recall = np.mean([np.intersect1d(a, b).size / 20 for a, b in zip(exact, approx)])
    assert recall > 0.8, recall


def test_auto_spec_and_bad_specs():
    assert resolve_spec("auto", 10) == "Flat" and resolve_spec("auto", 10**6) == "HNSW32"
    assert resolve_spec("IVF64,Flat", 10) == "IVF64,Flat"
    with pytest.raises(ValueError, match="faiss cannot build index 'Bogus7'"):
        AnnIndex.build(np.ones((4, 4), np.float32), spec="Bogus7")
    with pytest.raises(ValueError, match="dimensions"):
        AnnIndex.build(np.ones((4, 4), np.float32), spec="Flat").search(np.ones((1, 3)), 2)


@pytest.mark.parametrize("spec", ["Flat", "HNSW16"])
def test_save_load_round_trip(tmp_path, vectors, spec):
    index = AnnIndex.build(vectors, ids=np.arange(2000) * 3, spec=spec, params="efSearch=32" if "HNSW" in spec else "")
    before = index.search(vectors[:50], 10)
    back = AnnIndex.load(index.save(tmp_path / "idx"))
    after = back.search(vectors[:50], 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert back.spec == spec and len(back) == 2000
    with pytest.raises(FileNotFoundError, match="no ANN index"):
        AnnIndex.load(tmp_path / "nothing")


def test_i2i_table_from_vectors_by_hand():
    # items 1..4 in the plane: 1 and 2 close, 3 orthogonal to 1, 4 opposite to 1
    v = normalize(np.array([[1, 0], [1, 0.2], [0, 1], [-1, 0]], np.float32))
    ids = np.array([1, 2, 3, 4])
    table = i2i_table(AnnIndex.build(v, ids=ids, spec="Flat"), v, ids, 5, top_n=3)
    assert table.n_items == 5
    assert table.neighbors_of(1)[0].tolist() == [2]  # 3 scores 0 and 4 negative: dropped
    items, scores = table.neighbors_of(3)
    assert items.tolist() == [2] and scores[0] == pytest.approx(0.2 / np.sqrt(1.04), rel=1e-5)
    assert table.neighbors_of(0)[0].size == 0
    probs = i2i_table(AnnIndex.build(v, ids=ids, spec="Flat"), v, ids, 5, top_n=3, sigmoid=True)
    items, scores = probs.neighbors_of(1)  # every neighbour kept, scored 1 / (1 + exp(-s))
    assert items.tolist() == [2, 3, 4]
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([1 / np.sqrt(1.04), 0.0, -1.0]))), rtol=1e-6)


def test_search_candidates_best_query_wins_and_excludes():
    v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    index = AnnIndex.build(v, ids=np.array([1, 2, 3, 4]), spec="Flat")
    c = search_candidates(index, np.array([[1, 0], [0, 1]], np.float32), 3, channel="mind", exclude=np.array([1]))
    assert c.channel == "mind" and c.items.tolist() == [3, 2, 4]  # 3 (1.0), 2 (0.9), 4 (0.9): ties by code
    np.testing.assert_allclose(c.scores, [1.0, 0.9, 0.9])
    assert np.all(c.triggers == -1)
    weighted = search_candidates(index, np.array([[1, 0], [0, 1]], np.float32), 2, channel="mind",
                                 query_weights=np.array([1.0, 0.5]))
    assert weighted.items.tolist() == [1, 2]
    assert len(search_candidates(index, v[:1], 0, channel="mind")) == 0
