"""Every setting checked at second 0: the config's knob tables typed by each stage's settings class.

`homefeed.config` is the ground floor and cannot know the stages' classes, so its `recall`, `rank`
and `mechanism` sections hold plain tables. `check_config` types all of them in one go (channel
names against `CHANNELS`, each channel's knobs against its settings class, merge quotas against
`recall.channels`, the rank preset and its overrides, the mechanism configs) before any work
starts. A problem is a `ConfigError` that names the key and the valid ones. `check_slots` checks
`serve.slots` against the material pools an item table declares.

    >>> settings = check_config(load_config(overrides=["recall.merge.quotas.itemcf=2"]))   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from pydantic import ValidationError

from homefeed.config import Config, ConfigError, load_config
from homefeed.mechanism.part import MechanismSettings
from homefeed.rank.part import RankPartSettings
from homefeed.recall.part import RecallSettings


@dataclass(frozen=True)
class PartSettings:
    """The typed settings of every bundle part."""

    recall: RecallSettings
    rank: RankPartSettings
    mechanism: MechanismSettings


def _first_error(section: str, e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"setting '{section}{'.' + loc if loc else ''}': {err['msg'].removeprefix('Value error, ')}"
    return f"setting '{section}': {e}"


def check_config(cfg: Config) -> PartSettings:
    """Type every stage's knob tables; raise ConfigError naming the first bad key."""
    typed = {}
    for section, cls in (("recall", RecallSettings), ("rank", RankPartSettings), ("mechanism", MechanismSettings)):
        try:
            typed[section] = cls.from_section(getattr(cfg, section))
        except ConfigError:
            raise
        except (ValidationError, ValueError, TypeError) as e:
            raise ConfigError(_first_error(section, e)) from None
    return PartSettings(**typed)


def load_checked_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, PartSettings]:
    """`load_config` and then `check_config`: what the command line runs before any work."""
    cfg = load_config(path, overrides)
    return cfg, check_config(cfg)


def material_pools(items: pl.DataFrame) -> set[str]:
    """The pool names the item table declares (empty when it has no `pools` column)."""
    if "pools" not in items.columns:
        return set()
    return {str(p) for p in items.select(pl.col("pools").explode().drop_nulls().unique())["pools"].to_list()}


def check_slots(slots: dict[str, int], pools: set[str], *, key: str = "serve.slots") -> None:
    """Every slot must name a material pool when the catalogue has pools (else it would show any item)."""
    if not pools:
        return
    unknown = sorted(set(slots) - pools)
    if unknown:
        raise ConfigError(f"{key}: slot(s) {unknown} match no material pool of the catalogue; "
                          f"valid slots: {', '.join(sorted(pools))}")
