"""Retargeting: bring back what the user recently viewed, clicked, favoured or carted but has not bought.

A cart left unpaid or a favourite not yet bought is the strongest purchase signal a shop has, and on
many shops people come back to items they viewed (on the Taobao logs most next-day views are such
returns; on review logs none are), so a homepage shows some of them again ("you looked at this").
Only actions inside a time window count, an item the user has bought is dropped, and a strict quota
caps how many are returned however large k is. How much of the page they get is the merge's call,
learned per shop from validation (`recall.shares`): a feed full of things already seen feels stale
where people do not return.

    score(i) = sum over qualifying events e on i of  w[behavior_e] * 0.5 ** ((t - ts_e) / half_life)

with t the user's latest event (`from_latest`, so a user back after a month sees what they were on)
or the request time. The trigger of each candidate is the item itself ("you carted this").

    >>> Retarget(settings=RetargetSettings(quota=2)).recall(state, 50)   # doctest: +SKIP
    Candidates(items=[12, 7], ...)                                       # carted 12 today, faved 7 yesterday
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.recall.base import Candidates, Recaller
from homefeed.recall.popular import check_behaviors


class RetargetSettings(Section):
    weights: dict[str, float] = Field(  # behaviours that qualify, and their weight
        default_factory=lambda: {"pv": 1.0, "click": 1.0, "fav": 2.0, "cart": 3.0})
    window_days: float = 30.0  # only actions at most this old count
    half_life_days: float = 3.0  # recency decay of each action
    quota: int = 50  # strict cap on candidates, whatever k is asked
    exclude_bought: bool = True  # drop items the user has bought (anywhere in the state)
    from_latest: bool = True  # ages count from the user's latest event, not from now (a user back after a month sees what they were on)


class Retarget(Recaller):
    """Recent viewed/clicked/faved/carted items not bought, scored by weighted recency, at most `quota`.

    Nothing is learned: `fit` only checks the settings and returns self.
    """

    name = "retarget"
    Settings = RetargetSettings

    def __init__(self, *, settings: RetargetSettings | None = None):
        self.settings = settings or RetargetSettings()
        check_behaviors(self.settings.weights, "retarget.weights")
        if self.settings.quota < 0:
            raise ValueError(f"retarget.quota must be >= 0, got {self.settings.quota}")
        codes = np.full(max(BEHAVIOR_CODE.values()) + 1, 0.0, np.float32)
        for b, w in self.settings.weights.items():
            codes[BEHAVIOR_CODE[b]] = w
        self._weight_of_code = codes  # behaviour code -> weight (0 = does not qualify)
        self._buy = BEHAVIOR_CODE["buy"]

    def fit(self, dataset: Dataset) -> "Retarget":
        self.fitted_ = True
        return self

    def save(self, path: Path) -> None:
        """Retargeting learns nothing offline: only its settings are saved."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "settings.json").write_text(self.settings.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path) -> "Retarget":
        settings = RetargetSettings.model_validate_json((Path(path) / "settings.json").read_text())
        return cls(settings=settings).fit(None)

    def recall(self, state: UserState, k: int) -> Candidates:
        s = self.settings
        w = self._weight_of_code[state.behaviors]
        now = min(int(state.ts.max()), state.now) if s.from_latest and len(state.ts) else state.now
        qualifies = (w > 0) & (state.ts >= now - s.window_days * 86400)
        if not qualifies.any():
            return Candidates.empty(self.name)
        items, ts = state.items[qualifies], state.ts[qualifies]
        decay = np.power(0.5, (now - ts) / (s.half_life_days * 86400.0))
        uniq, inverse = np.unique(items, return_inverse=True)
        scores = np.bincount(inverse, weights=w[qualifies] * decay, minlength=uniq.size)
        if s.exclude_bought:
            keep = ~np.isin(uniq, state.items[state.behaviors == self._buy])
            uniq, scores = uniq[keep], scores[keep]
        return Candidates.top(uniq, scores, min(k, s.quota), self.name, triggers=uniq)
