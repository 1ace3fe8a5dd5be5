"""SimHash fingerprints, multi-index candidate pairs, and union-find grouping of near-duplicates.

SimHash (Charikar 2002, "Similarity estimation techniques from rounding algorithms") keeps one bit
per random hyperplane: the side of the plane a vector falls on. Two vectors at angle theta disagree
on each bit with probability theta / pi, so the Hamming distance of two 64-bit fingerprints
estimates their angle, and near-identical images get fingerprints a few bits apart.

Finding every pair within Hamming distance r without comparing all n^2 pairs uses the pigeonhole
principle (multi-index hashing; Manku, Jain & Das Sarma 2007, "Detecting near-duplicates for web
crawling"; Norouzi, Punjani & Fleet 2012): cut the fingerprint into m bands; two fingerprints that
differ in at most r bits differ in at most floor(r / m) bits in at least one band. So index each
band's values and, for every item, look up the values within that small radius of its own (for
r < m: the exact value only), keeping the pairs whose full distance is <= r. Connected pairs are
merged into groups with union-find (transitive: a ~ b and b ~ c put a, b, c in one group).

    >>> hasher = SimHasher(bits=64, seed=0).fit(vectors)        # doctest: +SKIP
    >>> fp = hasher.transform(vectors)                          # (n,) uint64
    >>> labels = group_fingerprints(fp, max_distance=3)         # (n,) int64 group per item
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numba
import numpy as np

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


class SimHasher:
    """Seeded random hyperplanes: vectors (n, d) -> fingerprints (n,) uint64 of `bits` bits.

    Vectors are centred on the mean of the fitted set first: features after a ReLU are all
    positive, and planes through the origin would otherwise cut them all on the same side.

    Attributes:
        planes_: (d, bits) float32 hyperplane normals (standard normal, from `seed`).
        mean_: (d,) float32 centre subtracted before hashing.
    """

    def __init__(self, *, bits: int = 64, seed: int = 0):
        if not 1 <= bits <= 64:
            raise ValueError(f"bits must be in 1..64 (one uint64 per fingerprint), got {bits}")
        self.bits = bits
        self.seed = seed

    def fit(self, vectors: np.ndarray) -> "SimHasher":
        vectors = np.asarray(vectors, np.float32)
        rng = np.random.default_rng(self.seed)
        self.planes_ = rng.standard_normal((vectors.shape[1], self.bits)).astype(np.float32)
        self.mean_ = vectors.mean(axis=0)
        return self

    def transform(self, vectors: np.ndarray, *, batch: int = 65536) -> np.ndarray:
        """(n, d) float -> (n,) uint64; bit b is set when the centred vector lies above plane b."""
        vectors = np.asarray(vectors, np.float32)
        weights = (np.uint64(1) << np.arange(self.bits, dtype=np.uint64))
        out = np.empty(len(vectors), np.uint64)
        for lo in range(0, len(vectors), batch):
            signs = ((vectors[lo:lo + batch] - self.mean_) @ self.planes_) > 0  # (b, bits)
            out[lo:lo + batch] = (signs.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
        return out

    def save(self, path: str | Path) -> None:
        np.savez(path, planes=self.planes_, mean=self.mean_, bits=self.bits, seed=self.seed)

    @classmethod
    def load(cls, path: str | Path) -> "SimHasher":
        with np.load(path, allow_pickle=False) as z:
            hasher = cls(bits=int(z["bits"]), seed=int(z["seed"]))
            hasher.planes_, hasher.mean_ = z["planes"], z["mean"]
        return hasher


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 fingerprints (broadcasting), as int64."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def band_layout(bits: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Shifts and masks cutting `bits` into `bands` near-equal contiguous bands (widths differ by <= 1)."""
    if not 1 <= bands <= bits:
        raise ValueError(f"bands must be in 1..{bits}, got {bands}")
    widths = np.full(bands, bits // bands)
    widths[: bits % bands] += 1
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.uint64)
    masks = ((np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)).astype(np.uint64)
    masks[widths == 64] = np.uint64(0xFFFFFFFFFFFFFFFF)
    return shifts, masks


@numba.njit(cache=True)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


def probe_masks(width: int, radius: int) -> np.ndarray:
    """Every XOR mask of at most `radius` set bits within `width` bits (uint64), the empty mask first."""
    masks = [0]
    for k in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(width), k)]
    return np.array(masks, np.uint64)


@numba.njit(cache=True)
def _probe_pairs(fp, keys, order, starts, masks, n_masks, band_radius, max_distance, out):
    """Pairs (i < j) within `max_distance` whose keys in some band differ by <= band_radius bits.

    keys (B, n): band values; order (B, n): items sorted by band value; starts (B, 2^w + 1): where
    each band value's items begin in `order` (direct addressing); masks (B, M): probe XOR masks, the
    first n_masks[b] of row b valid. Each pair is reported once, in the first band that finds it.
    Writes while `out` has room; returns the total count (the caller retries with more room).
    """
    n_bands, n = keys.shape
    count = 0
    cap = out.shape[0]
    for b in range(n_bands):
        for i in range(n):
            key = keys[b, i]
            for m in range(n_masks[b]):
                probe = key ^ masks[b, m]
                for x in range(starts[b, probe], starts[b, probe + 1]):
                    j = order[b, x]
                    if j <= i or _popcount(fp[i] ^ fp[j]) > max_distance:
                        continue
                    earlier = False
                    for e in range(b):
                        if _popcount(keys[e, i] ^ keys[e, j]) <= band_radius:
                            earlier = True
                            break
                    if earlier:
                        continue
                    if count < cap:
                        out[count, 0] = i
                        out[count, 1] = j
                    count += 1
    return count


def candidate_pairs(fingerprints: np.ndarray, *, max_distance: int, bits: int = 64, bands: int | None = None) -> np.ndarray:
    """Every pair of fingerprints within Hamming distance `max_distance`, without an all-pairs scan.

    Multi-index hashing (Norouzi, Punjani & Fleet 2012): cut the bits into `bands` (default: 16-bit
    bands, 4 for 64 bits); two fingerprints within r bits differ by at most floor(r / bands) bits in
    some band (pigeonhole), so probing each item's band values within that radius finds every pair,
    exactly. With r < bands the probe is the exact band value (Manku et al. 2007).
    Returns (p, 2) int64 index pairs, i < j, each once, sorted. Cost ~ n * probes * bucket size.
    """
    fp = np.ascontiguousarray(fingerprints, dtype=np.uint64)
    bands = max(1, -(-bits // 16)) if bands is None else bands
    shifts, band_masks = band_layout(bits, bands)
    widths = np.array([int(m).bit_length() for m in band_masks])
    if widths.max() > 22:
        raise ValueError(f"{bands} bands of {bits} bits are {widths.max()} bits wide (direct-address tables of 2^width); "
                         f"use at least {-(-bits // 22)} bands")
    radius = max_distance // bands
    keys = (fp[None, :] >> shifts[:, None]) & band_masks[:, None]  # (B, n)
    order = np.argsort(keys, axis=1, kind="stable").astype(np.int64)
    starts = np.stack([np.searchsorted(np.sort(k), np.arange(2 ** widths.max() + 1)) for k in keys]).astype(np.int64)
    probes = [probe_masks(int(w), radius) for w in widths]
    masks = np.zeros((bands, max(len(p) for p in probes)), np.uint64)
    for b, p in enumerate(probes):
        masks[b, :len(p)] = p
    n_masks = np.array([len(p) for p in probes], np.int64)
    out = np.empty((max(4 * len(fp), 1024), 2), np.int64)
    count = _probe_pairs(fp, keys, order, starts, masks, n_masks, radius, max_distance, out)
    if count > len(out):
        out = np.empty((count, 2), np.int64)
        _probe_pairs(fp, keys, order, starts, masks, n_masks, radius, max_distance, out)
    pairs = out[:count]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


@numba.njit(cache=True)
def _union_find(n, pairs):
    parent = np.arange(n)
    for p in range(pairs.shape[0]):
        a, b = pairs[p, 0], pairs[p, 1]
        while parent[a] != a:  # find with path halving
            parent[a] = parent[parent[a]]
            a = parent[a]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a != b:
            if a < b:
                parent[b] = a
            else:
                parent[a] = b
    for i in range(n):  # every node points at its root (roots are the smallest member)
        parent[i] = parent[parent[i]]
    return parent


def union_find(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by `pairs` (p, 2): (n,) int64 labels 0..g-1 in first-seen order."""
    pairs = np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs hold node ids outside 0..{n - 1}")
    roots = _union_find(n, pairs)
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64)


def group_fingerprints(fingerprints: np.ndarray, *, max_distance: int, bits: int = 64, bands: int | None = None) -> np.ndarray:
    """Near-duplicate groups: (n,) int64 labels; items within `max_distance` bits (transitively) share one."""
    pairs = candidate_pairs(fingerprints, max_distance=max_distance, bits=bits, bands=bands)
    return union_find(len(fingerprints), pairs)
