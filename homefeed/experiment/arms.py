"""Experiment arms: what each arm serves (a TOML file), and which users it gets (a stable salted hash).

An arm file is a homefeed config file (any section of `homefeed/default.toml`, applied over the
defaults) plus an optional `[arm]` table saying how the arm serves:

    # experiments/itemcf.toml
    [arm]
    description = "Item-CF only: no rank, no mechanism"
    rank = false          # serve the merged recall order (the bundle is built without its rank part)
    mechanism = false     # the plain ranked list: no purchase filter, no scattering, no template rotation

    [recall]
    channels = ["itemcf"]

`bundle = "path"` serves a prebuilt bundle instead of building one (relative to the arm file).
`ranker = "shuffled"` shuffles the model's scores per request: a negative control that must lose.

The arm serves through the pipeline's own switches, `serve.rank` and `serve.mechanism` (the same ones
a live experiment arm of the service sets), so the simulator and the service share one code path.

Users are split by `assign`: a hash of (salt, user id) mapped to [0, 1) and cut at the arms'
cumulative shares, so a user's arm never depends on the order users arrive in, on the process, or
on the other users (blake2b, not Python's per-process `hash`; the service's `serve.experiment`
split, `homefeed.serve.experiments.arm_index`, is the same function).

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

from homefeed.config import Config, ConfigError, Section, load_config
from homefeed.serve.experiments import arm_index, flatten

EXAMPLES = Path(__file__).resolve().parents[2] / "experiments"  # the arm files shipped with the repository

SERVE_ONLY = ("serve", "world")  # config sections that never change what a bundle build writes
SERVE_ONLY_MECHANISM = ("scatter", "exposure")  # mechanism knobs read at serving only


class ArmSettings(Section):
    """The `[arm]` table of an arm file."""

    description: str = ""
    bundle: str | None = None  # a prebuilt bundle folder to serve (relative to the arm file); None: build one
    rank: bool = True  # False: serve the merged recall order, no model
    mechanism: bool = True  # False: the plain ranked list (no purchase filter, no scattering, no template rotation)
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
        """The config the arm's pipeline runs with: its file's, with `serve.rank` and `serve.mechanism` from [arm]."""
        if self.settings.rank and self.settings.mechanism:
            return self.config
        tree = self.config.model_dump(mode="json")
        return load_config(None, flatten(tree) + [f"serve.rank={json.dumps(self.settings.rank)}",
                                                  f"serve.mechanism={json.dumps(self.settings.mechanism)}"])


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


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
    return arm_index(user_ids, [1.0 if isinstance(s, str) else float(s) for s in shares], salt=salt)


class ShuffledRanker:
    """Wraps a served ranker and permutes its scores per request: the ranking carries no information."""

    def __init__(self, inner, seed: int = 0):
        self.inner, self.rng = inner, np.random.default_rng(seed)

    def __getattr__(self, name):  # online tables etc. stay those of the wrapped ranker
        return getattr(self.inner, name)

    def score(self, *args, **kwargs) -> np.ndarray:
        return self.rng.permutation(np.asarray(self.inner.score(*args, **kwargs)))


def apply_serving(bundle, arm: Arm, seed: int = 0):
    """The loaded bundle as the arm serves it: the ranker's scores shuffled for the `shuffled` control (rank and
    mechanism are switched off by `Arm.serving_config`, in the pipeline, not here)."""
    if arm.settings.ranker == "shuffled" and bundle.ranker is not None:
        bundle.ranker = ShuffledRanker(bundle.ranker, seed)
    return bundle
