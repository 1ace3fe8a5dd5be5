"""The recall stage as one bundle part: the configured channels and their merger, fitted, saved, scored.

`RecallPart.fit(dataset, settings)` runs `fit_recall`: when the dataset has validation days (and
`merge.learn` is on), the channels in `settings.channels` are fitted on the training days, the
merge shares and the seen-item factor are learned from their hits on the validation days
(`recall.shares.learn_merge`), and the channels are refitted on train + valid, the data they serve
from; without validation days the channels are fitted on the training part and the merger keeps
its configured shares. Exposures in the log then move the shares toward measured CTRs. Channels and
merge are scored on the test part with `evaluate_recall`, the same code `homefeed evaluate recall`
runs: what is evaluated is what is served.

`RecallSettings` is the `[recall]` section typed: channel names are checked against `CHANNELS`,
each channel's knob table against that channel's settings class, and merge quotas against the
configured channels, so a typo fails when the config loads, naming the key and the valid ones.

    >>> part = RecallPart().fit(dataset, RecallSettings.from_section(cfg.recall))   # doctest: +SKIP
    >>> part.save(bundle / "recall"); part.metrics["merged"]["hitrate@50"]          # doctest: +SKIP
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from homefeed.config import Section, typed
from homefeed.data.dataset import Dataset, serving_dataset
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


ChannelFitter = Callable[[Dataset, list[str], dict[str, dict]], dict[str, Recaller]]
"""What fits the channels: `fit_channels`, or an engine's drop-in with its signature (`--engine spark`)."""


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


def fit_recall(dataset: Dataset, settings: RecallSettings, *, progress=None,
               fitter: ChannelFitter | None = None) -> tuple[dict[str, Recaller], Merger, Dataset]:
    """The served channels and merger: (channels, merger, the dataset the channels were last fitted on).

    With validation days and `merge.learn`: channels on train -> shares learned on valid -> channels
    refitted on train + valid. Otherwise: channels and merger on the training part. Either way the
    training exposures then adapt the shares (one CTR step, log channel names mapped to these channels).
    `fitter` fits the channels (default `fit_channels`; the CLI passes the Spark engine's drop-in).
    """
    from homefeed.recall.shares import learn_merge

    say = progress or (lambda text: None)
    fit_channels_ = fitter or fit_channels
    knobs = settings.knobs()
    if not (settings.merge.learn and dataset.events_in("valid").height):
        channels = fit_channels_(dataset, settings.channels, knobs)
        return channels, Merger(settings=settings.merge).fit(dataset, served=settings.channels), dataset
    say(f"recall: fit {', '.join(settings.channels)} on the training days")
    on_train = fit_channels_(dataset, settings.channels, knobs)
    merger = learn_merge(dataset, on_train, settings.merge, behaviors=tuple(settings.relevant_behaviors), progress=say)
    dataset = serving_dataset(dataset)
    say("recall: refit on train + valid")
    channels = fit_channels_(dataset, settings.channels, knobs)
    exposures = dataset.exposures_in("train")
    if exposures is not None and exposures.height and settings.merge.adapt:
        merger.update(exposures, served=settings.channels)
    return channels, merger, dataset


class RecallPart:
    """The fitted channels and merger of one bundle, with their test metrics."""

    name = "recall"

    def __init__(self, channels: dict[str, Recaller] | None = None, merger: Merger | None = None):
        self.channels = channels or {}
        self.merger = merger
        self.metrics: dict = {}

    def fit(self, dataset: Dataset, settings: RecallSettings = RecallSettings(), *, max_eval_users: int = 5000,
            progress=None, fitter: ChannelFitter | None = None) -> "RecallPart":
        """Fit channels and merger (`fit_recall`: shares learned on the validation days when there are any, the
        channels by `fitter`, default `fit_channels`); score them on the test part."""
        from homefeed.recall.evaluate import evaluate_recall

        self.channels, self.merger, served = fit_recall(dataset, settings, progress=progress, fitter=fitter)
        result = evaluate_recall(served, self.channels, self.merger, ks=(20, 50, 200), part="test",
                                 behaviors=tuple(settings.relevant_behaviors), max_users=max_eval_users)
        self.metrics = {"merged": result.get("merged", {}), "channels": result["channels"],
                        "shares": result["setup"]["shares"], "seen_weight": self.merger.seen_weight_,
                        "learned": self.merger.learned_}
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
