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
(Carbonell & Goldstein 1998; "Tmall homepage" scattering). Each rule keeps a count per value of the
items inside its window, so checking a candidate costs one lookup per rule. `scatter_pages` builds
several pages from one candidate set (the exposure templates), looking the attributes up once.

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
        self._dense = self._dense_table()

    def _dense_table(self) -> np.ndarray | None:
        """(max id + 2, D) rows by id, the last all MISSING, when the ids are compact codes (a gather per lookup,
        not a binary search); None for sparse or negative ids. A repeated id keeps its first row, as searchsorted."""
        n = len(self.ids)
        if n == 0 or self.ids[0] < 0 or self.ids[-1] > 4 * n + 1024:
            return None
        table = np.full((int(self.ids[-1]) + 2, self.values.shape[1]), MISSING, np.int64)
        first = np.r_[True, self.ids[1:] != self.ids[:-1]]
        table[self.ids[first]] = self.values[first]
        return table

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
        if self._dense is not None:
            last = len(self._dense) - 1
            out = self._dense[np.where((item_ids >= 0) & (item_ids < last), item_ids, last)]
        else:
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


@numba.njit(cache=True, nogil=True)
def _violations(codes, counts, windows, limits, hard):
    """(hard broken?, soft cost) of placing a candidate whose value codes are `codes` (D,) at the current position.

    counts[c]: how many placed items with value code c lie inside each rule's window of that position.
    """
    n_dims = codes.shape[0]
    cost = 0
    for d in range(n_dims):
        c = codes[d]
        if c < 0:  # MISSING never collides
            continue
        if counts[c] >= limits[d]:
            if hard[d]:
                return True, 0
            cost += 1 << (n_dims - d)  # earlier rules weigh more than all later ones together
    return False, cost


@numba.njit(cache=True, nogil=True)
def _greedy(codes, n_codes, scores, order, slot_start, layout, windows, limits, hard, max_loss, taken):
    """Fill positions in page order; a value's count enters its window when placed and leaves w positions later."""
    n_pos, n_dims = layout.shape[0], codes.shape[1]
    picks = np.full(n_pos, -1, np.int64)
    relaxed = np.zeros(n_pos, np.bool_)
    placed = np.full((n_pos, n_dims), -1, np.int64)
    counts = np.zeros(n_codes, np.int64)
    for p in range(n_pos):
        for d in range(n_dims):  # position p - w leaves the window [p - w + 1, p] of rule d
            w = windows[d]
            if w > 0 and p - w >= 0 and placed[p - w, d] >= 0:
                counts[placed[p - w, d]] -= 1
        s = layout[p]
        best_row, best_cost, floor, have_best = -1, 1 << 62, 0.0, False
        for x in range(slot_start[s], slot_start[s + 1]):
            r = order[x]
            if taken[r]:
                continue
            broken, cost = _violations(codes[r], counts, windows, limits, hard)
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
            for d in range(n_dims):
                c = codes[best_row, d]
                placed[p, d] = c
                if c >= 0:
                    counts[c] += 1
    return picks, relaxed


@numba.njit(cache=True, nogil=True)
def _offset_codes(attrs, limit):
    """(codes, n_codes, ok): column d's values v >= 0 as offset_d + v; ok False when some value is < -1 or >= limit."""
    n, n_dims = attrs.shape
    codes = np.full((n, n_dims), -1, np.int64)
    offset = 0
    for d in range(n_dims):
        high = -1
        for i in range(n):
            v = attrs[i, d]
            if v < -1 or v >= limit:
                return codes, 0, False
            high = max(high, v)
        for i in range(n):
            if attrs[i, d] != -1:
                codes[i, d] = attrs[i, d] + offset
        offset += high + 1
    return codes, offset, True


def _value_codes(attrs: np.ndarray) -> tuple[np.ndarray, int]:
    """(n, D) attribute values -> (n, D) codes unique across columns (MISSING stays -1), and how many codes.

    Rule counting only asks which values are equal within a column, so column d's values v >= 0 become
    offset_d + v (or, when some column holds large or negative values, offset_d + the value's rank in it).
    """
    codes, n_codes, ok = _offset_codes(attrs, 1 << 22)
    if ok:
        return codes, n_codes
    ranks = attrs.copy()  # rare: ranks instead of raw values
    for d in range(attrs.shape[1]):
        real = attrs[:, d] != MISSING
        ranks[real, d] = np.unique(attrs[real, d], return_inverse=True)[1].reshape(-1)
    codes, n_codes, _ = _offset_codes(ranks, 1 << 62)
    return codes, n_codes


@numba.njit(cache=True, nogil=True)
def _greedy_pages(codes, n_codes, scores, order, slot_start, layout, windows, limits, hard, max_loss, used, item_group,
                  n_groups, n_pages):
    """`n_pages` runs of `_greedy`; after each, every row of a placed item (any slot) is `used` for the next."""
    picks = np.full((n_pages, layout.shape[0]), -1, np.int64)
    relaxed = np.zeros((n_pages, layout.shape[0]), np.bool_)
    placed = np.zeros(n_groups, np.bool_)
    for t in range(n_pages):
        picks[t], relaxed[t] = _greedy(codes, n_codes, scores, order, slot_start, layout, windows, limits, hard, max_loss,
                                       used.copy())
        for r in picks[t]:
            if r >= 0:
                placed[item_group[r]] = True
        for x in range(used.shape[0]):
            used[x] = used[x] or placed[item_group[x]]
    return picks, relaxed


@dataclass
class _Candidates:
    """Candidate rows made ready for the kernels once: attribute codes, the scan order, the rule arrays."""

    items: np.ndarray
    scores: np.ndarray
    layout: np.ndarray
    args: tuple  # codes, n_codes, scores, order, slot_start, layout, windows, limits, hard, max_loss

    @classmethod
    def make(cls, items, scores, slots, attributes: ItemAttributes, layout, rules: list[Rule] | None,
             max_loss: float | None) -> "_Candidates":
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
        windows = np.array([r.window for r in rules], np.int64)
        limits = np.array([r.max_count for r in rules], np.int64)
        hard = np.array([r.hard for r in rules], np.bool_)
        loss = np.inf if max_loss is None else float(max_loss)
        codes, n_codes = _value_codes(attrs)
        return cls(items, scores, layout, (codes, n_codes, scores, order, slot_start, layout, windows, limits, hard, loss))

    def taken(self, exclude: np.ndarray | None) -> np.ndarray:
        return np.zeros(len(self.items), np.bool_) if exclude is None else np.array(exclude, np.bool_)

    def page(self, picks: np.ndarray, relaxed: np.ndarray) -> Page:
        ok = picks >= 0
        safe = np.maximum(picks, 0)
        return Page(
            rows=picks,
            items=np.where(ok, self.items[safe] if len(self.items) else -1, -1),
            scores=np.where(ok, self.scores[safe] if len(self.items) else np.nan, np.nan),
            slots=self.layout.copy(),
            relaxed=relaxed,
        )


def scatter(items: np.ndarray, scores: np.ndarray, slots: np.ndarray | None = None, *, attributes: ItemAttributes,
            layout: np.ndarray, rules: list[Rule] | None = None, max_loss: float | None = 0.5,
            exclude: np.ndarray | None = None) -> Page:
    """Fill the page `layout` (P,) slot per position from candidate rows (items, scores, slots), each (n,).

    `slots` defaults to all zeros (one list). `exclude` (n,) bool marks rows not to use (e.g. filtered,
    or shown in an earlier template). Runs in O(P * scanned candidates * rules) in numba: each rule's
    window keeps a count per value, updated as positions enter and leave it.
    """
    c = _Candidates.make(items, scores, slots, attributes, layout, rules, max_loss)
    return c.page(*_greedy(*c.args, c.taken(exclude)))


def scatter_pages(items: np.ndarray, scores: np.ndarray, slots: np.ndarray | None = None, *, attributes: ItemAttributes,
                  layout: np.ndarray, rules: list[Rule] | None = None, max_loss: float | None = 0.5,
                  n_pages: int = 1, exclude: np.ndarray | None = None) -> list[Page]:
    """`n_pages` pages from one candidate set, each a `scatter` of the rows whose items no earlier page placed.

    The same pages as calling `scatter` n times and excluding, after each, every row of the items it placed
    (`exposure.build_templates`), but the attribute lookup and the sort are done once and the loop runs in numba.
    """
    c = _Candidates.make(items, scores, slots, attributes, layout, rules, max_loss)
    _, group = np.unique(c.items, return_inverse=True)  # rows of one item share a group, whatever their slot
    group = group.astype(np.int64).reshape(-1)
    picks, relaxed = _greedy_pages(*c.args, c.taken(exclude), group, int(group.max(initial=-1)) + 1, int(n_pages))
    return [c.page(picks[t], relaxed[t]) for t in range(n_pages)]


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
