"""The prepared-once scatter (`scatter`, `scatter_pages`, `build_templates`) gives the pages of the original
code, kept here as the reference: a window scan per rule and candidate, one `scatter` call per template."""
import numba
import numpy as np
import pytest

from homefeed.mechanism.exposure import build_templates
from homefeed.mechanism.scatter import MISSING, ItemAttributes, Rule, default_rules, scatter, scatter_pages

DIMS = ("item_id", "standard_category", "brand", "shop", "venue", "image_group")


# --- the reference: the original implementation, verbatim but for names ---------------------------------------
@numba.njit
def _ref_violations(vals, placed_vals, p, windows, limits, hard):
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
            cost += 1 << (n_dims - d)
    return False, cost


@numba.njit
def _ref_greedy(attrs, scores, order, slot_start, layout, windows, limits, hard, max_loss, taken):
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
            broken, cost = _ref_violations(attrs[r], placed_vals, p, windows, limits, hard)
            if broken:
                continue
            if not have_best:
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


def _ref_lookup(attributes: ItemAttributes, item_ids: np.ndarray) -> np.ndarray:
    item_ids = np.asarray(item_ids, np.int64)
    pos = np.minimum(np.searchsorted(attributes.ids, item_ids), len(attributes.ids) - 1)
    found = attributes.ids[pos] == item_ids
    out = np.where(found[:, None], attributes.values[pos], MISSING)
    if "item_id" in attributes.dims:
        out[:, attributes.dims.index("item_id")] = item_ids
    return out


def ref_scatter(items, scores, slots, *, attributes, layout, rules, max_loss, exclude=None):
    items, scores = np.asarray(items, np.int64), np.asarray(scores, np.float64)
    slots, layout = np.asarray(slots, np.int64), np.asarray(layout, np.int64)
    n_slots = int(max(slots.max(initial=-1), layout.max(initial=-1))) + 1
    cols = [attributes.column(r.dim) for r in rules]
    attrs = np.ascontiguousarray(_ref_lookup(attributes, items)[:, cols]) if len(items) else np.zeros((0, len(cols)), np.int64)
    order = np.lexsort((-scores, slots)).astype(np.int64)
    slot_start = np.searchsorted(slots[order], np.arange(n_slots + 1)).astype(np.int64)
    taken = np.zeros(len(items), np.bool_) if exclude is None else np.array(exclude, np.bool_)
    picks, relaxed = _ref_greedy(attrs, scores, order, slot_start, layout, np.array([r.window for r in rules], np.int64),
                                 np.array([r.max_count for r in rules], np.int64), np.array([r.hard for r in rules], np.bool_),
                                 np.inf if max_loss is None else float(max_loss), taken)
    ok = picks >= 0
    return {"rows": picks, "items": np.where(ok, items[np.maximum(picks, 0)] if len(items) else -1, -1),
            "scores": np.where(ok, scores[np.maximum(picks, 0)] if len(items) else np.nan, np.nan), "relaxed": relaxed}


def ref_build_templates(items, scores, slots, *, attributes, layout, rules, max_loss, n_templates, exclude=None):
    items = np.asarray(items, np.int64)
    used = np.zeros(len(items), bool) if exclude is None else np.array(exclude, bool)
    pages = []
    for _ in range(n_templates):
        page = ref_scatter(items, scores, slots, attributes=attributes, layout=layout, rules=rules, max_loss=max_loss,
                           exclude=used)
        pages.append(page)
        used |= np.isin(items, page["items"][page["rows"] >= 0])
    return pages


# --- random cases ---------------------------------------------------------------------------------------------------
def random_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n_known = int(rng.integers(5, 300))
    big = rng.random() < 0.3  # sparse ids (no dense table) and huge / negative attribute values (ranked codes)
    ids = rng.choice(10**9 if big else 3 * n_known, n_known, replace=False) + (0 if big else 1)
    values = np.stack([ids] + [rng.integers(0, k, n_known) for k in (rng.integers(2, 12), rng.integers(2, 40),
                                                                       rng.integers(2, 60), 8)]
                      + [ids // rng.integers(1, 3)], axis=1)
    values[rng.random(values.shape) < 0.1] = MISSING
    values[:, 0] = ids
    if big:
        values[:, 2] = values[:, 2] * 10**12 - 5 * 10**11  # negative and beyond 2^22
    attributes = ItemAttributes(ids, values, DIMS)
    n = int(rng.integers(0, 400))
    items = np.where(rng.random(n) < 0.9, rng.choice(ids, n), rng.integers(-3, 10**6, n))  # repeats, unknowns
    n_slots = int(rng.integers(1, 5))
    slots = rng.integers(0, n_slots, n)
    scores = np.round(rng.normal(0.2, 0.3, n), 2)  # ties and negative scores
    layout = rng.integers(0, n_slots, int(rng.integers(1, 40)))
    if rng.random() < 0.4:
        rules = default_rules()
    else:
        dims = rng.choice(DIMS, int(rng.integers(1, 7)), replace=False)
        rules = [Rule(dim=str(d), window=int(rng.integers(0, 8)), max_count=int(rng.integers(1, 4)), hard=bool(rng.random() < 0.3))
                 for d in dims]
    return {"items": items, "scores": scores, "slots": slots, "attributes": attributes, "layout": layout, "rules": rules,
            "max_loss": [None, 0.5, 0.1, 2.0][int(rng.integers(0, 4))],
            "exclude": rng.random(n) < 0.2 if rng.random() < 0.5 else None}


def assert_same_page(page, ref):
    np.testing.assert_array_equal(page.rows, ref["rows"])
    np.testing.assert_array_equal(page.items, ref["items"])
    np.testing.assert_array_equal(page.scores, ref["scores"])  # nan where empty, in both
    np.testing.assert_array_equal(page.relaxed, ref["relaxed"])


@pytest.mark.parametrize("seed", range(60))
def test_scatter_and_templates_equal_the_original_code(seed):
    case = random_case(seed)
    n_templates = 1 + seed % 4
    args = (case.pop("items"), case.pop("scores"), case.pop("slots"))
    assert_same_page(scatter(*args, **case), ref_scatter(*args, **case))
    pages = build_templates(*args, n_templates=n_templates, **case)
    refs = ref_build_templates(*args, n_templates=n_templates, **case)
    assert len(pages) == n_templates
    for page, ref in zip(pages, refs):
        assert_same_page(page, ref)
        np.testing.assert_array_equal(page.slots, case["layout"])


def test_the_cases_exercise_rules_relaxation_and_template_exclusion():
    relaxed = filled_later = 0
    for seed in range(60):
        case = random_case(seed)
        args = (case.pop("items"), case.pop("scores"), case.pop("slots"))
        pages = scatter_pages(*args, n_pages=3, **case)
        relaxed += sum(int(p.relaxed.sum()) for p in pages)
        filled_later += int((pages[2].rows >= 0).sum())
        shown = set(pages[0].items[pages[0].rows >= 0].tolist())
        assert not shown & set(pages[1].items[pages[1].rows >= 0].tolist())  # templates are disjoint in items
    assert relaxed > 0 and filled_later > 0


def test_dense_attribute_lookup_equals_the_binary_search():
    rng = np.random.default_rng(1)
    ids = np.array([5, 3, 3, 9, 0, 12])  # a repeated id keeps its first row (as searchsorted finds it)
    values = rng.integers(-1, 7, (6, 3))
    attrs = ItemAttributes(ids, values, ("item_id", "brand", "shop"))
    assert attrs._dense is not None
    query = np.array([3, 5, 0, 12, 13, 100, -4, 9, 1])
    np.testing.assert_array_equal(attrs.lookup(query), _ref_lookup(attrs, query))
    sparse = ItemAttributes(ids * 10**6, values, ("item_id", "brand", "shop"))  # not compact: binary search
    assert sparse._dense is None
    np.testing.assert_array_equal(sparse.lookup(query * 10**6), _ref_lookup(sparse, query * 10**6))
