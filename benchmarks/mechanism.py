"""Mechanism speed: near-duplicate grouping of 1M fingerprints, and one homepage through the whole stage.

    .venv/bin/python benchmarks/mechanism.py            # full sizes: 1M fingerprints, 2,000 pages
    .venv/bin/python benchmarks/mechanism.py --quick    # 100k fingerprints, 200 pages
    .venv/bin/python benchmarks/mechanism.py --json

Targets: grouping 1M fingerprints < 30 s; one page of 4 channels from 500 ranked candidates < 2 ms (median).
Grouping cost grows with the Hamming distance r: 4 bands of 16 bits are probed within floor(r / 4) bits
(r = 3: exact band values; r = 7: 17 probes per band; r = 11: 137).
The page path is what a request pays: purchase-filter mask, then joint scattering of the 4 channels
(and, as a second figure, building 3 exposure templates at once, against the baseline of one `scatter`
call per template, as `build_templates` did before `scatter_pages`: same pages, median ratio).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from homefeed.evaluate.report import metrics_table, print_json, print_table
from homefeed.mechanism import purchase_filter as pf
from homefeed.mechanism.exposure import build_templates
from homefeed.mechanism.scatter import ItemAttributes, default_rules, scatter
from homefeed.mechanism.simhash import SimHasher, group_fingerprints


def fingerprints(n: int, *, dim: int = 64, dup_share: float = 0.12, seed: int = 0) -> np.ndarray:
    """SimHash fingerprints of n clustered vectors (leaf-like clusters) with planted near-duplicate groups of 2-4."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 1), dim)).astype(np.float32)
    vec = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    copies = rng.choice(n, size=int(dup_share * n), replace=False)
    master = rng.choice(n, size=len(copies))
    vec[copies] = vec[master] + 0.05 * rng.standard_normal((len(copies), dim)).astype(np.float32)
    return SimHasher(bits=64, seed=seed).fit(vec[:100_000]).transform(vec)


def bench_grouping(n: int, *, distances: tuple[int, ...] = (3, 7)) -> dict:
    """Seconds to group n fingerprints at each Hamming distance (multi-index hashing + union-find)."""
    fp = fingerprints(n)
    group_fingerprints(fp[:1000], max_distance=1)  # compile / load the numba kernels
    rows = {}
    for r in distances:
        t0 = time.perf_counter()
        labels = group_fingerprints(fp, max_distance=r)
        rows[f"r={r}"] = {"items": n, "seconds": time.perf_counter() - t0, "groups": int(labels.max()) + 1, "target_s": 30.0}
    return rows


def templates_by_loop(items, scores, slots, *, n_templates: int, exclude: np.ndarray, **kw) -> list:
    """The baseline: one `scatter` per template, then every row of the items it placed is excluded."""
    used, pages = np.array(exclude, bool), []
    for _ in range(n_templates):
        pages.append(scatter(items, scores, slots, exclude=used, **kw))
        used |= np.isin(items, pages[-1].items[pages[-1].rows >= 0])
    return pages


def bench_page(n_pages: int, *, n_items: int = 20_000, n_candidates: int = 500, per_channel: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    items = pl.DataFrame({
        "item_id": np.arange(1, n_items + 1), "standard_category": rng.integers(0, 40, n_items),
        "brand": rng.integers(0, 600, n_items), "shop": rng.integers(0, 1500, n_items),
        "venue": pl.Series(np.where(rng.random(n_items) < 0.75, rng.integers(0, 100, n_items), -1)).replace(-1, None),
        "image_group": np.arange(n_items) // rng.integers(1, 3, n_items).clip(1),
    })
    attrs = ItemAttributes.from_items(items)
    std = items["standard_category"].to_numpy()
    periods = pf.BlockingPeriods(pl.DataFrame({"standard_category": np.arange(40), "block_days": np.full(40, 30.0)}))
    state = pf.PurchaseState()
    for s in (3, 7, 11):
        state = pf.on_event(state, standard=s, behavior="buy", ts=0, periods=periods)
    rules, layout = default_rules(), np.tile(np.arange(4), per_channel)
    times, times3, loop3 = [], [], []
    for k in range(n_pages + 20):
        cand = rng.choice(n_items, n_candidates, replace=False) + 1
        scores = np.sort(rng.random(n_candidates))[::-1]
        slots = rng.integers(0, 4, n_candidates)
        t0 = time.perf_counter()
        keep = pf.allowed(state, std[cand - 1], now=100)
        page = scatter(cand, scores, slots, attributes=attrs, layout=layout, rules=rules, max_loss=0.5, exclude=~keep)
        t1 = time.perf_counter()
        built = build_templates(cand, scores, slots, attributes=attrs, layout=layout, rules=rules, n_templates=3, exclude=~keep)
        t2 = time.perf_counter()
        looped = templates_by_loop(cand, scores, slots, attributes=attrs, layout=layout, rules=rules, n_templates=3,
                                   exclude=~keep)
        t3 = time.perf_counter()
        assert all(np.array_equal(a.rows, b.rows) for a, b in zip(built, looped))
        if k >= 20:  # the first calls load the compiled kernels
            times.append(1000 * (t1 - t0))
            times3.append(1000 * (t2 - t1))
            loop3.append(1000 * (t3 - t2))
    assert (page.items >= 0).all()
    return {"pages": n_pages, "candidates": n_candidates, "positions": len(layout), "median_ms": float(np.median(times)),
            "p99_ms": float(np.percentile(times, 99)), "templates3_median_ms": float(np.median(times3)),
            "templates3_loop_median_ms": float(np.median(loop3)),
            "templates3_speedup": float(np.median(loop3) / np.median(times3)), "target_ms": 2.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k fingerprints, 200 pages")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--distances", default="3,7", help="Hamming distances to time, comma-separated (e.g. 3,7,11)")
    args = ap.parse_args()
    distances = tuple(int(x) for x in args.distances.split(","))
    result = {"grouping": bench_grouping(100_000 if args.quick else 1_000_000, distances=distances),
              "page": bench_page(200 if args.quick else 2000)}
    if args.json:
        print_json(result)
    else:
        print_table(metrics_table(result["grouping"], title="near-duplicate grouping (SimHash 64 bits, 4 bands)", name_header="distance"))
        print_table(metrics_table({"page": result["page"]}, title="one homepage: purchase filter + scatter, 4 channels"))


if __name__ == "__main__":
    main()
