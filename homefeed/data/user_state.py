"""What the online stages know of one user at request time: profile and recent behaviour.

The same record is built offline (from an event log, strictly before a point in time, for
evaluation and training) and online (from the user-state store), so recall and rank code cannot
tell the two apart.

    >>> s = UserState(user_id=3, now=100, items=np.array([7, 9]), behaviors=np.array([0, 4]), ts=np.array([10, 90]))
    >>> s.recent(behaviors=("buy",)).tolist()
    [9]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from homefeed.data.schema import BEHAVIORS

BEHAVIOR_CODE = {b: i for i, b in enumerate(BEHAVIORS)}


@dataclass
class UserState:
    """One user at time `now`. Arrays are aligned, oldest first, and hold only events before `now`.

    Attributes:
        user_id: user code (0 = unknown user).
        now: request time, unix seconds.
        items: (n,) int32 item codes.
        behaviors: (n,) int8 indexes into `schema.BEHAVIORS`.
        ts: (n,) int64 event times.
        profile: raw profile values (gender, age, city, purchase_power); missing keys are unknown.
    """

    user_id: int
    now: int
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    behaviors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    profile: dict = field(default_factory=dict)

    def recent(self, *, behaviors: tuple[str, ...] | None = None, since: int | None = None, n: int | None = None) -> np.ndarray:
        """Item codes of the chosen behaviours at or after `since`, newest last, at most `n`."""
        keep = np.ones(self.items.size, bool)
        if behaviors is not None:
            keep &= np.isin(self.behaviors, [BEHAVIOR_CODE[b] for b in behaviors])
        if since is not None:
            keep &= self.ts >= since
        items = self.items[keep]
        return items[-n:] if n is not None else items


def states_at(events: pl.DataFrame, users: pl.DataFrame | None, at_ts: int, *, max_len: int = 200,
              user_ids: np.ndarray | None = None) -> list[UserState]:
    """UserStates for `user_ids` (default: every user with events) from events strictly before `at_ts`.

    `events` is an encoded events frame; `users` (optional) supplies profiles. One group-by, no per-event Python.
    """
    past = events.filter(pl.col("ts") < at_ts).sort(["user_id", "ts"], maintain_order=True)
    grouped = past.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").tail(max_len), pl.col("behavior").to_physical().tail(max_len), pl.col("ts").tail(max_len)
    )
    if user_ids is None:
        user_ids = grouped["user_id"].to_numpy()
    by_user = {u: i for i, u in enumerate(grouped["user_id"].to_list())}
    profiles = {}
    if users is not None:
        cols = [c for c in ("gender", "age", "city", "purchase_power") if c in users.columns]
        for row in users.select(["user_id", *cols]).iter_rows(named=True):
            profiles[row.pop("user_id")] = row
    items, behaviors, ts = grouped["item_id"].to_list(), grouped["behavior"].to_list(), grouped["ts"].to_list()
    out = []
    for u in np.asarray(user_ids).tolist():
        i = by_user.get(u)
        if i is None:
            out.append(UserState(user_id=int(u), now=at_ts, profile=profiles.get(u, {})))
        else:
            out.append(UserState(user_id=int(u), now=at_ts, items=np.asarray(items[i], np.int32),
                                 behaviors=np.asarray(behaviors[i], np.int8), ts=np.asarray(ts[i], np.int64),
                                 profile=profiles.get(u, {})))
    return out
