"""Scoring the mechanism against the synthetic shop's truth, and a replay with the mechanism on and off.

Each learned part is compared with the truth the generator hid in `truth/`:
standard categories by adjusted Rand index and pairwise F1 (names only, behaviour only, all signals),
image groups by pair precision / recall (and against exact cosine grouping: speed-up and precision
lost), blocking periods by rank correlation with the true repurchase cycles.

The replay takes homepage requests of the test day, builds a simple ranked list for each (popularity
plus a boost for the standard categories of the user's recent leaves: the ranker is another stage's),
lets 4 channels (the shop's material pools) fill a page, and measures with the truth:
the share of pages showing a category the user bought within its true cycle, the duplicate and
near-duplicate rate per page, distinct standard categories per page and intra-list similarity
(mean pairwise cosine of the true item vectors) -- "off": each channel shows its top items;
"on": purchase filter + joint scattering with the learned categories and image groups.

    >>> result = evaluate_mechanism("out/small")                # doctest: +SKIP
    >>> result["standard_category_ari"], result["on"]["near_duplicate_rate"]
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from homefeed.data.split import time_split
from homefeed.mechanism import MechanismConfig, MechanismTables
from homefeed.mechanism import purchase_filter as pf
from homefeed.mechanism.categories import StandardCategories, fit_standard_categories
from homefeed.mechanism.image_dedup import (ImageConfig, ImageGroups, cosine_groups, fit_image_groups, group_vectors,
                                            hamming_to_cosine)
from homefeed.mechanism.scatter import scatter
from homefeed.mechanism.simhash import candidate_pairs, union_find

CHANNELS = ("recommended", "flash_sale", "group_buy", "flash_discount")


def _pair_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float, float]:
    """(pairs together in both, together in pred, together in truth, all pairs) of two labelings."""
    _, a = np.unique(pred, return_inverse=True)
    _, b = np.unique(truth, return_inverse=True)
    both = np.unique(a.astype(np.int64) * (b.max() + 1) + b, return_counts=True)[1].astype(np.float64)
    pairs = lambda c: float((c * (c - 1) / 2).sum())  # noqa: E731
    n = len(a)
    return pairs(both), pairs(np.bincount(a).astype(float)), pairs(np.bincount(b).astype(float)), n * (n - 1) / 2


def pair_precision_recall(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Of the pairs `pred` puts together, the share truly together; of the true pairs, the share found."""
    tp, pp, tt, _ = _pair_counts(pred, truth)
    return (tp / pp if pp else 1.0), (tp / tt if tt else 1.0)


def pair_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    p, r = pair_precision_recall(pred, truth)
    return 2 * p * r / (p + r) if p + r else 0.0


def adjusted_rand_index(pred: np.ndarray, truth: np.ndarray) -> float:
    """Hubert & Arabie's ARI: 1 = identical partitions, ~0 = chance agreement."""
    tp, pp, tt, total = _pair_counts(pred, truth)
    expected = pp * tt / total if total else 0.0
    top = 0.5 * (pp + tt) - expected
    return float((tp - expected) / top) if top else 1.0


@dataclass
class Shop:
    """A generated shop folder read as raw tables: what the mechanism learns from and the truth it is scored on."""

    root: Path
    items: pl.DataFrame
    events: pl.DataFrame
    exposures: pl.DataFrame
    test_start: int
    truth: Path

    @classmethod
    def load(cls, root: str | Path, *, truth_dir: str | Path | None = None) -> "Shop":
        root = Path(root)
        if not (root / "items.parquet").exists():
            raise FileNotFoundError(f"{root} is not a generated shop (no items.parquet); run `homefeed generate` first")
        world = json.loads((root / "world.json").read_text()) if (root / "world.json").exists() else {}
        events = pl.read_parquet(root / "events.parquet")
        split = time_split(events, valid_days=0, test_days=1, tz_offset_hours=world.get("tz_offset_hours", 8.0))
        return cls(root, pl.read_parquet(root / "items.parquet"), events, pl.read_parquet(root / "exposures.parquet"),
                   split.valid_end, Path(truth_dir) if truth_dir else root / "truth")

    def past(self) -> pl.DataFrame:
        return self.events.filter(pl.col("ts") < self.test_start)

    def truth_table(self, name: str) -> pl.DataFrame:
        return pl.read_parquet(self.truth / f"{name}.parquet")


def score_categories(shop: Shop, *, config=None, fitted: StandardCategories | None = None) -> tuple[StandardCategories, dict]:
    """Score the learned standard categories (all signals; `fitted` when given) and each signal alone."""
    truth = shop.truth_table("leaf_to_standard")
    past = shop.past()
    out: dict = {}

    def scored(cats: StandardCategories, key: str) -> None:
        j = cats.table.join(truth, on="leaf_category", suffix="_true")
        pred, true = j["standard_category"].to_numpy(), j["standard_category_true"].to_numpy()
        out[f"standard_category_ari{key}"] = adjusted_rand_index(pred, true)
        out[f"standard_category_f1{key}"] = pair_f1(pred, true)

    for name, signals in (("names", ("name",)), ("behavior", ("behavior",))):  # ablations: one signal at a time
        scored(fit_standard_categories(shop.items, past, config=config, signals=signals), f"_{name}")
    cats = fitted if fitted is not None else fit_standard_categories(shop.items, past, config=config)
    scored(cats, "")
    out["standard_categories"] = cats.n_standard
    return cats, out


def score_images(shop: Shop, *, config: ImageConfig | None = None, fitted: ImageGroups | None = None,
                 fit_s: float | None = None) -> tuple[ImageGroups, dict]:
    """Image groups from the CNN + SimHash, scored by pairs; exact cosine on the same vectors for reference.

    `image_pair_*`: the configured path (multi-index candidates within max_distance bits, re-checked by
    cosine and local scaling); `image_simhash_only_*`: fingerprints alone; `image_exact_cosine_*`: the
    same re-check rule over all n^2 pairs with exact neighbours; `image_speedup_vs_exact`: its time over
    the configured path's.
    """
    cfg = config or ImageConfig()
    t0 = time.perf_counter()
    groups = fitted if fitted is not None else fit_image_groups(shop.items, root=shop.root, config=cfg)
    t_fit = fit_s if fit_s is not None else time.perf_counter() - t0
    truth = shop.items.select("item_id").join(shop.truth_table("image_groups"), on="item_id", how="left")["image_group"].to_numpy()
    fp, vec = groups.table["fingerprint"].to_numpy(), groups.vectors
    t0 = time.perf_counter()
    labels = group_vectors(vec, fp, config=cfg)
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    if cfg.min_cosine is None:
        exact = cosine_groups(vec, threshold=hamming_to_cosine(cfg.max_distance, cfg.bits))
    else:
        exact = cosine_groups(vec, threshold=cfg.min_cosine, neighbours=cfg.neighbours, max_scaled_distance=cfg.max_scaled_distance)
    t_exact = time.perf_counter() - t0
    only = union_find(len(fp), candidate_pairs(fp, max_distance=cfg.max_distance, bits=cfg.bits, bands=cfg.bands))
    out = {"image_fit_s": t_fit, "image_grouping_s": t_hash, "image_exact_cosine_s": t_exact,
           "image_speedup_vs_exact": t_exact / max(t_hash, 1e-9)}
    for name, lab in (("image_pair", labels), ("image_simhash_only", only), ("image_exact_cosine", exact)):
        out[f"{name}_precision"], out[f"{name}_recall"] = pair_precision_recall(lab, truth)
    return groups, out


def score_periods(shop: Shop, cats: StandardCategories, periods: pf.BlockingPeriods) -> tuple[pf.BlockingPeriods, dict]:
    """Spearman correlation of the blocking periods with the true cycles (via each learned category's majority truth)."""
    truth = shop.truth_table("leaf_to_standard").join(shop.truth_table("repurchase"), on="standard_category")
    majority = (cats.table.join(truth, on="leaf_category", suffix="_true")
                .group_by("standard_category").agg(pl.col("cycle_days").mode().first()))
    j = periods.table.join(majority, on="standard_category").filter(pl.col("source") != "default")
    rho = float(spearmanr(j["block_days"], j["cycle_days"]).statistic) if j.height > 2 else float("nan")
    return periods, {"block_days_spearman": rho, "block_estimated_share": float((periods.table["source"] == "estimated").mean())}


def _per_item(values: pl.DataFrame, column: str, n: int, fill=-1) -> np.ndarray:
    """A dense (n,) array indexed by raw item id from a frame (item_id, column)."""
    out = np.full(n, fill, dtype=np.float64 if values.schema[column].is_float() else np.int64)
    ids = values["item_id"].to_numpy()
    out[ids] = values[column].fill_null(fill).to_numpy()
    return out


@dataclass
class _Replay:
    """Dense per-item arrays (index = raw item id) and per-user event spans for the replay."""

    pop: np.ndarray  # (N,) float: log popularity in the past, scaled to [0, 1]
    pools: np.ndarray  # (N, C) bool: channel eligibility
    leaf: np.ndarray
    standard: np.ndarray  # learned
    true_standard: np.ndarray
    true_group: np.ndarray
    true_vec: np.ndarray  # (N, d) unit rows
    cycle_days: np.ndarray  # (S_true + 1,) true repurchase cycle per true standard category
    ev_user: np.ndarray  # events sorted by user, ts
    ev_item: np.ndarray
    ev_behavior: np.ndarray
    ev_ts: np.ndarray


def _replay_setup(shop: Shop, cats: StandardCategories) -> _Replay:
    items = cats.add_column(shop.items)
    n = int(items["item_id"].max()) + 1
    counts = shop.past().group_by("item_id").agg(pl.len().alias("c")).with_columns(pl.col("c").log1p())
    pop = _per_item(counts, "c", n, fill=0)
    pools = np.zeros((n, len(CHANNELS)), bool)
    for c, name in enumerate(CHANNELS):
        pools[items["item_id"].to_numpy(), c] = items["pools"].list.contains(name).to_numpy()
    truth_groups = shop.truth_table("image_groups")
    true_std = shop.truth_table("leaf_to_standard")
    rep = shop.truth_table("repurchase")
    cycle = np.zeros(int(rep["standard_category"].max()) + 1)
    cycle[rep["standard_category"].to_numpy()] = rep["cycle_days"].to_numpy()
    vec_file = shop.truth / "truth.npz"
    with np.load(vec_file, allow_pickle=False) as z:
        vec = z["item_vec"][:n].astype(np.float64)
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    ev = shop.events.sort("user_id", "ts")
    return _Replay(
        pop=pop / max(pop.max(), 1e-12), pools=pools, leaf=_per_item(items, "leaf_category", n),
        standard=_per_item(items, "standard_category", n),
        true_standard=_per_item(items.select("item_id", "leaf_category").join(true_std, on="leaf_category"), "standard_category", n),
        true_group=_per_item(truth_groups, "image_group", n), true_vec=vec, cycle_days=cycle,
        ev_user=ev["user_id"].to_numpy(), ev_item=ev["item_id"].to_numpy(), ev_behavior=ev["behavior"].cast(pl.String).to_numpy(),
        ev_ts=ev["ts"].to_numpy(),
    )


def _page_figures(items: np.ndarray, scores: np.ndarray, r: _Replay, just_bought: list[set]) -> dict:
    """Per-page figures averaged over pages; items (R, P) raw ids (-1 empty), scores (R, P)."""
    filled = items >= 0
    f = filled.sum(1)  # filled positions per page
    n = f.clip(1)

    def distinct(values):  # distinct filled values per row
        v = np.where(filled, values, np.iinfo(np.int64).max)
        v = np.sort(v, axis=1)
        new = np.concatenate([np.ones((len(v), 1), bool), v[:, 1:] != v[:, :-1]], axis=1)
        return (new & (v != np.iinfo(np.int64).max)).sum(1)

    safe = np.maximum(items, 0)
    n_items, n_groups = distinct(items), distinct(r.true_group[safe])
    vec = np.where(filled[..., None], r.true_vec[safe], 0.0)  # (R, P, d)
    total = vec.sum(1)
    ils = ((total * total).sum(1) - f) / np.maximum(f * (f - 1), 1)
    hit = [bool(set(r.true_standard[row[row >= 0]].tolist()) & jb) for row, jb in zip(items, just_bought)]
    return {
        "just_purchased_share": float(np.mean(hit)),
        "duplicate_rate": float(((f - n_items) / n).mean()),
        "near_duplicate_rate": float(((n_items - n_groups) / n).mean()),
        "distinct_standard_per_page": float(distinct(r.true_standard[safe]).mean()),
        "intra_list_similarity": float(ils.mean()),
        "filled_share": float(filled.mean()),
        "mean_score": float(np.nanmean(np.where(filled, scores, np.nan))),
    }


def replay(shop: Shop, tables: MechanismTables, *, config: MechanismConfig | None = None, n_requests: int = 1000,
           candidates: int = 500, per_channel: int = 8, recent: int = 30, seed: int = 0) -> dict:
    """Replay test-day homepage requests with the mechanism off and on; figures per page against the truth."""
    cfg = config or MechanismConfig()
    cats, periods = tables.categories, tables.periods
    r = _replay_setup(shop, cats)
    attrs = tables.attributes(shop.items)
    reqs = (shop.exposures.filter((pl.col("ts") >= shop.test_start) & (pl.col("page") == 0))
            .group_by("request_id").agg(pl.col("user_id").first(), pl.col("ts").first()).sort("request_id"))
    rng = np.random.default_rng(seed)
    reqs = reqs[np.sort(rng.choice(reqs.height, size=min(n_requests, reqs.height), replace=False))]
    layout = np.tile(np.arange(len(CHANNELS)), per_channel)
    user_start = np.searchsorted(r.ev_user, reqs["user_id"].to_numpy())
    user_end = np.searchsorted(r.ev_user, reqs["user_id"].to_numpy(), side="right")
    off, on, off_s, on_s, bought, ms = [], [], [], [], [], []
    for ts, lo, hi in zip(reqs["ts"].to_list(), user_start, user_end):
        k = lo + int(np.searchsorted(r.ev_ts[lo:hi], ts))  # the user's events before the request: [lo, k)
        past_items, past_beh, past_ts = r.ev_item[lo:k], r.ev_behavior[lo:k], r.ev_ts[lo:k]
        score = r.pop + np.isin(r.standard, cats.expand(r.leaf[past_items[-recent:]]))
        cand, slots = _ranked_candidates(score, r, candidates)
        off_page = _off_page(cand, slots, score[cand], layout)
        bought.append(_just_bought(past_items, past_beh, past_ts, ts, r))
        state = _purchase_state(past_items, past_beh, past_ts, r.standard, periods, cfg.purchase)  # online: stored
        t0 = time.perf_counter()
        keep = pf.allowed(state, r.standard[cand], ts)
        page = scatter(cand, score[cand], slots, attributes=attrs, layout=layout, rules=cfg.scatter.rules,
                       max_loss=cfg.scatter.max_loss, exclude=~keep)
        ms.append(1000 * (time.perf_counter() - t0))
        off.append(off_page)
        off_s.append(np.where(off_page >= 0, score[np.maximum(off_page, 0)], np.nan))
        on.append(page.items)
        on_s.append(page.scores)
    off_f = _page_figures(np.array(off), np.array(off_s), r, bought)
    on_f = _page_figures(np.array(on), np.array(on_s), r, bought)
    on_f["score_kept"] = on_f["mean_score"] * on_f["filled_share"] / (off_f["mean_score"] * off_f["filled_share"])
    on_f["mechanism_ms_median"] = float(np.median(ms))
    return {"requests": len(off), "off": off_f, "on": on_f}


def _ranked_candidates(score: np.ndarray, r: _Replay, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in ranker's k candidates (half by the personal score, the rest by popularity) as rows
    (item, channel): one row per channel pool the item is in."""
    n = len(score)
    personal = np.argpartition(-score, min(k, n - 1))[:k // 2]
    popular = np.argpartition(-r.pop, min(k, n - 1))[:k]
    top = np.concatenate([personal, popular[~np.isin(popular, personal)]])[:k]
    rows, slots = np.nonzero(r.pools[top])
    return top[rows], slots


def _off_page(cand: np.ndarray, slots: np.ndarray, scores: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """Mechanism off: every channel shows its own best items, blind to the other channels."""
    page = np.full(len(layout), -1)
    for c in np.unique(layout):
        own = cand[slots == c][np.argsort(-scores[slots == c], kind="stable")]
        pos = np.flatnonzero(layout == c)
        page[pos[:len(own)]] = own[:len(pos)]
    return page


def _just_bought(items: np.ndarray, behaviors: np.ndarray, ts: np.ndarray, now: int, r: _Replay) -> set:
    """True standard categories the user bought within their true repurchase cycle before `now`."""
    buy = behaviors == "buy"
    std = r.true_standard[items[buy]]
    fresh = now - ts[buy] < r.cycle_days[np.maximum(std, 0)] * pf.DAY
    return set(std[fresh & (std >= 0)].tolist())


def _purchase_state(items, behaviors, ts, standard, periods, config) -> pf.PurchaseState:
    """Fold the user's past events (from the first buy on) into a purchase-filter state."""
    buys = np.flatnonzero(behaviors == "buy")
    state = pf.PurchaseState()
    if not buys.size:
        return state
    for i in range(buys[0], len(items)):  # one user's events: a short loop, like the online path
        if behaviors[i] == "buy" or behaviors[i] in config.click_behaviors:
            state = pf.on_event(state, standard=int(standard[items[i]]), behavior=behaviors[i], ts=int(ts[i]),
                                periods=periods, config=config)
    return state


def evaluate_mechanism(source: str | Path, *, config: MechanismConfig | None = None, truth_dir: str | Path | None = None,
                       n_requests: int = 1000, seed: int = 0, overrides: str | Path | None = None) -> dict:
    """Every part scored against the truth of the shop in `source`, plus the on/off replay, as one dict.

    Keys: standard_category_ari (+ _f1, _names, _behavior variants), image_pair_precision, image_pair_recall
    (+ exact cosine reference and timings), block_days_spearman, and `on` / `off` page figures.
    """
    cfg = config or MechanismConfig()
    shop = Shop.load(source, truth_dir=truth_dir)
    t0 = time.perf_counter()
    # the tables are fitted by the code the bundle serves (`MechanismTables.fit`), on everything before the test day
    tables = MechanismTables.fit(shop.items, shop.past(), root=shop.root, config=cfg, overrides=overrides,
                                 end_ts=shop.test_start)
    fit_s = time.perf_counter() - t0
    _, out = score_categories(shop, config=cfg.categories, fitted=tables.categories)
    _, img = score_images(shop, config=cfg.images, fitted=tables.images, fit_s=fit_s)
    _, per = score_periods(shop, tables.categories, tables.periods)
    out |= img | per
    out |= replay(shop, tables, config=cfg, n_requests=n_requests, seed=seed)
    out["total_s"] = time.perf_counter() - t0
    return out


def report_rows(result: dict) -> tuple[dict, dict]:
    """(part scores: {metric: {"value": v}}, page figures: {metric: {"off": v, "on": v}}) for `metrics_table`."""
    parts = {k: {"value": v} for k, v in result.items() if not isinstance(v, dict)}
    pages = {m: {"off": result["off"].get(m), "on": result["on"].get(m)} for m in result["on"] | result["off"]}
    return parts, pages


def print_report(result: dict, *, as_json: bool = False) -> None:
    """The result as two tables (parts vs truth; pages with the mechanism off and on), or as JSON."""
    from homefeed.evaluate.report import metrics_table, print_json, print_table
    if as_json:
        print_json(result)
        return
    parts, pages = report_rows(result)
    print_table(metrics_table(parts, title="mechanism vs truth", name_header="metric"))
    print_table(metrics_table(pages, title=f"replay of {result['requests']} test-day homepage requests", name_header="per page"))


def main(argv: list[str] | None = None) -> None:
    """`python -m homefeed.mechanism.evaluate SHOP_DIR [--json] [--requests N]` (the CLI's `evaluate mechanism`)."""
    import argparse
    ap = argparse.ArgumentParser(description="Score the mechanism against a generated shop's truth.")
    ap.add_argument("shop", help="folder written by `homefeed generate`")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--requests", type=int, default=1000, help="test-day homepage requests to replay")
    args = ap.parse_args(argv)
    print_report(evaluate_mechanism(args.shop, n_requests=args.requests), as_json=args.json)


if __name__ == "__main__":
    main()
