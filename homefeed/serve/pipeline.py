"""One homepage request through every stage, with no HTTP: user state -> recall -> merge -> rank -> mechanism.

    pipeline = Pipeline(ServingBundle.load("bundle"), open_store("sqlite:state.db"), Config())
    page = pipeline.homepage(HomepageRequest(user_id="42"))

The page is always returned. Recall channels run on the pool under `serve.recall_budget_ms` (one pool thread
runs them in turn, and a slow one hands the rest to threads of their own: `recall_runner`); a channel that
raises or is late is left out of this page and counted. If the ranker fails, the
candidates keep their recall order. Pages are built several at a time as exposure templates
(`mechanism.exposure`): the next request shows the next template, and new behaviour rebuilds them.

Every page served is also logged as exposures (its item codes and time; the last `serve.exposure_pages`
pages within the ranker's longest count window) in the same stored blob, and passed to the ranker: its
`item_shown_*` fatigue features count them online as training counted the exposure log. The log
holds bundle item codes, so it starts afresh when a new bundle is loaded.

The templates blob is written back as an atomic merge (`StateStore.update_blob`), never a plain put: an
event folded in meanwhile (a purchase marking the templates stale) survives the write, so no page is
served from templates built before an acknowledged purchase. Everything read back from the store is
checked first; a bad stored value (out of int64, another version's shape) is ignored and counted
(`homefeed_bad_state_total`), never allowed to break the user's later requests.

A reload retires a pipeline instead of closing it: `hold`/`release` count the requests inside it, and its
channel pool closes when the last one leaves, so no request ever submits to a closed pool.

Two switches serve simpler pages (the experiment arms use them, `serve.experiment`): `serve.rank=false`
serves the merged recall order, `serve.mechanism=false` the plain ranked list (each slot filled with its
best eligible items, an item once per page, rebuilt on every request: no scattering, no template
rotation, no purchase filter). A user's state is the bundle's history, then the stored events from the
second the bundle's log ends (`data/split.json` valid_end): events before it are already in the
history, so an event is never counted twice after a reload to a newer bundle.
"""
from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from homefeed.bundle.settings import check_slots
from homefeed.config import Config
from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.mechanism import exposure
from homefeed.mechanism.exposure import ExposureConfig, ExposureState
from homefeed.mechanism.purchase_filter import PurchaseConfig, PurchaseState, allowed, on_event
from homefeed.mechanism.scatter import ScatterConfig
from homefeed.recall.merge import MergedCandidates, MergeSettings
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.metrics import ServeMetrics
from homefeed.serve.page import (INT64_MAX, INT64_MIN, PageRows, StoredTemplates, plain_page, promotion_page,
                                  read_templates, reason_for, rows_to_slots)
from homefeed.serve.recall_runner import ChannelRun
from homefeed.serve.schemas import EventIn, HomepageRequest, HomepageResponse, Item
from homefeed.serve.state import UNREADABLE, Event, StateStore

TEMPLATES = "templates"
PURCHASE = "purchase_filter"
DAY_S = 86_400


class Pipeline:
    """Serves homepage requests and ingests events against one loaded bundle and one state store."""

    def __init__(self, bundle: ServingBundle, store: StateStore, config: Config | None = None, *,
                 metrics: ServeMetrics | None = None, arm: str = "", variant: str = ""):
        """arm: the experiment arm it serves (the metrics' `arm` label, the responses' `arm`); variant: tells its
        stored templates apart from those of pipelines with other settings on the same bundle ("" = none)."""
        self.bundle, self.store, self.cfg = bundle, store, config or Config()
        self.arm = arm
        self.state_version = f"{bundle.version}~{variant}" if variant else bundle.version
        check_slots(self.cfg.serve.slots, set(bundle.pool_mask))  # a misspelt slot would show any item
        m = self.cfg.mechanism
        self.exposure_cfg = ExposureConfig(**m.exposure)
        self.scatter_cfg = ScatterConfig(**m.scatter)
        self.purchase_cfg = PurchaseConfig(**m.purchase)
        self.k_merge = MergeSettings(**self.cfg.recall.merge).k
        self.metrics = metrics or ServeMetrics()
        # a thread per channel for each request the API admits (serve.max_inflight): a request normally runs its
        # channels on one (recall_runner), but when one is slow the rest get their own, and never queue behind
        # another request's (threads start lazily, as requests need them)
        n_threads = max(len(bundle.channels), 1) * self.cfg.serve.max_inflight
        self.pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="recall")
        self._holders, self._retired, self._hold_lock = 0, False, threading.Lock()
        self.closed = False
        windows = getattr(getattr(bundle.ranker, "online", None), "windows", None)
        self.exposure_keep_s = int(windows.max()) if windows is not None and len(windows) else 7 * DAY_S

    # --- state ------------------------------------------------------------------------------
    def user_state(self, user_id: str, now: int) -> UserState:
        """Profile and behaviour before `now`: the history in the bundle, then the events stored since."""
        b = self.bundle
        code = b.user_code(user_id)
        since = b.history_end if code > 0 else INT64_MIN  # a known user's earlier events are in the history
        events = [e for e in self._stored_events(user_id) if since <= e.ts < now]
        new_items = np.array([b.item_code(e.item_id) for e in events], np.int32)
        known = new_items > 0
        past_items, past_behaviors, past_ts = b.past(code)
        before = past_ts < now
        n = self.cfg.serve.history_len
        items = np.concatenate([past_items[before], new_items[known]])[-n:]
        behaviors = np.concatenate([past_behaviors[before],
                                    np.array([BEHAVIOR_CODE[e.behavior] for e in events], np.int8)[known]])[-n:]
        ts = np.concatenate([past_ts[before], np.array([e.ts for e in events], np.int64)[known]])[-n:]
        profile = self.store.get_profile(user_id)
        if UNREADABLE in profile:
            self.metrics.bad_state.labels("profile").inc()
            profile = {}
        profile = profile or b.profiles.get(code, {})
        return UserState(user_id=code, now=now, items=items, behaviors=behaviors, ts=ts, profile=profile)

    # --- stages -----------------------------------------------------------------------------
    def recall(self, state: UserState, degraded: list[str]) -> MergedCandidates:
        """Every channel under the time budget (`recall_runner.ChannelRun`); late or failing channels are dropped and counted."""
        run = ChannelRun(self.bundle.channels, state, self.cfg.recall.k_per_channel)  # one thread hop, not one per channel
        results, late, failed = run.collect(self.pool, budget_s=self.cfg.serve.recall_budget_ms / 1000)
        for name in self.bundle.channels:
            kind = "timeout" if name in late else "error" if name in failed else None
            if kind:
                degraded.append(f"recall:{name}:{kind}")
                self.metrics.channel_errors.labels(name, kind, self.arm).inc()
        return self.bundle.merger.merge(results, k=self.k_merge, seen=state.items)  # the learned factor on repeats

    def rank(self, state: UserState, cands: MergedCandidates, context: dict, degraded: list[str],
             exposures: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Model scores for the candidates, or their recall order when there is no model, it fails or `serve.rank` is off.

        exposures: the user's served (item codes, ts), for the ranker's item_shown_* counts.
        """
        recall_order = -np.arange(len(cands), dtype=np.float64)
        if not self.cfg.serve.rank or self.bundle.ranker is None or len(cands) == 0:
            return recall_order
        try:
            return np.asarray(self.bundle.ranker.score(state, cands, context, exposures), np.float64)
        except Exception:  # a broken model must not break the page
            degraded.append("rank:error")
            self.metrics.channel_errors.labels("rank", "error", self.arm).inc()
            return recall_order

    def build_pages(self, state: UserState, cands: MergedCandidates, scores: np.ndarray, slots: dict[str, int],
                    exp: ExposureState, purchase: PurchaseState) -> list[PageRows]:
        """Filter (purchase-blocked categories, shown templates) and scatter into templates across all slots."""
        b = self.bundle
        keep = allowed(purchase, b.standard_of[cands.items], state.now)
        if exp.shown:
            keep &= ~np.isin(cands.items, np.asarray(exp.shown))
        names = list(slots)
        eligible = np.stack([b.pool_mask[s][cands.items] if s in b.pool_mask else np.ones(len(cands), bool) for s in names])
        slot_idx, cand_idx = np.nonzero(eligible & keep[None, :])
        layout = np.concatenate([np.full(n, i, np.int64) for i, n in enumerate(slots.values())])
        pages = exposure.build_templates(cands.items[cand_idx], scores[cand_idx], slot_idx, attributes=b.attributes,
                                         layout=layout, rules=self.scatter_cfg.rules, max_loss=self.scatter_cfg.max_loss,
                                         n_templates=self.exposure_cfg.n_templates)
        return [PageRows.from_page(p, cand_idx, cands, names) for p in pages]

    # --- requests ---------------------------------------------------------------------------
    def homepage(self, req: HomepageRequest) -> HomepageResponse:
        t0 = time.perf_counter()
        now = int(req.now if req.now is not None else time.time())
        timings: dict[str, float] = {}
        degraded: list[str] = []
        state = self.user_state(req.user_id, now)
        timings["state"] = _ms(t0)
        slots = req.slots or (self.cfg.serve.slots if req.scene == "homepage" else self.cfg.serve.promotion_slots)
        if req.slots and req.scene == "homepage":
            check_slots(req.slots, set(self.bundle.pool_mask), key="slots")
        mechanism = self.cfg.serve.mechanism
        blob = self.store.get_blob(req.user_id, TEMPLATES)
        stored = self._read_templates(blob)
        if mechanism and stored is not None and stored.serves(self.state_version, req.scene, slots):
            exp, rows = stored.state, stored.rows
        else:  # none yet, or built by another bundle, for another scene or other slots
            exp, rows = ExposureState(last_behavior_ts=stored.state.last_behavior_ts if stored else 0), []
        shown = stored.exposed if stored else {"ts": [], "items": []}
        if req.template_index is not None and req.template_index < len(exp.templates):
            exp = exposure.on_shown(exp, req.template_index, config=self.exposure_cfg)
        current = exposure.current(exp, now, config=self.exposure_cfg) if mechanism else None
        if current is None:  # rebuild: the full pipeline
            t = time.perf_counter()
            cands = self.recall(state, degraded)
            timings["recall"] = _ms(t)
            t = time.perf_counter()
            scores = self.rank(state, cands, req.context, degraded, exposures_of(shown))
            timings["rank"] = _ms(t)
            t = time.perf_counter()
            purchase = self._read_purchase(self.store.get_blob(req.user_id, PURCHASE)) if mechanism else PurchaseState()
            if req.scene == "promotion" or not mechanism:
                rows = (promotion_page(self.bundle, cands, scores, slots, purchase, now) if req.scene == "promotion"
                        else plain_page(self.bundle, cands, scores, slots))
                exp = exposure.rebuilt(exp, [np.array([r[0] for r in rows[0]])], now)
            else:
                pages = self.build_pages(state, cands, scores, slots, exp, purchase)
                rows = [p.rows for p in pages]
                exp = exposure.rebuilt(exp, [p.items for p in pages], now)
            timings["mechanism"] = _ms(t)
            current = (0, exp.templates[0])
        index = current[0]
        ours = StoredTemplates(self.state_version, req.scene, slots, exp, rows, shown)
        self.store.update_blob(req.user_id, TEMPLATES, lambda latest: self._merged(
            stored if latest == blob else self._read_templates(latest, count=False), ours, rows[index], now))
        page = rows_to_slots(self.bundle, rows[index], list(slots))
        timings["total"] = _ms(t0)
        for stage, ms in timings.items():
            self.metrics.stage_latency.labels(stage, self.arm).observe(ms / 1000)
        self.metrics.requests.labels(req.scene, self.arm).inc()
        self.metrics.items_shown.labels(self.arm).inc(len(rows[index]))
        return HomepageResponse(request_id=uuid.uuid4().hex, user_id=req.user_id, scene=req.scene, slots=page,
                                template_index=index, degraded=degraded, timings_ms=timings, bundle=self.bundle.version,
                                arm=self.arm)

    def _merged(self, current: StoredTemplates | None, ours: StoredTemplates, page: list[list], now: int) -> dict:
        """The templates blob to write: ours, merged with what is stored now (`current`: read inside the
        store's atomic update, which may run this more than once). A behaviour marked since we read it stays
        marked, so the next request rebuilds; the page is appended to the latest exposure log, so none is lost."""
        last = max(ours.state.last_behavior_ts, current.state.last_behavior_ts if current else 0)
        log = current.exposed if current else {"ts": [], "items": []}
        return replace(ours, state=replace(ours.state, last_behavior_ts=last),
                       exposed=self._log_exposures(log, [r[0] for r in page], now)).to_dict()

    def exposure_log(self, blob: dict | None) -> dict[str, list]:
        """The pages served, from a stored templates blob: {"ts": [t, ...], "items": [[codes of that page], ...]}.

        Empty when there is none, it is unreadable, or it was written under another bundle (other item codes).
        """
        stored = self._read_templates(blob)
        return stored.exposed if stored else {"ts": [], "items": []}

    # --- reading stored state defensively ---------------------------------------------------
    def _read_templates(self, blob: dict | None, *, count: bool = True) -> StoredTemplates | None:
        """The stored templates blob, checked; None when absent or bad (a bad one is counted and then rebuilt)."""
        try:
            return read_templates(blob, self.state_version, len(self.bundle.raw_item))
        except ValueError:
            if count:
                self.metrics.bad_state.labels(TEMPLATES).inc()
            return None

    def _read_purchase(self, blob: dict | None, *, count: bool = True) -> PurchaseState:
        """The stored purchase filter, checked; empty when absent or bad (a bad one is counted)."""
        try:
            if set(blob or {}) - {"blocks"}:
                raise ValueError(f"unknown keys {sorted(blob)}")
            state = PurchaseState.from_dict(blob or {})
            if all(INT64_MIN <= v <= INT64_MAX for k, (until, clicks) in state.blocks.items() for v in (k, until, clicks)):
                return state
        except (AttributeError, IndexError, TypeError, ValueError):
            pass
        if count:
            self.metrics.bad_state.labels(PURCHASE).inc()
        return PurchaseState()

    def _stored_events(self, user_id: str) -> list[Event]:
        """The user's recent stored events, without any the pipeline cannot read (counted)."""
        events = self.store.recent_events(user_id, self.cfg.serve.history_len)
        good = [e for e in events if isinstance(e.ts, int) and INT64_MIN <= e.ts <= INT64_MAX
                and e.behavior in BEHAVIOR_CODE and isinstance(e.item_id, str)]
        if len(good) < len(events):
            self.metrics.bad_state.labels("events").inc(len(events) - len(good))
        return good

    def _log_exposures(self, log: dict[str, list], items: list[int], now: int) -> dict[str, list]:
        """`log` plus the page of `items` served at `now`, without pages older than the longest window, capped."""
        since = now - self.exposure_keep_s
        kept = [(t, page) for t, page in zip(log["ts"], log["items"]) if t >= since]
        kept.append((now, [int(i) for i in items if i > 0]))
        kept = kept[max(0, len(kept) - self.cfg.serve.exposure_pages):]
        return {"ts": [t for t, _ in kept], "items": [page for _, page in kept]}

    def ingest(self, events: list[EventIn]) -> tuple[int, int]:
        """Store events durably (idempotent on event_id), each user's new ones folded into their mechanism state
        in the same atomic commit: a process killed at any point leaves an event folded or not stored at all."""
        return len(events), len(self.ingest_new(events))

    def ingest_new(self, events: list[EventIn]) -> list[Event]:
        """`ingest`, returning the events that were new (not duplicates of stored event ids)."""
        new = self.store.append_events([Event(e.event_id, e.user_id, e.item_id, e.behavior, e.ts, self.arm) for e in events],
                                       fold=self._folds)
        self.metrics.events.labels(self.arm).inc(len(new))
        for e in new:
            self.metrics.behaviors.labels(e.behavior, self.arm).inc()
        return new

    def _folds(self, user: str, events: list[Event]) -> list[tuple[str, Callable]]:
        """The blob changes a user's new events make: the purchase filter, and the templates marked stale. Each
        is a pure function of the stored blob (the store may run it again when another writer got there first)."""
        events = sorted(events, key=lambda e: e.ts)

        def fold_purchase(blob: dict | None) -> dict:
            purchase = self._read_purchase(blob, count=False)
            for e in events:
                code = self.bundle.item_code(e.item_id)
                standard = int(self.bundle.standard_of[code]) if code > 0 else -1
                purchase = on_event(purchase, standard=standard, behavior=e.behavior, ts=e.ts,
                                    periods=self.bundle.periods, config=self.purchase_cfg)
            return purchase.to_dict()

        acted = [e.ts for e in events if e.behavior != "pv"]

        def mark_behavior(blob: dict | None) -> dict:
            """Templates stale: marked even when none are stored yet (a homepage request may be building
            them right now from state read before these events), and even for a late event whose ts is
            older than what the templates reflect (they were built without it)."""
            stored = self._read_templates(blob, count=False) or StoredTemplates(None, None, None, ExposureState(), [], {})
            ts = max(max(acted), stored.state.built_behavior_ts + 1)
            return replace(stored, state=exposure.on_behavior(stored.state, ts)).to_dict()

        return [(PURCHASE, fold_purchase)] + ([(TEMPLATES, mark_behavior)] if acted else [])

    def warm_up(self) -> None:
        """Run recall, rank and the page mechanism once on a made-up user, so that the first real request pays
        no compile or load cost (the numba kernels of the channels and of scattering load on first call)."""
        item = 1  # any known item code: the point is to run every code path once
        state = UserState(user_id=0, now=int(time.time()), items=np.array([item], np.int32),
                          behaviors=np.array([BEHAVIOR_CODE["click"]], np.int8), ts=np.array([int(time.time()) - 60]))
        degraded: list[str] = []
        cands = self.recall(state, degraded)
        scores = self.rank(state, cands, {}, degraded)
        self.build_pages(state, cands, scores, self.cfg.serve.slots, ExposureState(), PurchaseState())
        # The bundle's few hundred thousand Python objects (vocab dicts, profiles) live as long as the
        # process: move them out of the cyclic GC's sight, or every full collection walks them (a pause
        # of tens of ms, a p99 spike). Refcounting still frees an old bundle after a reload.
        gc.collect()
        gc.freeze()

    def similar(self, item_id: str, k: int = 20) -> list[Item]:
        """Neighbours of an item from the first i2i channel that knows it."""
        code = self.bundle.item_code(item_id)
        for name, ch in self.bundle.channels.items():
            table = getattr(ch, "table_", None)
            if table is None or code <= 0 or code >= table.n_items:
                continue
            items, scores = table.neighbors_of(code)
            if len(items):
                return [Item(item_id=str(self.bundle.raw_item[i]), score=float(s), channel=name, trigger=item_id,
                             reason=reason_for(name, item_id)) for i, s in zip(items[:k], scores[:k])]
        return []

    # --- lifetime: drained, never cut off ------------------------------------------------------
    def hold(self) -> bool:
        """Count one request in; False once the pipeline is retired (the caller then takes the new one)."""
        with self._hold_lock:
            if self._retired:
                return False
            self._holders += 1
            return True

    def release(self) -> None:
        """Count one request out; the last one out of a retired pipeline closes it."""
        with self._hold_lock:
            self._holders -= 1
            last = self._retired and self._holders == 0
        if last:
            self.close()

    def retire(self) -> None:
        """Take no new requests, and close once the requests inside have finished (now, if there are none)."""
        with self._hold_lock:
            self._retired = True
            idle = self._holders == 0
        if idle:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)


def exposures_of(log: dict[str, list]) -> tuple[np.ndarray, np.ndarray]:
    """An exposure log as the ranker takes it: (item codes, ts), one entry per item shown."""
    sizes = [len(page) for page in log["items"]]
    items = np.fromiter((i for page in log["items"] for i in page), np.int64, sum(sizes))
    return items, np.repeat(np.asarray(log["ts"], np.int64), sizes)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
