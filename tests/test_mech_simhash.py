"""SimHash, multi-index candidate pairs and union-find against brute force."""
import numpy as np
import pytest

from homefeed.mechanism.simhash import (SimHasher, band_layout, candidate_pairs, group_fingerprints, hamming, probe_masks,
                                        union_find)


def brute_pairs(fp, r):
    d = hamming(fp[:, None], fp[None, :])
    i, j = np.nonzero(np.triu(d <= r, 1))
    return np.stack([i, j], axis=1)


def test_hamming_by_hand():
    a = np.array([0b1011, 0], np.uint64)
    b = np.array([0b0001, np.uint64(2**64 - 1)], np.uint64)
    assert hamming(a, b).tolist() == [2, 64]


def test_simhash_distance_falls_as_vectors_get_more_similar():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((400, 32))
    hasher = SimHasher(bits=64, seed=1).fit(np.zeros((1, 32)))  # no centring: mean 0
    means = []
    for noise in (0.05, 0.3, 1.0, 3.0):
        other = base + noise * rng.standard_normal(base.shape)
        means.append(hamming(hasher.transform(base), hasher.transform(other)).mean())
    assert means == sorted(means) and means[0] < 4 and means[-1] > 20
    # the expected distance is bits * angle / pi
    u, v = base, base + 0.3 * rng.standard_normal(base.shape)
    angle = np.arccos((u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1))
    assert hamming(hasher.transform(u), hasher.transform(v)).mean() == pytest.approx(64 * angle.mean() / np.pi, rel=0.1)


def test_same_seed_same_fingerprints_and_save_load(tmp_path):
    v = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    a = SimHasher(bits=40, seed=3).fit(v)
    a.save(tmp_path / "h.npz")
    b = SimHasher.load(tmp_path / "h.npz")
    assert np.array_equal(a.transform(v), b.transform(v))
    assert a.transform(v).max() < 2**40
    assert not np.array_equal(a.transform(v), SimHasher(bits=40, seed=4).fit(v).transform(v))


def test_band_layout_covers_every_bit_once():
    shifts, masks = band_layout(64, 5)
    covered = sum(int(m) << int(s) for s, m in zip(shifts, masks))
    assert covered == 2**64 - 1 and shifts.tolist() == [0, 13, 26, 39, 52]


@pytest.mark.parametrize("r", [0, 1, 3, 6, 11])
def test_multi_index_pairs_equal_brute_force(r):
    rng = np.random.default_rng(r)
    fp = rng.integers(0, 2**63, 600, dtype=np.uint64)
    flips = rng.integers(0, 64, (300, r + 2)).astype(np.uint64)
    near = fp[:300].copy()
    for k in range(flips.shape[1]):  # flip up to r + 2 random bits (some pairs fall outside r)
        near ^= np.uint64(1) << flips[:, k]
    fp = np.concatenate([fp, near, fp[:20]])  # exact duplicates too
    assert np.array_equal(candidate_pairs(fp, max_distance=r), brute_pairs(fp, r))


@pytest.mark.parametrize("bands", [3, 4, 5])
def test_any_band_count_is_exact_with_probing(bands):
    rng = np.random.default_rng(bands)
    fp = rng.integers(0, 2**63, 400, dtype=np.uint64)
    near = fp.copy()
    for b in rng.integers(0, 64, (6, 400)):
        near ^= np.uint64(1) << b.astype(np.uint64)
    fp = np.concatenate([fp, near])
    assert np.array_equal(candidate_pairs(fp, max_distance=7, bands=bands), brute_pairs(fp, 7))


def test_probe_masks_by_hand():
    assert sorted(probe_masks(3, 1).tolist()) == [0, 1, 2, 4]
    assert len(probe_masks(16, 2)) == 1 + 16 + 120


def test_union_find_is_transitive_by_hand():
    labels = union_find(7, np.array([[0, 1], [1, 2], [4, 5], [5, 4]]))
    assert labels.tolist() == [0, 0, 0, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="outside 0..6"):
        union_find(7, np.array([[0, 7]]))


def test_group_fingerprints_chains_near_duplicates():
    fp = np.array([0b0000, 0b0001, 0b0011, 0b1111_0000_0000], np.uint64)
    assert group_fingerprints(fp, max_distance=1).tolist() == [0, 0, 0, 1]


def test_too_wide_bands_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="use at least 3 bands"):
        candidate_pairs(np.zeros(3, np.uint64), max_distance=3, bands=2)
