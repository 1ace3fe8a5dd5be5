"""The catalogue: category tree, brands, shops, venues, pools and items with their hidden latents.

Standard categories ("Dress") each hold 3-8 leaf categories named as variants ("Lace Dress", "Dress
Set"). Every category, leaf and item has a latent vector: leaves sit near their standard category,
items near their leaf, so `user_vec . item_vec` (the affinity) prefers whole category families.
Brands and shops each trade in a few standard categories; prices are lognormal per category and
shifted per brand; popularity is Zipf-like. Some items re-list another item's product (same leaf,
brand, latent and roughly price, usually another shop): their images are near duplicates.

All arrays are indexed by item id (1..n; row 0 is padding) or by 0-based category/brand/shop index.

    >>> cat = build_catalog(WorldSpec.preset("tiny"), np.random.default_rng(0))   # doctest: +SKIP
    >>> cat.items_frame().columns                                                   # doctest: +SKIP
    ['item_id', 'leaf_category', 'category_path', 'brand', 'shop', 'price', 'venue', 'image', 'title', 'pools']
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from homefeed.world import names
from homefeed.world.sampling import Grouping, normalize_rows, zipf_logpop
from homefeed.world.spec import POOLS, WorldSpec


@dataclass
class Catalog:
    """Category tree and items. Shapes: S standard, L leaf, n items (arrays of n + 1, row 0 unused)."""

    std_names: list[str]
    std_consumable: np.ndarray  # bool (S,)
    cycle_days: np.ndarray  # int64 (S,): repurchase cycle
    std_vec: np.ndarray  # float32 (S, d)
    std_logpop: np.ndarray  # float64 (S,)
    leaf_std: np.ndarray  # int64 (L,)
    leaf_names: list[str]
    leaf_raw: np.ndarray  # int64 (L,): public leaf_category id (shuffled 1..L)
    leaf_hue: np.ndarray  # float64 (L,): foreground hue of the leaf's images
    item_leaf: np.ndarray  # int64 (n+1,)
    item_std: np.ndarray
    item_brand: np.ndarray  # 0-based
    item_shop: np.ndarray  # 0-based
    item_venue: np.ndarray  # 1-based venue id, 0 = none
    item_price: np.ndarray  # float64
    item_tier: np.ndarray  # int64 1..5: price quintile inside the standard category
    item_quality: np.ndarray  # float32
    item_logpop: np.ndarray  # float64
    item_vec: np.ndarray  # float32 (n+1, d)
    item_master: np.ndarray  # int64: the item whose product this one re-lists (itself if unique)
    item_hue: np.ndarray  # float64
    item_pools: np.ndarray  # bool (n+1, len(POOLS))
    brand_names: np.ndarray  # str (n_brands,)
    brand_std: Grouping  # brands of each standard category

    @property
    def n_items(self) -> int:
        return len(self.item_leaf) - 1

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_std)

    def image_groups(self) -> np.ndarray:
        """int64 (n+1,): image group id per item, 1..G in order of each group's first item."""
        _, first, inv = np.unique(self.item_master[1:], return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))
        return np.concatenate([[0], rank[inv] + 1]).astype(np.int64)

    def items_frame(self) -> pl.DataFrame:
        """The public items table (raw ids, Int64)."""
        n = self.n_items
        ids = np.arange(1, n + 1)
        leaf = self.item_leaf[1:]
        std_name = np.asarray(self.std_names, dtype=object)[self.leaf_std[leaf]]
        leaf_name = np.asarray(self.leaf_names, dtype=object)[leaf]
        colour = np.asarray(names.COLOURS)[(self.item_hue[1:] * len(names.COLOURS)).astype(int) % len(names.COLOURS)]
        adjective = np.asarray(names.ADJECTIVES)[ids * 7 % len(names.ADJECTIVES)]
        pools = pl.DataFrame({p: self.item_pools[1:, k] for k, p in enumerate(POOLS)})
        venue = pl.Series("venue", self.item_venue[1:], dtype=pl.Int64)
        return pl.DataFrame({
            "item_id": pl.Series(ids, dtype=pl.Int64),
            "leaf_category": pl.Series(self.leaf_raw[leaf], dtype=pl.Int64),
            "category_path": pl.Series(std_name.astype(str)) + ">" + pl.Series(leaf_name.astype(str)),
            "brand": pl.Series(self.item_brand[1:] + 1, dtype=pl.Int64),
            "shop": pl.Series(self.item_shop[1:] + 1, dtype=pl.Int64),
            "price": pl.Series(self.item_price[1:], dtype=pl.Float64),
            "venue": pl.select(pl.when(venue > 0).then(venue)).to_series().alias("venue"),
            "image": "npy:" + pl.Series(ids - 1).cast(pl.String),
            "title": pl.Series(self.brand_names[self.item_brand[1:]]) + " " + pl.Series(adjective) + " "
            + pl.Series(leaf_name.astype(str)) + " " + pl.Series(colour),
            "pools": pools.select(pl.concat_list([pl.when(pl.col(p)).then(pl.lit(p)) for p in POOLS]).list.drop_nulls())
            .to_series(),
        })


def build_catalog(spec: WorldSpec, rng: np.random.Generator) -> Catalog:
    """Draw the whole catalogue for `spec` from `rng` (deterministic for a given generator state)."""
    n_std = spec.n_standard
    if n_std > len(names.STANDARD_CATEGORIES):
        raise ValueError(f"n_standard={n_std}: at most {len(names.STANDARD_CATEGORIES)} standard categories are named")
    if spec.leaves_min > spec.leaves_max:
        raise ValueError(f"leaves_min={spec.leaves_min} > leaves_max={spec.leaves_max}")
    tree = _category_tree(spec, rng)
    n, d = spec.n_items, spec.dim
    leaf_std = tree["leaf_std"]
    n_leaves = len(leaf_std)
    if n < 2 * n_leaves:
        raise ValueError(f"n_items={n} is too few for {n_leaves} leaf categories (need >= 2 per leaf)")
    # leaves: two items each, the rest by leaf share; item ids in random order
    leaf_share = np.exp(tree["std_logpop"][leaf_std] + rng.normal(0, 0.5, n_leaves))
    rest = rng.choice(n_leaves, size=n - 2 * n_leaves, p=leaf_share / leaf_share.sum())
    item_leaf = rng.permutation(np.concatenate([np.repeat(np.arange(n_leaves), 2), rest]))
    master = _near_duplicate_masters(item_leaf, spec.near_dup_share, rng)
    item_std = leaf_std[item_leaf]
    brands = _traders(spec.n_brands, n_std, rng, extra=(1, 3))
    shops = _traders(spec.n_shops, n_std, rng, extra=(1, 4))
    brand = brands.choose(item_std, rng.random(n))[master]
    shop = shops.choose(item_std, rng.random(n))
    venue = _venues(spec, item_std, rng)
    logprice = (rng.uniform(np.log(8), np.log(1500), n_std)[item_std]
                + rng.normal(0, 0.35, spec.n_brands)[brand] + rng.normal(0, 0.35, n))
    price = np.round(np.exp(logprice[master]) * np.where(master == np.arange(n), 1.0, rng.uniform(0.92, 1.08, n)), 2)
    price = np.maximum(price, 0.5)
    tier = _tiers(price, item_std)
    quality = rng.normal(0, 0.6, n)[master].astype(np.float32)
    logpop = zipf_logpop(rng, n, spec.popularity_exponent) + 0.5 * quality
    leaf_vec = normalize_rows(tree["std_vec"][leaf_std] + 0.55 * normalize_rows(rng.normal(size=(n_leaves, d))))
    vec = normalize_rows(leaf_vec[item_leaf] + 0.6 * normalize_rows(rng.normal(size=(n, d))))
    vec = normalize_rows(vec[master] + 0.05 * rng.normal(size=(n, d)) * (master != np.arange(n))[:, None])
    hue = (tree["leaf_hue"][item_leaf] + rng.normal(0, 0.012, n))[master] % 1.0
    pools = _pools(rng, tier, tree["consumable"][item_std])
    pad = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:], a.dtype), a])  # noqa: E731
    return Catalog(
        std_names=tree["std_names"], std_consumable=tree["consumable"], cycle_days=tree["cycle_days"],
        std_vec=tree["std_vec"].astype(np.float32), std_logpop=tree["std_logpop"], leaf_std=leaf_std,
        leaf_names=tree["leaf_names"], leaf_raw=rng.permutation(n_leaves) + 1, leaf_hue=tree["leaf_hue"],
        item_leaf=pad(item_leaf), item_std=pad(item_std), item_brand=pad(brand), item_shop=pad(shop),
        item_venue=pad(venue), item_price=pad(price), item_tier=pad(tier), item_quality=pad(quality),
        item_logpop=pad(logpop), item_vec=pad(vec.astype(np.float32)), item_master=pad(master + 1),
        item_hue=pad(hue), item_pools=pad(pools), brand_names=_brand_names(spec.n_brands, rng), brand_std=brands,
    )


def _category_tree(spec: WorldSpec, rng: np.random.Generator) -> dict:
    n_std = spec.n_standard
    chosen = rng.choice(len(names.STANDARD_CATEGORIES), size=n_std, replace=False)
    std_names = [names.STANDARD_CATEGORIES[i][0] for i in chosen]
    consumable = np.array([names.STANDARD_CATEGORIES[i][1] == "consumable" for i in chosen])
    cycle = np.where(consumable, np.exp(rng.uniform(np.log(3), np.log(30), n_std)),
                     np.exp(rng.uniform(np.log(60), np.log(365), n_std)))
    n_leaves = rng.integers(spec.leaves_min, spec.leaves_max + 1, n_std)
    leaf_std = np.repeat(np.arange(n_std), n_leaves)
    leaf_names: list[str] = []
    for name, k in zip(std_names, n_leaves):  # one small loop per standard category (<= 120)
        forms = [f"{m} {name}" for m in names.MODIFIERS] + [f"{name} {s}" for s in names.SUFFIXES]
        forms += [f"{m.lower()}-{name.lower()}" for m in names.MODIFIERS[:6]]
        leaf_names += [forms[j] for j in rng.choice(len(forms), size=k, replace=False)]
    # leaf hues evenly spaced inside each standard category so a CNN can tell sibling leaves apart
    rank_in_std = np.arange(len(leaf_std)) - np.repeat(np.cumsum(n_leaves) - n_leaves, n_leaves)
    leaf_hue = (rng.random(n_std)[leaf_std] + rank_in_std / n_leaves[leaf_std]) % 1.0
    return dict(std_names=std_names, consumable=consumable, cycle_days=np.round(cycle).astype(np.int64),
                std_vec=normalize_rows(rng.normal(size=(n_std, spec.dim))), std_logpop=rng.normal(0, 0.7, n_std),
                leaf_std=leaf_std, leaf_names=leaf_names, leaf_hue=leaf_hue)


def _near_duplicate_masters(item_leaf: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """0-based master item of each item: picked items are cut into groups of 2-4 of one leaf."""
    n = len(item_leaf)
    master = np.arange(n)
    picked = rng.permutation(n)[: int(round(share * n))]
    picked = picked[np.argsort(item_leaf[picked], kind="stable")]
    leaf = item_leaf[picked]
    start = np.concatenate([[0], np.flatnonzero(np.diff(leaf)) + 1])
    rank = np.arange(len(picked)) - np.repeat(start, np.diff(np.append(start, len(picked))))
    size = rng.integers(2, 5, item_leaf.max() + 1)[leaf]
    key = leaf * n + rank // size
    first = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    master[picked] = picked[np.repeat(first, np.diff(np.append(first, len(picked))))]
    return master


def _traders(n_traders: int, n_std: int, rng: np.random.Generator, *, extra: tuple[int, int]) -> Grouping:
    """Brands or shops: each trades in 1..extra[1] standard categories; every category gets >= 1 trader."""
    k = rng.integers(extra[0], extra[1] + 1, n_traders)
    owner = np.repeat(np.arange(n_traders), k)
    cats = rng.integers(0, n_std, len(owner))
    orphans = np.setdiff1d(np.arange(n_std), cats)
    owner = np.concatenate([owner, rng.integers(0, n_traders, len(orphans))])
    cats = np.concatenate([cats, orphans])
    weight = np.exp(rng.normal(0, 1.0, n_traders))[owner]  # a few big traders per category
    return Grouping.build(cats, weight, n_groups=n_std, members=owner)


def _venues(spec: WorldSpec, item_std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-based venue per item (0 = none): each standard category gets ~items / venue_size venues, ids shuffled."""
    counts = np.bincount(item_std, minlength=spec.n_standard)
    k = np.maximum(1, np.round(counts * spec.venue_share / spec.venue_size)).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(k)[:-1]])
    venue = first[item_std] + (rng.random(len(item_std)) * k[item_std]).astype(np.int64)
    venue = rng.permutation(k.sum())[venue] + 1
    return np.where(rng.random(len(item_std)) < spec.venue_share, venue, 0)


def _tiers(price: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Price quintile 1..5 of each item inside its standard category."""
    df = pl.DataFrame({"p": price, "s": std})
    q = df.select((pl.col("p").rank("ordinal").over("s") - 1) / pl.len().over("s")).to_series().to_numpy()
    return (np.floor(q * 5) + 1).astype(np.int64)


def _pools(rng: np.random.Generator, tier: np.ndarray, consumable: np.ndarray) -> np.ndarray:
    """bool (n, len(POOLS)); every item is in at least one pool (else 'recommended')."""
    n = len(tier)
    p = np.stack([np.full(n, 0.75), 0.08 + 0.15 * (tier <= 2), 0.1 + 0.25 * consumable, np.full(n, 0.15)], axis=1)
    pools = rng.random((n, len(POOLS))) < p
    pools[:, 0] |= ~pools.any(axis=1)
    return pools


def _brand_names(n: int, rng: np.random.Generator) -> np.ndarray:
    syl = np.asarray(names.SYLLABLES)
    parts = syl[rng.integers(0, len(syl), (n, 3))]
    three = rng.random(n) < 0.4
    name = np.char.capitalize(np.char.add(np.char.add(parts[:, 0], parts[:, 1]), np.where(three, parts[:, 2], "")))
    seen = pl.DataFrame({"n": name}).with_columns(pl.int_range(pl.len()).over("n").alias("k"))
    out = seen.select(pl.when(pl.col("k") > 0).then(pl.col("n") + " " + (pl.col("k") + 1).cast(pl.String))
                      .otherwise(pl.col("n"))).to_series()
    return out.to_numpy().astype(str)
