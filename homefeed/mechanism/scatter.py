"""Multi-dimensional scattering: re-order ranked candidates so a page never clumps.

A ranker scores items one at a time, so its top 40 for a dress lover may be 25 dresses, three of
them the same photo sold by different shops. Scattering re-orders the list under rules of the form
"within any `window` consecutive positions, at most `max_count` items share a value of `dim`", one
rule per dimension (item, standard category, brand, shop, venue, image group). `window = 0` means
the whole page: `item` and `image_group` with window 0, max 1 stop two channels of one page from
showing the same or near-identical items.

The page is one sequence of positions, each belonging to a slot (channel) of the homepage, e.g.
4 channels x 10 items interleaved in display order. Candidates are rows (item, score, slot): an
item eligible for several channels has one row per channel. Positions are filled in page order,
greedily: the best-scoring candidate of the position's slot that breaks no rule. The score-loss
bound `max_loss`: a pick may not score below `best - max_loss * |best|`, where `best` is the best
candidate still allowed by the hard rules; when no rule-abiding candidate is that good, the soft
rule broken is the least important one (rules are listed most important first) and the position
is marked `relaxed`. Hard rules are never broken (a position stays empty, -1, instead).
Greedy re-ranking with such windows is the MMR / sliding-window diversification family
(Carbonell & Goldstein 1998; "Tmall homepage" scattering).

    >>> rules = [Rule("item", 0, 1, hard=True), Rule("standard_category", 4, 1), Rule("brand", 6, 2)]
    >>> page = scatter(items, scores, slots, attributes=attrs, layout=np.tile(np.arange(4), 10), rules=rules)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import polars as pl

from homefeed.config import Section

DIMENSIONS = ("item_id", "standard_category", "brand", "shop", "venue", "image_group")
MISSING = -1  # attribute value that never collides (e.g. an item in no venue)


class Rule(Section):
    dim: str  # a column of ItemAttributes, e.g. "brand"
    window: int = 0  # positions per window; 0 = the whole page
    max_count: int = 1  # items sharing a value within one window
    hard: bool = False  # never broken, whatever the score loss


def default_rules() -> list[Rule]:
    return [
        Rule(dim="item_id", window=0, max_count=1, hard=True),
        Rule(dim="image_group", window=0, max_count=1, hard=True),
        Rule(dim="standard_category", window=4, max_count=1),
        Rule(dim="shop", window=6, max_count=1),
        Rule(dim="brand", window=6, max_count=1),
        Rule(dim="venue", window=4, max_count=2),
    ]


class ScatterConfig(Section):
    rules: list[Rule] = default_rules()
    max_loss: float | None = 0.5  # a pick keeps >= best - max_loss * |best|; None = unbounded


class ItemAttributes:
    """Attribute codes per item for the scatter dimensions, looked up by item id.

    Attributes:
        ids: (n,) int64 sorted item ids.
        values: (n, D) int64 attribute codes (MISSING = -1 for nulls), columns `dims`.
    """

    def __init__(self, ids: np.ndarray, values: np.ndarray, dims: tuple[str, ...]):
        order = np.argsort(ids, kind="stable")
        self.ids, self.values, self.dims = np.asarray(ids, np.int64)[order], np.ascontiguousarray(values[order], np.int64), dims

    @classmethod
    def from_items(cls, items: pl.DataFrame, *, dims: tuple[str, ...] = DIMENSIONS) -> "ItemAttributes":
        """From an items frame holding `dims` as columns (item_id first); nulls become MISSING.

        Columns that are not integers (e.g. a string venue) are encoded to dense codes here.
        """
        missing = [d for d in dims if d not in items.columns]
        if missing:
            raise ValueError(f"items lack scatter dimensions {missing}; columns: {items.columns}")
        cols = []
        for d in dims:
            c = items[d]
            if not c.dtype.is_integer():
                c = c.cast(pl.String).rank("dense").cast(pl.Int64)
            cols.append(c.cast(pl.Int64).fill_null(MISSING).to_numpy())
        return cls(items["item_id"].cast(pl.Int64).to_numpy(), np.stack(cols, axis=1), tuple(dims))

    def lookup(self, item_ids: np.ndarray) -> np.ndarray:
        """(n,) item ids -> (n, D) int64 codes; unknown items get their own id and MISSING elsewhere."""
        item_ids = np.asarray(item_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
        found = self.ids[pos] == item_ids
        out = np.where(found[:, None], self.values[pos], MISSING)
        if "item_id" in self.dims:
            out[:, self.dims.index("item_id")] = item_ids
        return out

    def column(self, dim: str) -> int:
        try:
            return self.dims.index(dim)
        except ValueError:
            raise ValueError(f"unknown scatter dimension {dim!r}; valid: {', '.join(self.dims)}") from None


@dataclass
class Page:
    """A scattered page. `rows` index the candidate arrays given to `scatter` (-1 = empty position).

    Attributes: rows, items (P,) int64; scores (P,) float64 (nan when empty); slots (P,) int64;
    relaxed (P,) bool: a soft rule was broken at this position to honour the score-loss bound.
    """

    rows: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    slots: np.ndarray
    relaxed: np.ndarray


@numba.njit(cache=True)
def _violations(vals, placed_vals, p, windows, limits, hard):
    """(hard broken?, soft cost) of placing a candidate with attribute row `vals` at position p."""
    n_dims = vals.shape[0]
    cost = 0
    for d in range(n_dims):
        v = vals[d]
        if v == -1:
            continue
        lo = 0 if windows[d] == 0 else max(0, p - windows[d] + 1)
        count = 0
        for q in range(lo, p):
            if placed_vals[q, d] == v:
                count += 1
        if count >= limits[d]:
            if hard[d]:
                return True, 0
            cost += 1 << (n_dims - d)  # earlier rules weigh more than all later ones together
    return False, cost


@numba.njit(cache=True)
def _greedy(attrs, scores, order, slot_start, layout, windows, limits, hard, max_loss, taken):
    n_pos = layout.shape[0]
    picks = np.full(n_pos, -1, np.int64)
    relaxed = np.zeros(n_pos, np.bool_)
    placed_vals = np.full((n_pos, attrs.shape[1]), -1, np.int64)
    for p in range(n_pos):
        s = layout[p]
        best_row, best_cost, floor, have_best = -1, 1 << 62, 0.0, False
        for x in range(slot_start[s], slot_start[s + 1]):
            r = order[x]
            if taken[r]:
                continue
            broken, cost = _violations(attrs[r], placed_vals, p, windows, limits, hard)
            if broken:
                continue
            if not have_best:  # the best candidate the hard rules allow sets the score floor
                have_best = True
                floor = scores[r] - max_loss * abs(scores[r])
            elif scores[r] < floor and best_row >= 0:
                break
            if cost < best_cost:
                best_row, best_cost = r, cost
                if cost == 0:
                    break
        if best_row >= 0:
            picks[p] = best_row
            relaxed[p] = best_cost > 0
            taken[best_row] = True
            placed_vals[p] = attrs[best_row]
    return picks, relaxed


def scatter(items: np.ndarray, scores: np.ndarray, slots: np.ndarray | None = None, *, attributes: ItemAttributes,
            layout: np.ndarray, rules: list[Rule] | None = None, max_loss: float | None = 0.5,
            exclude: np.ndarray | None = None) -> Page:
    """Fill the page `layout` (P,) slot per position from candidate rows (items, scores, slots), each (n,).

    `slots` defaults to all zeros (one list). `exclude` (n,) bool marks rows not to use (e.g. filtered,
    or shown in an earlier template). Runs in O(P * scanned candidates * sum of windows) in numba.
    """
    items = np.asarray(items, np.int64)
    scores = np.asarray(scores, np.float64)
    slots = np.zeros(len(items), np.int64) if slots is None else np.asarray(slots, np.int64)
    layout = np.asarray(layout, np.int64)
    rules = default_rules() if rules is None else rules
    n_slots = int(max(slots.max(initial=-1), layout.max(initial=-1))) + 1
    cols = [attributes.column(r.dim) for r in rules]
    attrs = np.ascontiguousarray(attributes.lookup(items)[:, cols]) if len(items) else np.zeros((0, len(cols)), np.int64)
    order = np.lexsort((-scores, slots)).astype(np.int64)  # by slot, best first
    slot_start = np.searchsorted(slots[order], np.arange(n_slots + 1)).astype(np.int64)
    taken = np.zeros(len(items), np.bool_) if exclude is None else np.array(exclude, np.bool_)
    windows = np.array([r.window for r in rules], np.int64)
    limits = np.array([r.max_count for r in rules], np.int64)
    hard = np.array([r.hard for r in rules], np.bool_)
    loss = np.inf if max_loss is None else float(max_loss)
    picks, relaxed = _greedy(attrs, scores, order, slot_start, layout, windows, limits, hard, loss, taken)
    ok = picks >= 0
    return Page(
        rows=picks,
        items=np.where(ok, items[np.maximum(picks, 0)] if len(items) else -1, -1),
        scores=np.where(ok, scores[np.maximum(picks, 0)] if len(items) else np.nan, np.nan),
        slots=layout.copy(),
        relaxed=relaxed,
    )


def window_violations(values: np.ndarray, *, window: int, max_count: int) -> int:
    """How many windows of a page's values (P,) hold more than `max_count` equal values (MISSING ignored).

    window 0 = the whole page. Used by tests and evaluation: 0 means the rule holds everywhere.
    """
    values = np.asarray(values, np.int64)
    n = len(values)
    w = n if window == 0 else min(window, n)
    bad = 0
    for lo in range(0, max(n - w + 1, 1)):  # P <= a few hundred: a plain loop is fine off the hot path
        v = values[lo:lo + w]
        v = v[v != MISSING]
        if v.size and np.unique(v, return_counts=True)[1].max() > max_count:
            bad += 1
    return bad
