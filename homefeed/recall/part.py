"""The recall stage as one bundle part: the configured channels and their merger, fitted, saved, scored.

`RecallPart.fit(dataset, settings)` fits every channel in `settings.channels` (`fit_channels`) and
the `Merger` on the dataset's training part, then scores channels and merge on its test part with
`evaluate_recall`, the same code `homefeed evaluate recall` runs: what is evaluated is what is served.
The bundle passes a dataset whose training part is everything before the test days.

`RecallSettings` is the `[recall]` section typed: channel names are checked against `CHANNELS`,
each channel's knob table against that channel's settings class, and merge quotas against the
configured channels, so a typo fails when the config loads, naming the key and the valid ones.

    >>> part = RecallPart().fit(dataset, RecallSettings.from_section(cfg.recall))   # doctest: +SKIP
    >>> part.save(bundle / "recall"); part.metrics["merged"]["hitrate@50"]          # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from homefeed.config import Section, typed
from homefeed.data.dataset import Dataset
from homefeed.data.schema import BEHAVIORS
from homefeed.recall import CHANNELS, Merger, MergeSettings, Recaller, make_channel


def fit_channels(dataset: Dataset, names: list[str] | None = None, settings: dict[str, dict] | None = None) -> dict[str, Recaller]:
    """Build and fit the named channels (default: all of `CHANNELS`) with optional per-channel settings.

    Ranki2i re-scores its base table; when that base channel is among `names` with default settings,
    its fitted table is reused instead of being fitted twice.
    """
    names = list(CHANNELS) if names is None else list(names)
    settings = settings or {}
    fitted: dict[str, Recaller] = {}
    for name in sorted(names, key=lambda n: n == "ranki2i"):  # ranki2i last, after its base
        channel = make_channel(name, **settings.get(name, {}))
        base = getattr(channel.settings, "base", None) if name == "ranki2i" else None
        if base in fitted and not settings.get(base):
            channel.base_table = fitted[base].table_
        fitted[name] = channel.fit(dataset)
    return {name: fitted[name] for name in names}


def _channel_names(names: list[str], where: str) -> None:
    unknown = [n for n in names if n not in CHANNELS]
    if unknown:
        raise ValueError(f"{where}: unknown channel(s) {unknown}; valid channels: {', '.join(CHANNELS)}")


class RecallSettings(Section):
    """The `[recall]` section, typed and cross-checked."""

    channels: list[str] = ["itemcf", "swing", "ranki2i", "crowd", "retarget", "popular"]
    k_per_channel: int = Field(200, ge=1, le=10_000)
    channel_settings: dict[str, BaseModel] = Field(default_factory=dict)  # name -> that channel's Settings
    merge: MergeSettings = MergeSettings()
    relevant_behaviors: list[str] = list(BEHAVIORS)

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, names: list[str]) -> list[str]:
        _channel_names(names, "recall.channels")
        if len(set(names)) != len(names):
            raise ValueError(f"recall.channels lists a channel twice: {names}")
        return names

    @field_validator("relevant_behaviors")
    @classmethod
    def _known_behaviors(cls, names: list[str]) -> list[str]:
        unknown = [b for b in names if b not in BEHAVIORS]
        if unknown:
            raise ValueError(f"recall.relevant_behaviors: unknown behaviour(s) {unknown}; valid: {', '.join(BEHAVIORS)}")
        return names

    @model_validator(mode="after")
    def _cross_checked(self) -> "RecallSettings":
        unknown = [q for q in self.merge.quotas if q not in self.channels]
        if unknown:
            raise ValueError(f"recall.merge.quotas: {unknown} match no configured channel; "
                             f"recall.channels: {', '.join(self.channels)}")
        return self

    @classmethod
    def from_section(cls, section) -> "RecallSettings":
        """The `homefeed.config.Recall` section (plain knob tables) as typed settings; errors name the key."""
        _channel_names(list(section.channel_settings), "recall.channel_settings")
        knobs = {name: typed(CHANNELS[name].Settings, table, f"recall.channel_settings.{name}")
                 for name, table in section.channel_settings.items()}
        return cls(channels=list(section.channels), k_per_channel=section.k_per_channel, channel_settings=knobs,
                   merge=typed(MergeSettings, section.merge, "recall.merge"), relevant_behaviors=list(section.relevant_behaviors))

    def knobs(self) -> dict[str, dict]:
        """Per-channel settings as the plain dicts `fit_channels` takes (only keys set explicitly)."""
        return {name: s.model_dump(exclude_unset=True) for name, s in self.channel_settings.items()}


class RecallPart:
    """The fitted channels and merger of one bundle, with their test metrics."""

    name = "recall"

    def __init__(self, channels: dict[str, Recaller] | None = None, merger: Merger | None = None):
        self.channels = channels or {}
        self.merger = merger
        self.metrics: dict = {}

    def fit(self, dataset: Dataset, settings: RecallSettings = RecallSettings(), *, max_eval_users: int = 5000) -> "RecallPart":
        """Fit channels and merger on `dataset`'s training part; score them on its test part."""
        from homefeed.recall.evaluate import evaluate_recall

        self.channels = fit_channels(dataset, settings.channels, settings.knobs())
        self.merger = Merger(settings=settings.merge).fit(dataset)
        result = evaluate_recall(dataset, self.channels, self.merger, ks=(20, 50, 200), part="test",
                                 behaviors=tuple(settings.relevant_behaviors), max_users=max_eval_users)
        self.metrics = {"merged": result.get("merged", {}), "channels": result["channels"],
                        "shares": result["setup"]["shares"]}
        return self

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, channel in self.channels.items():
            channel.save(folder / name)
        self.merger.save(folder / "merger")
        (folder / "channels.json").write_text(json.dumps(list(self.channels)))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "RecallPart":
        folder = Path(folder)
        names = json.loads((folder / "channels.json").read_text())
        return cls({name: CHANNELS[name].load(folder / name) for name in names}, Merger.load(folder / "merger"))
