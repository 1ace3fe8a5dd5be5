"""Generate a synthetic shop folder: public tables with raw ids, images, and the hidden truth.

    OUT/events.parquet     user_id, item_id, behavior (pv/click/fav/cart/buy), ts, scene   sorted by ts, user
    OUT/exposures.parquet  request_id, user_id, item_id, ts, position, page, channel, trigger_item, clicked
    OUT/items.parquet      item_id, leaf_category, category_path, brand, shop, price, venue, image, title, pools
    OUT/users.parquet      user_id, gender, age, city, purchase_power
    OUT/images.npy         uint8 (n_items, 32, 32, 3); items.image 'npy:ROW' points into it
    OUT/world.json         the spec, time zone, day boundaries, counts and timing (no hidden labels)
    OUT/truth/             see `homefeed.world.truth`

Every homepage click is in both tables: `clicked = 1` in exposures and a `click` event (scene
"homepage") at the same ts. Page views are scene "search" or "browse"; fav/cart/buy are scene "browse".
Same spec and seed give byte-identical files, except the `timing_s` entry of the two world.json files.
`OUT/world.json` is the public manifest (spec, time zone, day boundaries, counts, timing);
`OUT/truth/world.json` adds the hidden counts (crawlers, fake orders, ...).

    >>> paths = generate(WorldSpec.preset("tiny", seed=7), "out/tiny")   # doctest: +SKIP
    >>> sorted(paths)                                                     # doctest: +SKIP
    ['events', 'exposures', 'images', 'items', 'truth', 'users', 'world']
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from homefeed.data.schema import BEHAVIORS
from homefeed.data.sorting import sort_by
from homefeed.world import timeline as tl
from homefeed.world.catalog import Catalog, build_catalog
from homefeed.world.clickmodel import CLICK_TERMS, FUNNEL_TERMS, click_params, funnel_params
from homefeed.world.images import render_images
from homefeed.world.logs import Logs, Progress, default_threads, simulate_logs
from homefeed.world.noise import crawler_events, fake_orders, spike_events
from homefeed.world.population import Demographics, Population, build_population, draw_demographics, interests_frame
from homefeed.world.spec import CHANNELS, WorldSpec
from homefeed.world.truth import Truth

STEPS = ("catalog", "images", "users", "behaviour", "noise", "write")


def _codes_to_str(col: str, names: tuple[str, ...]) -> pl.Expr:
    return pl.col(col).replace_strict(list(range(len(names))), list(names), return_dtype=pl.String)


def events_frame(parts: list[dict[str, np.ndarray]], raw_user: np.ndarray) -> pl.DataFrame:
    """All event parts (internal user indices) -> the public events table, sorted by ts then user."""
    cat = lambda k: np.concatenate([p[k] for p in parts])  # noqa: E731
    df = sort_by(pl.DataFrame({
        "user_id": pl.Series(raw_user[cat("user")], dtype=pl.Int64), "item_id": pl.Series(cat("item"), dtype=pl.Int64),
        "b": cat("behavior"), "ts": pl.Series(cat("ts"), dtype=pl.Int64), "s": cat("scene"),
    }), "ts", "user_id", "b", "item_id", "s")
    return df.select("user_id", "item_id", _codes_to_str("b", BEHAVIORS).alias("behavior"), "ts",
                     _codes_to_str("s", tl.SCENES).alias("scene"))


def exposures_frame(ex: dict[str, np.ndarray], raw_user: np.ndarray) -> pl.DataFrame:
    """Simulated exposures -> the public table; request_id numbers requests 1.. in (ts, user) order."""
    df = pl.DataFrame({
        "user_id": pl.Series(raw_user[ex["user"]], dtype=pl.Int64), "item_id": pl.Series(ex["item"], dtype=pl.Int64),
        "ts": ex["ts"], "position": ex["position"], "page": ex["page"], "c": ex["channel"],
        "trigger_item": pl.Series(ex["trigger"], dtype=pl.Int64), "clicked": ex["clicked"], "req": ex["request"],
    })
    df = sort_by(df, "ts", "user_id", "req", "position")
    return df.select(
        (pl.struct("user_id", "req").rle_id().cast(pl.Int64) + 1).alias("request_id"), "user_id", "item_id", "ts",
        pl.col("position").cast(pl.Int32), pl.col("page").cast(pl.Int32), _codes_to_str("c", CHANNELS).alias("channel"),
        pl.when(pl.col("trigger_item") > 0).then(pl.col("trigger_item")).alias("trigger_item"),
        pl.col("clicked").cast(pl.Int8),
    )


def _frame(**columns) -> pl.DataFrame:
    """A frame from name=(values, dtype) pairs."""
    return pl.DataFrame([pl.Series(name, values, dtype=dtype) for name, (values, dtype) in columns.items()])


def truth_tables(cat: Catalog, pop: Population, raw: np.ndarray, n_users: int, bursty: np.ndarray,
                 fake: dict[str, np.ndarray], spike: dict[str, np.ndarray]) -> dict[str, pl.DataFrame]:
    """The truth/ tables with public ids (raw maps internal account index -> user_id)."""
    I64, S = pl.Int64, pl.String
    std_raw = np.arange(1, len(cat.std_names) + 1)
    f = {k: v[fake["behavior"] == tl.BUY] for k, v in fake.items()}  # the buys, without the cover views
    sort = dict(maintain_order=True)
    return {
        "leaf_to_standard": _frame(leaf_category=(cat.leaf_raw, I64), standard_category=(std_raw[cat.leaf_std], I64))
        .sort("leaf_category", **sort),
        "image_groups": _frame(item_id=(np.arange(1, cat.n_items + 1), I64), image_group=(cat.image_groups()[1:], I64)),
        "crawler_users": _frame(user_id=(raw[n_users + 1:n_users + 1 + len(bursty)], I64),
                                kind=(np.where(bursty, "burst", "slow"), S)).sort("user_id", **sort),
        "fake_orders": _frame(user_id=(raw[f["user"]], I64), item_id=(f["item"], I64), ts=(f["ts"], I64),
                              account=(np.where(f["user"] > n_users, "dedicated", "normal"), S))
        .sort("ts", "user_id", "item_id", **sort),
        "spike_events": _frame(user_id=(raw[spike["user"]], I64), item_id=(spike["item"], I64), ts=(spike["ts"], I64),
                               behavior=(np.asarray(BEHAVIORS)[spike["behavior"]], S))
        .sort("ts", "user_id", "behavior", "item_id", **sort),
        "user_interests": interests_frame(pop, raw, std_raw).sort("user_id", "weight", descending=[False, True], **sort),
        "repurchase": _frame(standard_category=(std_raw, I64), cycle_days=(cat.cycle_days, I64),
                             kind=(np.where(cat.std_consumable, "consumable", "durable"), S)),
    }


def truth_arrays(spec: WorldSpec, cat: Catalog, pop: Population, logs: Logs, raw: np.ndarray, extra: Demographics,
                 n_crawlers: int) -> dict[str, np.ndarray]:
    """The latent arrays of truth.npz, re-indexed from internal account indices to public user ids."""
    nu, n_acc = spec.n_users, len(raw) - 1
    shoppers, others = raw[1:nu + 1], raw[nu + 1:]
    user_vec = np.repeat(pop.vec[:1], n_acc + 1, axis=0)
    user_vec[shoppers] = pop.vec[1:]
    recent = np.zeros((n_acc + 1, spec.dim), np.float32)
    recent[shoppers] = logs.recent[1:]
    recent_std = np.zeros((n_acc + 1, 3), np.int64)
    recent_std[shoppers] = logs.recent_std[1:] + 1  # public standard ids; 0 = none
    power = np.full(n_acc + 1, 3, np.int64)
    power[shoppers], power[others] = pop.pp[1:], extra.purchase_power
    role = np.zeros(n_acc + 1, np.int8)
    role[others[:n_crawlers]], role[others[n_crawlers:]] = 1, 2
    pad = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:], a.dtype), a])  # noqa: E731
    n_std = len(cat.std_names)
    return {
        "user_vec": user_vec.astype(np.float32), "user_recent": recent, "user_recent_standard": recent_std,
        "user_purchase_power": power, "user_role": role, "item_vec": cat.item_vec.astype(np.float32),
        "item_quality": cat.item_quality.astype(np.float32), "item_logpop": cat.item_logpop,
        "item_price_tier": cat.item_tier, "item_standard": np.concatenate([[0], cat.item_std[1:] + 1]),
        "standard_vec": pad(cat.std_vec), "standard_cycle_days": pad(cat.cycle_days),
        "interest_mean": pad(pop.int_w[:n_std]), "click_theta": click_params(spec.click),
        "funnel_phi": funnel_params(spec.funnel),
    }


class _Clock:
    """Times each step and reports it to `progress(step, done, total)`."""

    def __init__(self, progress: Progress | None):
        self.progress, self.t0, self.last, self.timing = progress, time.perf_counter(), time.perf_counter(), {}

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.timing[step] = round(now - self.last, 3)
        self.last = now
        if self.progress is not None:
            self.progress(step, STEPS.index(step) + 1, len(STEPS))


def generate(spec: WorldSpec, out_dir: str | Path, progress: Progress | None = None,
             threads: int | None = None) -> dict[str, Path]:
    """Generate the shop described by `spec` into `out_dir`; returns {table name: path}.

    threads: for the numba kernels (None: `logs.default_threads()`); the files do not depend on it.
    """
    threads = default_threads() if threads is None else threads
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock(progress)
    rng = [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(6)]
    cat = build_catalog(spec, rng[0])
    clock("catalog")
    np.save(out / "images.npy", render_images(cat, rng[1], threads), allow_pickle=False)
    clock("images")
    pop = build_population(spec, cat, rng[2])
    clock("users")
    logs = simulate_logs(spec, cat, pop, progress, threads)
    clock("behaviour")
    nu = spec.n_users
    n_crawl = max(1, int(round(spec.noise.crawler_share * nu / (1 - spec.noise.crawler_share))))
    crawl, bursty = crawler_events(spec, cat, np.arange(nu + 1, nu + 1 + n_crawl), rng[3])
    fake, brushers = fake_orders(spec, cat, logs.events, n_normal=nu, first_account=nu + 1 + n_crawl, rng=rng[4])
    spike = spike_events(spec, logs.events, rng[5])
    n_acc = nu + n_crawl + len(brushers)
    raw = np.concatenate([[0], rng[3].permutation(n_acc) + 1])  # internal account index -> public user id
    demo = draw_demographics(n_acc - nu, rng[3])
    clock("noise")
    events = events_frame([logs.events, crawl, fake, spike], raw)
    events.write_parquet(out / "events.parquet")
    exposures = exposures_frame(logs.exposures, raw)
    exposures.write_parquet(out / "exposures.parquet")
    cat.items_frame().write_parquet(out / "items.parquet")
    users = pl.concat([pop.demo.frame(raw[1:nu + 1]), demo.frame(raw[nu + 1:])]).sort("user_id", maintain_order=True)
    users.write_parquet(out / "users.parquet")
    truth = Truth(**truth_tables(cat, pop, raw, nu, bursty, fake, spike),
                  arrays=truth_arrays(spec, cat, pop, logs, raw, demo, n_crawl))
    clock("write")
    public = _public_json(spec, cat, events, exposures, users.height, clock.timing)
    truth.world = _truth_json(public, cat, truth)
    truth.save(out)
    (out / "world.json").write_text(json.dumps(public, indent=1, sort_keys=True) + "\n")
    return {"events": out / "events.parquet", "exposures": out / "exposures.parquet", "items": out / "items.parquet",
            "users": out / "users.parquet", "images": out / "images.npy", "world": out / "world.json",
            "truth": out / "truth"}


def _public_json(spec: WorldSpec, cat: Catalog, events: pl.DataFrame, exposures: pl.DataFrame, n_users: int,
                 timing: dict) -> dict:
    """OUT/world.json: what any log would tell (spec, time zone, day boundaries, table counts, timing)."""
    by_behavior = dict(events.group_by("behavior").len().sort("behavior").iter_rows())
    return {
        "size": spec.size, "seed": spec.seed, "spec": spec.model_dump(mode="json"),
        "tz_offset_hours": spec.tz_offset_hours, "start_date": spec.start_date, "start_ts": spec.start_ts,
        "end_ts": spec.end_ts, "day_starts": [spec.start_ts + d * 86400 for d in range(spec.n_days + 1)],
        "channels": list(CHANNELS),
        "counts": {
            "events": events.height, "events_by_behavior": by_behavior, "exposures": exposures.height,
            "requests": int(exposures["request_id"].max() or 0), "clicks": int(exposures["clicked"].sum()),
            "users": n_users, "items": cat.n_items,
        },
        "ctr": round(float(exposures["clicked"].mean() or 0.0), 6),
        "timing_s": {**timing, "total": round(sum(timing.values()), 3)},
    }


def _truth_json(public: dict, cat: Catalog, truth: Truth) -> dict:
    """truth/world.json: the public manifest plus the hidden counts, category names and model terms."""
    hidden = {
        "shoppers": int((truth.arrays["user_role"] == 0).sum()) - 1, "crawlers": truth.crawler_users.height,
        "brushing_accounts": int((truth.arrays["user_role"] == 2).sum()), "leaf_categories": cat.n_leaves,
        "standard_categories": len(cat.std_names), "fake_orders": truth.fake_orders.height,
        "spike_events": truth.spike_events.height, "image_groups": int(truth.image_groups["image_group"].n_unique()),
    }
    return {**public, "counts": {**public["counts"], **hidden}, "click_terms": list(CLICK_TERMS),
            "funnel_terms": list(FUNNEL_TERMS),
            "standard_categories": {str(i + 1): n for i, n in enumerate(cat.std_names)}}
