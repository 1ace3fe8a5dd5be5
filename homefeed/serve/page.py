"""Turning scattered candidates into what the client shows: slots of items, each with a reason.

A built page is kept as plain rows `[item_code, slot_index, score, channel, trigger_code]` so the
exposure templates can be stored as JSON in the user-state store and answered later without
running recall or rank again. `read_templates` reads that stored blob back checked: a value
written by another version, corrupted, or stored before a bound existed is refused, never served.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from homefeed.mechanism.exposure import ExposureState
from homefeed.mechanism.purchase_filter import PurchaseState, allowed
from homefeed.recall.merge import MergedCandidates
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.schemas import Item

REASONS = {
    "itemcf": "people who viewed {t} also viewed this",
    "swing": "often bought together with {t}",
    "ranki2i": "popular with people who clicked {t}",
    "crowd": "popular with shoppers like you",
    "retarget": "you looked at this recently",
    "popular": "trending now",
}


def reason_for(channel: str, trigger: str | None) -> str:
    """A short human-readable reason for a recommendation, from its channel and trigger item."""
    text = REASONS.get(channel, f"recommended by {channel}")
    return text.format(t=trigger or "an item you viewed") if "{t}" in text else text


@dataclass
class PageRows:
    """One template: JSON-able rows in page order, and its item codes (for exposure bookkeeping)."""

    rows: list[list]
    items: np.ndarray

    @classmethod
    def from_page(cls, page, cand_idx: np.ndarray, cands: MergedCandidates, slot_names: list[str]) -> "PageRows":
        filled = page.rows >= 0
        idx = cand_idx[page.rows[filled]]  # positions in the merged candidate list
        names = [str(n) for n in cands.names]
        rows = [[item, slot, score, names[c], trigger] for item, slot, score, c, trigger in zip(
            cands.items[idx].tolist(), page.slots[filled].tolist(), page.scores[filled].tolist(),
            cands.channels[idx].tolist(), cands.triggers[idx].tolist())]  # plain Python values, JSON-able
        return cls(rows, page.items.copy())


def rows_to_slots(bundle: ServingBundle, rows: list[list], slot_names: list[str]) -> dict[str, list[Item]]:
    """Response items per slot, ids decoded back to the shop's raw ids."""
    out: dict[str, list[Item]] = {name: [] for name in slot_names}
    for item, slot, score, channel, trigger, *extra in rows:
        trig = str(bundle.raw_item[trigger]) if trigger > 0 else None
        reason = extra[0] if extra else reason_for(channel, trig)
        out[slot_names[slot]].append(Item(item_id=str(bundle.raw_item[item]), score=round(score, 6), channel=channel,
                                          trigger=trig, reason=reason))
    return out


def promotion_page(bundle: ServingBundle, cands: MergedCandidates, scores: np.ndarray, slots: dict[str, int],
                   purchase: PurchaseState, now: int) -> list[list[list]]:
    """The promotion entrance: a main-venue slot of items, and venue slots chosen by the user's interest.

    Each venue's appeal is the sum of the user's top-3 predicted scores among its candidate items
    (interest aggregated over the venue, so one lucky item does not pick a venue); a venue is shown
    by its best item. Scores are shifted to be positive first, so sums compare fairly.
    """
    names = list(slots)
    keep = allowed(purchase, bundle.standard_of[cands.items], now)
    venue = bundle.venue_of[cands.items]
    s = scores - scores.min() + 1e-6 if len(scores) else scores
    channel = cands.channel_names()
    rows: list[list] = []
    main_n = slots.get(names[0], 0)
    order = np.argsort(-s, kind="stable")
    used: set[int] = set()
    for i in order:  # main venue slot: the best items that are in some venue
        if len(rows) >= main_n:
            break
        if keep[i] and venue[i] >= 0:
            rows.append([int(cands.items[i]), 0, float(scores[i]), str(channel[i]), int(cands.triggers[i])])
            used.add(int(cands.items[i]))
    if len(names) > 1:
        ok = keep & (venue >= 0) & ~np.isin(cands.items, list(used))
        venues = np.unique(venue[ok])
        appeal = []
        for v in venues:  # few dozen venues at most among ~500 candidates
            member = np.flatnonzero(ok & (venue == v))
            best = member[np.argsort(-s[member], kind="stable")]
            appeal.append((float(s[best[:3]].sum()), int(v), int(best[0]), len(member)))
        appeal.sort(key=lambda a: (-a[0], a[1]))
        for total, v, i, n in appeal[: slots[names[1]]]:
            rows.append([int(cands.items[i]), 1, float(total), str(channel[i]), int(cands.triggers[i]),
                         f"venue {bundle.raw_venue(v)}: matches your interest in {n} of its items"])
    return [rows]


def plain_page(bundle: ServingBundle, cands: MergedCandidates, scores: np.ndarray, slots: dict[str, int]) -> list[list[list]]:
    """The page without the mechanism (`serve.mechanism=false`): each slot, in layout order, filled with its best
    eligible candidates by score (ties in recall order), an item once per page; no scattering, no purchase filter."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    channel = cands.channel_names()
    rows: list[list] = []
    used = np.zeros(len(cands), bool)
    for s, (name, n) in enumerate(slots.items()):
        mask = bundle.pool_mask.get(name)
        eligible = order if mask is None else order[mask[cands.items[order]]]
        eligible = eligible[~used[eligible]][:n]
        used[eligible] = True
        rows += [[int(cands.items[i]), s, float(scores[i]), str(channel[i]), int(cands.triggers[i])] for i in eligible]
    return [rows]


# --- the stored templates blob -----------------------------------------------------------------
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]  # numpy's width for codes and times
Row = Union[tuple[Int64, Int64, float, str, Int64], tuple[Int64, Int64, float, str, Int64, str]]


class _Log(BaseModel):
    """Pages served, for the ranker's item_shown_* counts: their times and item codes."""

    model_config = ConfigDict(extra="forbid")
    ts: list[Int64] = []
    items: list[list[Int64]] = []


class _TemplatesBlob(BaseModel):
    """The shape of the per-user templates blob (JSON in the state store)."""

    model_config = ConfigDict(extra="forbid")  # what the store could not decode reads as {"__unreadable__": ...}
    bundle: str | None = None  # version of the bundle whose item codes the rows and the log hold
    scene: str | None = None
    slots: dict[str, int] | None = None
    state: ExposureState = Field(default_factory=ExposureState)
    rows: list[list[Row]] = []  # per template, the page rows (see the module docstring)
    exposed: _Log = Field(default_factory=_Log)


@dataclass
class StoredTemplates:
    """A templates blob read back and checked. `rows` and `exposed` are empty unless written under `bundle`."""

    bundle: str | None
    scene: str | None
    slots: dict[str, int] | None
    state: ExposureState
    rows: list[list[list | tuple]]  # per template, its page rows
    exposed: dict[str, list]

    def serves(self, version: str, scene: str, slots: dict[str, int]) -> bool:
        """True when the stored rotation was built by this bundle for this scene and these slots."""
        return self.bundle == version and self.scene == scene and self.slots == slots and bool(self.rows)

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "scene": self.scene, "slots": self.slots, "state": plain(self.state),
                "rows": self.rows, "exposed": self.exposed}


def read_templates(blob: dict | None, version: str, n_items: int) -> StoredTemplates | None:
    """`blob` checked for shape, int64 range and (when written under `version`) item codes below `n_items`.

    Returns None for a missing blob; raises ValueError, naming what is wrong, for a bad one.
    """
    if blob is None:
        return None
    try:
        b = _TemplatesBlob.model_validate(blob)
    except ValidationError as e:
        raise ValueError("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])) from None
    scalars = [v for v in plain(b.state).values() if isinstance(v, int)]
    if scalars and not INT64_MIN <= min(scalars) <= max(scalars) <= INT64_MAX:
        raise ValueError("state: an integer outside int64")
    if len(b.exposed.ts) != len(b.exposed.items):
        raise ValueError(f"exposed: {len(b.exposed.ts)} times for {len(b.exposed.items)} pages")
    if b.bundle != version:  # another bundle's codes: keep only what does not depend on them
        return StoredTemplates(b.bundle, b.scene, b.slots, ExposureState(last_behavior_ts=b.state.last_behavior_ts), [],
                               {"ts": [], "items": []})
    codes = [*b.state.templates, b.state.shown, *b.exposed.items]
    if any(c and not (-1 <= min(c) and max(c) < n_items) for c in codes):
        raise ValueError(f"an item code outside -1..{n_items - 1}")
    n_slots = len(b.slots or {})
    for page in b.rows:
        if not page:
            continue
        columns = list(zip(*page))  # in C; a row may carry a reason as a sixth field
        items, slots, triggers = columns[0], columns[1], columns[4]
        if not (0 < min(items) and max(items) < n_items and 0 <= min(slots) and max(slots) < n_slots and max(triggers) < n_items):
            raise ValueError(f"a row with an item code outside 1..{n_items - 1} or a slot outside 0..{n_slots - 1}")
    return StoredTemplates(b.bundle, b.scene, b.slots, b.state, b.rows, {"ts": b.exposed.ts, "items": b.exposed.items})


def plain(state) -> dict:
    """A dataclass state as a dict, without `dataclasses.asdict`'s deep copy of every list (its fields are JSON already)."""
    return {f: getattr(state, f) for f in state.__dataclass_fields__}
