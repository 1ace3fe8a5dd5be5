"""Live A/B in the service (`serve.experiment`): which arm a user is in, each arm's settings, its live traffic.

A user's arm is a salted hash of the user id (blake2b of "salt NUL user id", not Python's per-process
`hash`) cut at the arms' cumulative shares: the same in every worker, after every restart, whatever
order users arrive in. The simulator's experiments (`homefeed.experiment.arms.assign`) use the same hash.

An arm's config is the server's config with the arm's `overrides` (`--set`-style lines) on top. Only
settings the pipeline reads while serving may be overridden; anything a bundle build decides (recall
channels, the model) needs its own bundle (`bundle = "path"`), and the store is the server's.

Live traffic: every worker counts its arms' pages, items shown and new events (`Traffic`), and adds
them every second to one blob per arm in the shared state store, so `GET /admin/experiments` shows all
workers' totals and their CTR (clicks posted / items shown).

    >>> arm_index(["u1", "u2"], [0.5, 0.5], salt="ab")            # doctest: +SKIP
    array([1, 0])
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable

import numpy as np

from homefeed.config import Config, ConfigError, ExperimentArm, load_config

EXPERIMENT_USER = "__homefeed_experiment__"  # the store's user id under which the arms' live totals are kept
# Settings an arm may override: those the pipeline reads while serving (prefixes of dotted keys).
SERVING_KEYS = ("serve.rank", "serve.mechanism", "serve.slots", "serve.promotion_slots", "serve.recall_budget_ms",
                "serve.exposure_pages", "mechanism.exposure", "mechanism.scatter", "mechanism.purchase",
                "recall.k_per_channel", "recall.merge")
COUNTS = ("pages", "items", "events", "clicks", "buys")


def unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from the text (the first 8 bytes of blake2b)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2.0**64


def arm_index(user_ids: Iterable[str], shares, *, salt: str) -> np.ndarray:
    """The arm index (int64) of each user: stable, independent of order and process, balanced to the shares
    (weights, normalised; e.g. [0.5, 0.5] or [1, 1])."""
    weights = np.asarray([float(s) for s in shares], np.float64)
    if not len(weights) or (weights <= 0).any():
        raise ValueError(f"arm shares must be positive, got {list(shares)}")
    cuts = np.cumsum(weights / weights.sum())
    u = np.array([unit_hash(f"{salt}\0{uid}") for uid in user_ids], np.float64)
    return np.minimum(np.searchsorted(cuts, u, side="right"), len(weights) - 1).astype(np.int64)


def salt_of(experiment) -> str:
    """The hash salt of a `serve.experiment`: its salt, else its name."""
    return experiment.salt or experiment.name


def arm_config(base: Config, arm: ExperimentArm) -> Config:
    """The server's config with the arm's overrides on top; an override outside SERVING_KEYS is refused, naming it."""
    for line in arm.overrides:
        if "=" not in line:
            raise ConfigError(f"serve.experiment arm {arm.name!r}: override {line!r}: expected key.sub=value")
        key = line.split("=", 1)[0].strip()
        if not any(key == k or key.startswith(k + ".") for k in SERVING_KEYS):
            raise ConfigError(f"serve.experiment arm {arm.name!r}: override {key!r} is not a serving setting (a bundle "
                              f"build or the server decides it; give the arm its own `bundle`); allowed: {', '.join(SERVING_KEYS)}")
    if not arm.overrides:
        return base
    try:
        return load_config(None, flatten(base.model_dump(mode="json")) + list(arm.overrides))
    except ConfigError as e:
        raise ConfigError(f"serve.experiment arm {arm.name!r}: {e}") from None


def flatten(tree: dict, prefix: str = "") -> list[str]:
    """A nested settings table as `a.b=json` overrides (what `load_config` takes)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def check_control(experiment) -> None:
    """The control arm serves exactly what a server without experiments serves: the served bundle, no overrides."""
    control = next((a for a in experiment.arms if a.name == experiment.control), None)
    if control is not None and (control.bundle or control.overrides):
        raise ConfigError(f"serve.experiment control arm {control.name!r} must serve the server's own bundle and "
                          f"settings (bundle \"\" and no overrides): its users get the page of a server without experiments")


class Traffic:
    """This worker's per-arm counts not yet added to the store's totals (thread-safe)."""

    def __init__(self, experiment: str, arms: list[str]):
        self.experiment, self.arms = experiment, list(arms)
        self._lock = threading.Lock()
        self._pending = {a: dict.fromkeys(COUNTS, 0) for a in self.arms}

    def page(self, arm: str, items: int) -> None:
        with self._lock:
            self._pending[arm]["pages"] += 1
            self._pending[arm]["items"] += items

    def events(self, arm: str, behaviors: list[str]) -> None:
        with self._lock:
            c = self._pending[arm]
            c["events"] += len(behaviors)
            c["clicks"] += behaviors.count("click")
            c["buys"] += behaviors.count("buy")

    def key(self, arm: str) -> str:
        return f"{self.experiment}/{arm}"

    def flush(self, store) -> None:
        """Add the pending counts to each arm's blob in the store (an atomic update; on a store fault they stay pending)."""
        with self._lock:
            pending, self._pending = self._pending, {a: dict.fromkeys(COUNTS, 0) for a in self.arms}
        done = []
        try:
            for arm, delta in pending.items():
                if any(delta.values()):
                    store.update_blob(EXPERIMENT_USER, self.key(arm), lambda cur, d=delta: _added(cur, d))
                done.append(arm)
        finally:
            with self._lock:
                for arm in set(pending) - set(done):
                    for k, v in pending[arm].items():
                        self._pending[arm][k] += v

    def totals(self, store) -> dict[str, dict[str, int]]:
        """Every worker's totals per arm, after adding this worker's pending counts."""
        self.flush(store)
        return {arm: _added(store.get_blob(EXPERIMENT_USER, self.key(arm)), {}) for arm in self.arms}


def _added(current: dict | None, delta: dict[str, int]) -> dict[str, int]:
    """The stored counts plus `delta` (a count that is missing or not a whole number reads as 0)."""
    cur = current if isinstance(current, dict) else {}
    return {k: (cur.get(k) if isinstance(cur.get(k), int) and cur.get(k) >= 0 else 0) + delta.get(k, 0) for k in COUNTS}
