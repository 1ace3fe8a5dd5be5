"""Template-based exposure filtering: rotate pre-built pages instead of filtering every exposed item.

Filtering out every item a page has exposed is too strict: many homepage views are not views at all
(the app opened on the homepage and the user went straight to search or the cart), and such a
filter soon starves the feed of the user's best items. Instead, each rebuild makes several pages
("templates") at once, each scattered and disjoint from the others. The client reports the index i
of the template it actually showed; the next request shows template i + 1. Only when the user has
done something new since the templates were built (a click, a cart, a purchase), or all templates
were shown, or they grew old, are they rebuilt -- from fresh candidates, leaving out the items of
the templates the client reported showing.

The state is plain data (`ExposureState.to_dict()` is JSON) kept in the user-state store; the logic
is pure functions that return a new state.

    >>> st = ExposureState()
    >>> current(st, now=100) is None                     # nothing built yet: rebuild
    True
    >>> st = rebuilt(st, [np.array([1, 2]), np.array([3, 4])], now=100)
    >>> current(st, now=101)
    (0, [1, 2])
    >>> st = on_shown(st, 0); current(st, now=102)
    (1, [3, 4])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from homefeed.config import Section
from homefeed.mechanism.scatter import ItemAttributes, Page, Rule, scatter_pages


class ExposureConfig(Section):
    n_templates: int = 3  # pages built per refresh
    max_age_s: int = 30 * 60  # templates older than this are rebuilt even without new behaviour
    history: int = 200  # at most this many shown items remembered for the next rebuild


@dataclass(frozen=True)
class ExposureState:
    """One user's templates and where the rotation stands (JSON-able via `to_dict`)."""

    templates: list[list[int]] = field(default_factory=list)  # item ids per template, page order
    next_index: int = 0  # template to show on the next request
    built_at: int = 0  # unix s the templates were built
    built_behavior_ts: int = 0  # latest user behaviour the templates already reflect
    last_behavior_ts: int = 0  # latest user behaviour seen
    shown: list[int] = field(default_factory=list)  # items of templates the client reported showing

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExposureState":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"exposure state: unknown keys {sorted(unknown)}; valid: {', '.join(cls.__dataclass_fields__)}")
        return cls(**d)


def needs_rebuild(state: ExposureState, now: int, *, config: ExposureConfig | None = None) -> bool:
    """True when there is no template left to show, the user did something new, or the templates are old."""
    cfg = config or ExposureConfig()
    return (
        state.next_index >= len(state.templates)
        or state.last_behavior_ts > state.built_behavior_ts
        or now - state.built_at > cfg.max_age_s
    )


def current(state: ExposureState, now: int, *, config: ExposureConfig | None = None) -> tuple[int, list[int]] | None:
    """(index, items) of the template to show now, or None when the caller must rebuild first."""
    if needs_rebuild(state, now, config=config):
        return None
    return state.next_index, state.templates[state.next_index]


def on_shown(state: ExposureState, index: int, *, config: ExposureConfig | None = None) -> ExposureState:
    """The client reports it showed template `index`: the next request gets `index + 1`."""
    if not 0 <= index < len(state.templates):
        raise ValueError(f"template index {index} out of range: the state holds {len(state.templates)} templates")
    cfg = config or ExposureConfig()
    shown = (state.shown + [i for i in state.templates[index] if i >= 0])[-cfg.history:]
    return replace(state, next_index=max(state.next_index, index + 1), shown=shown)


def on_behavior(state: ExposureState, ts: int) -> ExposureState:
    """The user clicked, carted, bought... at `ts`: templates built before it are stale."""
    return replace(state, last_behavior_ts=max(state.last_behavior_ts, int(ts)))


def rebuilt(state: ExposureState, pages: list[np.ndarray], now: int) -> ExposureState:
    """A new rotation from freshly built `pages` (item ids per page, -1 = empty position)."""
    templates = [[int(i) for i in np.asarray(p).tolist()] for p in pages]
    return replace(state, templates=templates, next_index=0, built_at=int(now),
                   built_behavior_ts=state.last_behavior_ts, shown=[])


def build_templates(items: np.ndarray, scores: np.ndarray, slots: np.ndarray | None = None, *, attributes: ItemAttributes,
                    layout: np.ndarray, rules: list[Rule] | None = None, max_loss: float | None = 0.5,
                    n_templates: int = 3, exclude: np.ndarray | None = None) -> list[Page]:
    """`n_templates` scattered pages from one candidate set, each disjoint from the ones before.

    `exclude` (n,) bool drops rows up front (purchase-filtered, or items of templates already shown).
    Each template is `scatter` over the rows left: after one is built, every row of an item it placed (in
    any slot) is excluded from the next. `scatter_pages` runs that loop with the candidates prepared once.
    """
    return scatter_pages(items, scores, slots, attributes=attributes, layout=layout, rules=rules, max_loss=max_loss,
                         n_pages=n_templates, exclude=exclude)
