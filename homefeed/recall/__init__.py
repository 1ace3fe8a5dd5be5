"""Recall channels, by the names config uses. One literal table; an unknown name lists the valid ones.

    >>> from homefeed.recall import make_channel
    >>> crowd = make_channel("crowd", min_group_users=100)      # CrowdSettings(min_group_users=100)
"""
from homefeed.recall.base import Candidates, Recaller
from homefeed.recall.crowd import Crowd
from homefeed.recall.graph.channel import EGES, DeepWalk
from homefeed.recall.itemcf import ItemCF
from homefeed.recall.merge import MergedCandidates, Merger, MergeSettings
from homefeed.recall.mind import MIND, MIND1
from homefeed.recall.popular import Popular
from homefeed.recall.ranki2i import RankI2I
from homefeed.recall.retarget import Retarget
from homefeed.recall.swing import Swing

CHANNELS: dict[str, type[Recaller]] = {
    "itemcf": ItemCF,
    "swing": Swing,
    "ranki2i": RankI2I,
    "crowd": Crowd,
    "retarget": Retarget,
    "popular": Popular,
    "deepwalk": DeepWalk,
    "eges": EGES,
    "mind": MIND,
    "mind1": MIND1,
}


def make_channel(name: str, **settings) -> Recaller:
    """An unfitted channel `name` with its settings class built from `settings` (unknown keys are errors)."""
    if name not in CHANNELS:
        raise ValueError(f"unknown recall channel {name!r}; valid channels: {', '.join(CHANNELS)}")
    cls = CHANNELS[name]
    unknown = sorted(set(settings) - set(cls.Settings.model_fields))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for channel {name!r}; valid: {', '.join(cls.Settings.model_fields)}")
    return cls(settings=cls.Settings(**settings))


__all__ = ["CHANNELS", "Candidates", "Crowd", "DeepWalk", "EGES", "ItemCF", "MIND", "MIND1", "MergeSettings", "MergedCandidates", "Merger", "Popular",
           "RankI2I", "Recaller", "Retarget", "Swing", "make_channel"]
