"""Experiment arms: what each arm serves (a TOML file), and which users it gets (a stable salted hash).

An arm file is a homefeed config file (any section of `homefeed/default.toml`, applied over the
defaults) plus an optional `[arm]` table saying how the arm serves:

    # experiments/itemcf.toml
    [arm]
    description = "Item-CF only: no rank, no mechanism"
    rank = false          # serve the merged recall order (the bundle is built without its rank part)
    mechanism = false     # no purchase filter, no scattering beyond de-duplication, one page per rebuild

    [recall]
    channels = ["itemcf"]

`bundle = "path"` serves a prebuilt bundle instead of building one (relative to the arm file).
`ranker = "shuffled"` shuffles the model's scores per request: a negative control that must lose.

Users are split by `assign`: a hash of (salt, user id) mapped to [0, 1) and cut at the arms'
cumulative shares, so a user's arm never depends on the order users arrive in, on the process, or
on the other users (blake2b, not Python's per-process `hash`).

    >>> arms = [load_arm("itemcf"), load_arm("full")]            # doctest: +SKIP
    >>> assign(["u1", "u2", "u3"], ["itemcf", "full"])            # doctest: +SKIP
    array([1, 0, 1])
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from homefeed.config import Config, ConfigError, Section, load_config
from homefeed.mechanism.purchase_filter import BlockingPeriods

EXAMPLES = Path(__file__).resolve().parents[2] / "experiments"  # the arm files shipped with the repository

# Serving settings of an arm without the page mechanism: scattering keeps only the hard
# "an item once per page" rule, one page per rebuild and a rebuild on every request (no rotation).
MECHANISM_OFF = [
    'mechanism.scatter.rules=[{"dim": "item_id", "window": 0, "max_count": 1, "hard": true}]',
    "mechanism.exposure.n_templates=1",
    "mechanism.exposure.max_age_s=0",
]
SERVE_ONLY = ("serve", "world")  # config sections that never change what a bundle build writes
SERVE_ONLY_MECHANISM = ("scatter", "exposure")  # mechanism knobs read at serving only


class ArmSettings(Section):
    """The `[arm]` table of an arm file."""

    description: str = ""
    bundle: str | None = None  # a prebuilt bundle folder to serve (relative to the arm file); None: build one
    rank: bool = True  # False: serve the merged recall order, no model
    mechanism: bool = True  # False: no purchase filter, no scattering beyond de-duplication, no template rotation
    ranker: Literal["model", "shuffled"] = "model"  # shuffled: the model's scores permuted per request (a control)
    share: float = 1.0  # relative traffic share


@dataclass
class Arm:
    """One arm: its name (the file's stem), how it serves, and its full config (defaults + the file)."""

    name: str
    settings: ArmSettings
    config: Config
    path: Path | None = None

    @property
    def bundle_path(self) -> Path | None:
        if self.settings.bundle is None:
            return None
        p = Path(self.settings.bundle)
        return p if p.is_absolute() or self.path is None else (self.path.parent / p)

    def build_key(self) -> str:
        """A hash of everything that changes what a bundle build writes: arms with equal keys share a build."""
        cfg = self.config.model_dump(mode="json", exclude=set(SERVE_ONLY))
        for k in SERVE_ONLY_MECHANISM:
            cfg["mechanism"].pop(k, None)
        return _digest({"config": cfg, "rank": self.settings.rank})

    def mechanism_key(self) -> str:
        """A hash of what the bundle's mechanism part depends on (shared across arms when equal)."""
        cfg = self.config.model_dump(mode="json", include={"ingest", "cleaning", "mechanism"})
        for k in SERVE_ONLY_MECHANISM:
            cfg["mechanism"].pop(k, None)
        return _digest(cfg)

    def serving_config(self) -> Config:
        """The config the arm's pipeline runs with (the mechanism switched off when the arm says so)."""
        if self.settings.mechanism:
            return self.config
        tree = self.config.model_dump(mode="json")
        return load_config(None, flatten(tree) + MECHANISM_OFF)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def flatten(tree: dict, prefix: str = "") -> list[str]:
    """A nested settings table as `a.b=json` overrides (what `load_config` takes)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def find_arm_file(ref: str | Path) -> Path:
    """An arm file by path, or by name in ./experiments/ or the repository's experiments/ folder."""
    p = Path(ref)
    candidates = [p] if p.suffix == ".toml" else [p.with_suffix(".toml"), Path("experiments") / f"{ref}.toml",
                                                   EXAMPLES / f"{ref}.toml"]
    for c in candidates:
        if c.is_file():
            return c
    shipped = sorted(f.stem for f in EXAMPLES.glob("*.toml"))
    raise FileNotFoundError(f"arm {str(ref)!r}: no file {' or '.join(map(str, candidates))}; "
                            f"shipped arms: {', '.join(shipped) or 'none'}")


def load_arm(ref: str | Path, *, base: list[str] | tuple[str, ...] = ()) -> Arm:
    """Read an arm file; `base` are `key=value` overrides applied under the file's own settings."""
    path = find_arm_file(ref)
    try:
        tree = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"arm file {path}: not valid TOML: {e}") from None
    arm_table = tree.pop("arm", {})
    try:
        settings = ArmSettings.model_validate(arm_table)
    except ValueError as e:
        raise ConfigError(f"arm file {path}: [arm] {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}; "
                          f"valid keys: {', '.join(ArmSettings.model_fields)}") from None
    if settings.share <= 0:
        raise ConfigError(f"arm file {path}: [arm] share must be > 0, got {settings.share}")
    try:
        config = load_config(None, list(base) + flatten(tree))
    except ConfigError as e:
        raise ConfigError(f"arm file {path}: {e}") from None
    return Arm(name=path.stem, settings=settings, config=config, path=path.resolve())


def assign(user_ids, shares, *, salt: str = "homefeed") -> np.ndarray:
    """The arm index (int64) of each user: stable, independent of order, balanced to the shares.

    shares: one weight per arm (e.g. [1, 1] or the arms' `share`), or the arm names for equal shares.
    """
    weights = np.array([1.0 if isinstance(s, str) else float(s) for s in shares], np.float64)
    if not len(weights) or (weights <= 0).any():
        raise ValueError(f"arm shares must be positive, got {list(shares)}")
    cuts = np.cumsum(weights / weights.sum())
    u = np.array([_unit_hash(f"{salt}\0{uid}") for uid in user_ids], np.float64)
    return np.minimum(np.searchsorted(cuts, u, side="right"), len(weights) - 1).astype(np.int64)


def _unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from the text (the first 8 bytes of blake2b)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2.0**64


class ShuffledRanker:
    """Wraps a served ranker and permutes its scores per request: the ranking carries no information."""

    def __init__(self, inner, seed: int = 0):
        self.inner, self.rng = inner, np.random.default_rng(seed)

    def __getattr__(self, name):  # online tables etc. stay those of the wrapped ranker
        return getattr(self.inner, name)

    def score(self, *args, **kwargs) -> np.ndarray:
        return self.rng.permutation(np.asarray(self.inner.score(*args, **kwargs)))


def apply_serving(bundle, arm: Arm, seed: int = 0):
    """The loaded bundle as the arm serves it: ranker dropped or shuffled, purchase blocks of length 0."""
    if not arm.settings.rank:
        bundle.ranker = None
    elif arm.settings.ranker == "shuffled" and bundle.ranker is not None:
        bundle.ranker = ShuffledRanker(bundle.ranker, seed)
    if not arm.settings.mechanism:  # a bought category is blocked until the second of the purchase: never
        empty = pl.DataFrame({"standard_category": pl.Series([], dtype=pl.Int64), "block_days": pl.Series([], dtype=pl.Float64)})
        bundle.periods = BlockingPeriods(empty, default_days=0.0)
    return bundle
