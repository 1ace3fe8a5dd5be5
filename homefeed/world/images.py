"""Procedural product images: 32x32 RGB designs that encode the leaf category, with near duplicates.

Each standard category draws one shape family (circle, ring, stripes, checker, ...), each leaf its
own foreground hue (sibling leaves are evenly spaced on the colour wheel), background and stripe
frequency, so a small CNN can learn the leaf from pixels. Each product (an item, or a group of items
re-listing one product) adds its own centre, size, shade and a small coloured mark; copies of one
product differ only by a 1-pixel shift, slight colour jitter and pixel noise. That is the
near-duplicate structure image dedup must find (the truth is `truth/image_groups.parquet`).

    >>> imgs = render_images(catalog, np.random.default_rng(0))   # doctest: +SKIP
    >>> imgs.shape, imgs.dtype                                    # doctest: +SKIP
    ((1500, 32, 32, 3), dtype('uint8'))
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from homefeed.world.catalog import Catalog

SIZE = 32
N_SHAPES = 10
NOISE, N_NOISE = 4.0, 512  # pixel noise sd (0..255 units); noise patterns each image picks one of


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns float32 (..., 3)."""
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0].astype(np.float32)


def _designs(cat: Catalog, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-item design parameters, shared by copies of one product, then jittered per copy."""
    n_std, n_leaves, n = len(cat.std_names), cat.n_leaves, cat.n_items
    shape_of_std = rng.permutation(max(n_std, N_SHAPES))[:n_std] % N_SHAPES
    leaf_dark = rng.random(n_leaves) < 0.5
    leaf_bg_hue, leaf_freq, leaf_r = rng.random(n_leaves), rng.uniform(0.5, 1.1, n_leaves), rng.uniform(6, 11, n_leaves)
    leaf = cat.item_leaf[1:]
    m = cat.item_master[1:] - 1  # 0-based master of each item
    d = dict(
        shape=shape_of_std[cat.leaf_std[leaf]],
        freq=leaf_freq[leaf],
        cx=rng.uniform(11, 21, n)[m], cy=rng.uniform(11, 21, n)[m],
        r=(leaf_r[leaf] + rng.uniform(-1.5, 1.5, n))[m],
        mx=rng.uniform(2, 29, n)[m], my=rng.uniform(2, 29, n)[m],
    )
    fg = hsv_to_rgb(cat.item_hue[1:], rng.uniform(0.6, 1.0, n)[m], rng.uniform(0.7, 1.0, n)[m])
    bg = hsv_to_rgb(leaf_bg_hue[leaf], np.where(leaf_dark[leaf], 0.5, 0.12), np.where(leaf_dark[leaf], 0.18, 0.93))
    mark = rng.random((n, 3))[m]
    copy = m != np.arange(n)  # copies get a 1-pixel shift and a little colour jitter
    shift = rng.integers(-1, 2, (n, 2)) * copy[:, None]
    for k in ("cx", "mx"):
        d[k] = d[k] + shift[:, 0]
    for k in ("cy", "my"):
        d[k] = d[k] + shift[:, 1]
    d["fg"] = np.clip(fg + rng.uniform(-0.025, 0.025, (n, 3)) * copy[:, None], 0, 1)
    d["bg"], d["mark"] = bg, mark
    return d


@njit(cache=True)
def _inside(shape: int, dx: float, dy: float, r: float, freq: float) -> bool:
    """Is pixel offset (dx, dy) from the centre inside shape family `shape` of size r / stripe freq?"""
    dist2 = dx * dx + dy * dy
    if shape == 0:
        return dist2 < r * r
    if shape == 1:
        return max(abs(dx), abs(dy)) < 0.85 * r
    if shape == 2:
        return abs(dx) + abs(dy) < 1.2 * r
    if shape == 3:
        return (0.55 * r) ** 2 < dist2 < r * r
    if shape == 4:
        return np.sin(dy * freq) > 0
    if shape == 5:
        return np.sin(dx * freq) > 0
    if shape == 6:
        return np.sin((dx + dy) * freq * 0.7) > 0
    if shape == 7:
        return np.sin(dx * freq) * np.sin(dy * freq) > 0
    if shape == 8:
        return -r < dy < 0.8 * r and abs(dx) < (dy + r) * 0.55
    return (abs(dx) < r / 3 and abs(dy) < r) or (abs(dy) < r / 3 and abs(dx) < r)


@njit(cache=True, nogil=True)
def _render(shape, geom, fg, bg, mark, bank, pick, out):
    """Fill out (n, SIZE, SIZE, 3) uint8. geom float64 (n, 6): cx, cy, r, freq, mx, my; colours in [0, 1]."""
    for i in range(out.shape[0]):
        cx, cy, r, freq, mx, my = geom[i, 0], geom[i, 1], geom[i, 2], geom[i, 3], geom[i, 4], geom[i, 5]
        noise = bank[pick[i]]
        for y in range(SIZE):
            for x in range(SIZE):
                if abs(x - mx) < 1.6 and abs(y - my) < 1.6:
                    col = mark[i]
                elif _inside(shape[i], x - cx, y - cy, r, freq):
                    col = fg[i]
                else:
                    col = bg[i]
                for c in range(3):
                    out[i, y, x, c] = min(255.0, max(0.0, col[c] * 255.0 + noise[y, x, c]))


def render_images(cat: Catalog, rng: np.random.Generator, threads: int = 1) -> np.ndarray:
    """uint8 (n_items, 32, 32, 3); row r is item id r + 1 (the items table's `image` is 'npy:r').

    threads: item slices rendered at once (the kernel draws no random numbers: same pixels for any count).
    """
    d = _designs(cat, rng)
    n = cat.n_items
    bank = rng.normal(0, NOISE, (N_NOISE, SIZE, SIZE, 3))  # pixel noise patterns, drawn once
    pick = rng.integers(0, N_NOISE, n)
    geom = np.stack([d[k] for k in ("cx", "cy", "r", "freq", "mx", "my")], axis=1).astype(np.float64)
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    shape, fg, bg, mark = (d[k].astype(t) for k, t in (("shape", np.int64), ("fg", np.float64), ("bg", np.float64),
                                                        ("mark", np.float64)))
    cuts = np.linspace(0, n, max(1, threads) + 1).astype(np.int64)
    parts = [slice(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:  # the kernel releases the GIL
        list(pool.map(lambda s: _render(shape[s], geom[s], fg[s], bg[s], mark[s], bank, pick[s], out[s]), parts))
    return out
