"""A bundle loaded into memory: what one request needs, ready to use (no disk access per request).

Loading trusts nothing in the folder it is pointed at. Before any file is opened, the manifest is read
under a size limit and every entry checked: a path leaving the bundle folder, a link, or anything but a
regular file is refused (without looking at what it names), each part's folder must list every file it
holds and hold the files serving reads. Then every checksum is verified (`bundle.manifest.verify`), so a
half-copied bundle never serves, and any part that still fails to load is a `BundleError` naming it.
With a signing key (`bundle.key_file`, `bundle.manifest.configured_key`), the manifest's signature is checked first,
right after it parses: an unsigned or changed manifest is refused before any entry in it is looked at.
"""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import polars as pl

from homefeed.data.schema import BEHAVIOR
from homefeed.data.vocab import Vocab
from homefeed.mechanism.purchase_filter import BlockingPeriods
from homefeed.mechanism.scatter import DIMENSIONS, ItemAttributes
from homefeed.recall import Merger, Recaller
from homefeed.recall.part import RecallPart
from homefeed.bundle.manifest import BundleError, check_signature, verify

PARTS = ("mechanism", "data", "recall")  # every bundle has these; `rank` is optional
EXPECTED = {  # the files serving opens directly; a part's own loader reads what its folder lists
    "data": ("data/items.parquet", "data/users.parquet", "data/recent_events.parquet", "data/vocab/item.parquet",
             "data/vocab/user.parquet"),
    "mechanism": ("mechanism/blocking_periods.parquet",),
    "recall": ("recall/channels.json",),
}
MAX_MANIFEST_BYTES = 16 << 20


def check_manifest(bundle: Path, key: bytes | None = None) -> dict:
    """The bundle's manifest, refused (BundleError) unless it is signed under `key` (when given), every entry is a
    regular file inside the bundle folder, every file in a part's folder is listed, and the files serving reads are
    there; checksums are `verify`'s job."""
    path = bundle / "manifest.json"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{bundle}: manifest.json is over {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(raw)
        parts = manifest["parts"]
        listed = {part: set(parts[part]["files"]) for part in parts}
    except FileNotFoundError:
        raise BundleError(f"{bundle} is not a bundle (no manifest.json); build one with `homefeed build DATASET --out {bundle}`") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{bundle}: manifest.json does not read as a bundle manifest ({type(e).__name__}: {e})") from None
    if key is not None:
        check_signature(manifest, key, bundle)
    for part, files in listed.items():
        for rel in files:
            _check_entry(bundle, part, rel)
    for part in {*PARTS, *listed}:
        missing = [rel for rel in EXPECTED.get(part, ()) if rel not in listed.get(part, ())]
        unlisted = sorted(str(p.relative_to(bundle)) for p in (bundle / part).rglob("*")
                          if (p.is_symlink() or not p.is_dir()) and str(p.relative_to(bundle)) not in listed.get(part, ()))
        if not listed.get(part):
            raise BundleError(f"{bundle}: part {part!r} lists none of its files in manifest.json")
        if missing or unlisted:
            raise BundleError(f"{bundle}: part {part!r} does not list {', '.join((missing + unlisted)[:3])} in manifest.json")
    return manifest


def _check_entry(bundle: Path, part: str, rel: str) -> None:
    """One manifest entry: a plain relative path under the part's folder, naming a regular file (not a link)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or pure.parts[:1] != (part,) or len(pure.parts) < 2:
        raise BundleError(f"{bundle}: manifest entry {rel[:200]!r} (part {part}) is not a path inside the part's folder")
    if not os.path.realpath((bundle / rel).parent).startswith(os.path.realpath(bundle) + os.sep):  # a linked folder
        raise BundleError(f"{bundle}: manifest entry {rel[:200]!r} (part {part}) leads out of the bundle folder")
    try:
        mode = os.lstat(bundle / rel).st_mode
    except FileNotFoundError:
        raise BundleError(f"{bundle}: {rel} (part {part}) is missing") from None
    if not stat.S_ISREG(mode):
        raise BundleError(f"{bundle}: {rel} (part {part}) is not a regular file")


@contextmanager
def loading(part: str, bundle: Path) -> Iterator[None]:
    """Any failure while loading `part` becomes a BundleError naming it (the caller keeps the old bundle)."""
    try:
        yield
    except BundleError:
        raise
    except Exception as e:
        raise BundleError(f"{bundle}: part {part!r} does not load: {type(e).__name__}: {str(e)[:300]}") from e


def history_end(split: Path, history_ts: np.ndarray) -> int:
    """The first second the bundle's history does not cover: its split's valid_end (the data part holds the log before
    it), else one past its last event; INT64_MIN for a bundle without history."""
    try:
        return int(json.loads(split.read_text())["valid_end"])
    except (OSError, KeyError, TypeError, ValueError):
        return int(history_ts.max()) + 1 if len(history_ts) else -2**63


def load_history(path: Path, vocabs: dict[str, Vocab]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """recent_events.parquet (raw ids) -> CSR arrays by user code, each user's events oldest first."""
    ev = pl.read_parquet(path)
    ev = ev.with_columns(vocabs["user"].encode_expr("user_raw", "user"), vocabs["item"].encode_expr("item_raw", "item"),
                         pl.col("behavior").cast(BEHAVIOR).to_physical().cast(pl.Int8).alias("b")).sort("user", "ts")
    counts = np.bincount(ev["user"].to_numpy(), minlength=vocabs["user"].size)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, ev["item"].to_numpy().astype(np.int32), ev["b"].to_numpy(), ev["ts"].to_numpy().astype(np.int64)


@dataclass
class ServingBundle:
    """Everything loaded from one bundle folder.

    Attributes:
        items: the serving item table (codes, standard_category, image_group, pools...).
        standard_of: (n_items + 1,) int64 standard category per item code (-1 unknown).
        pool_mask: slot/pool name -> (n_items + 1,) bool, which items a slot may show.
        venue_of: (n_items + 1,) int64 venue per item code (-1 none).
        raw_item: (n_items + 1,) object array, item code -> raw id string ('' for code 0).
    """

    path: Path
    manifest: dict
    vocabs: dict[str, Vocab]
    items: pl.DataFrame
    users: pl.DataFrame
    channels: dict[str, Recaller]
    merger: Merger
    attributes: ItemAttributes
    periods: BlockingPeriods
    standard_of: np.ndarray
    venue_of: np.ndarray
    raw_item: np.ndarray
    pool_mask: dict[str, np.ndarray] = field(default_factory=dict)
    history: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # CSR by user code: indptr, items, behaviors, ts
    history_end: int = -2**63  # the first second the history does not cover: stored events from then on are new
    profiles: dict[int, dict] = field(default_factory=dict)
    ranker: object | None = None

    @property
    def version(self) -> str:
        """The bundle's content hash (`bundle.manifest.content_version`)."""
        return self.manifest.get("version") or self.manifest.get("updated", "")

    @property
    def n_items(self) -> int:
        return self.vocabs["item"].size

    @classmethod
    def load(cls, path: str | Path, *, key: bytes | None = None) -> "ServingBundle":
        """Load the bundle at `path`; with `key`, only if its manifest is signed under it. BundleError names any fault."""
        path = Path(path)
        check_manifest(path, key)  # before any listed file is opened, even to hash it
        manifest = verify(path, parts=PARTS, key=key)
        with loading("data", path):
            bundle = cls._load_data(path, manifest)
        with loading("recall", path):
            recall = RecallPart.load(path / "recall")
            bundle.channels, bundle.merger = recall.channels, recall.merger
        with loading("mechanism", path):
            bundle.periods = BlockingPeriods.load(path / "mechanism" / "blocking_periods.parquet")
        if (path / "rank").exists() and "rank" in manifest["parts"]:
            from homefeed.serve.ranker import ServedRanker

            with loading("rank", path):
                bundle.ranker = ServedRanker.load(path / "rank", items=bundle.items, users=bundle.users, vocabs=bundle.vocabs)
        return bundle

    @classmethod
    def _load_data(cls, path: Path, manifest: dict) -> "ServingBundle":
        """The data part: vocabularies, items with their pools, users, recent history (stages filled in by `load`)."""
        vocabs = {p.stem: Vocab.load(p) for p in sorted((path / "data" / "vocab").glob("*.parquet"))}
        items = pl.read_parquet(path / "data" / "items.parquet")
        items = items.with_columns([pl.lit(None, pl.Int64).alias(d) for d in DIMENSIONS if d not in items.columns])
        users = pl.read_parquet(path / "data" / "users.parquet")
        n = vocabs["item"].size
        codes = items["item_id"].to_numpy()
        standard_of = np.full(n, -1, np.int64)
        standard_of[codes] = items["standard_category"].fill_null(-1).to_numpy()
        venue_of = np.full(n, -1, np.int64)
        if "venue" in items.columns:
            venue_of[codes] = items["venue"].fill_null(-1).to_numpy()
        raw_item = np.full(n, "", dtype=object)
        raw_item[vocabs["item"].table["code"].to_numpy()] = vocabs["item"].table["raw"].cast(pl.String).to_list()
        pool_mask = {}
        if "pools" in items.columns:
            exploded = items.select("item_id", "pools").explode("pools").drop_nulls()
            for pool, group in exploded.group_by("pools"):
                mask = np.zeros(n, bool)
                mask[group["item_id"].to_numpy()] = True
                pool_mask[str(pool[0])] = mask
        bundle = cls(path=path, manifest=manifest, vocabs=vocabs, items=items, users=users, channels={}, merger=None,
                     attributes=ItemAttributes.from_items(items), periods=None,
                     standard_of=standard_of, venue_of=venue_of, raw_item=raw_item, pool_mask=pool_mask)
        bundle.history = load_history(path / "data" / "recent_events.parquet", vocabs)
        bundle.history_end = history_end(path / "data" / "split.json", bundle.history[3])
        cols = [c for c in ("gender", "age", "city", "purchase_power") if c in users.columns]
        bundle.profiles = {row.pop("user_id"): row for row in users.select("user_id", *cols).iter_rows(named=True)}
        return bundle

    def past(self, user_code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The user's events known when the bundle was built: item codes, behaviour codes, ts (oldest first)."""
        indptr, items, behaviors, ts = self.history
        if not 0 < user_code < len(indptr) - 1:
            return items[:0], behaviors[:0], ts[:0]
        lo, hi = indptr[user_code], indptr[user_code + 1]
        return items[lo:hi], behaviors[lo:hi], ts[lo:hi]

    def raw_venue(self, code: int) -> str:
        vocab = self.vocabs.get("venue")
        if vocab is None or code <= 0:
            return str(code)
        return str(vocab.decode(pl.Series([code], dtype=pl.Int32))[0])

    def item_code(self, raw: str) -> int:
        return self.vocabs["item"].code_of(raw)

    def user_code(self, raw: str) -> int:
        return self.vocabs["user"].code_of(raw)
