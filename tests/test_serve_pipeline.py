"""The request path in process, on a real bundle of the tiny shop and a real SQLite state file."""
import json
import threading
import time

import numpy as np
import polars as pl
import pytest
import torch

from homefeed.config import Config, load_config
from homefeed.data.schema import BEHAVIORS
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.pipeline import Pipeline
from homefeed.serve.schemas import EventIn, HomepageRequest
from homefeed.serve.state import SQLiteStore


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return ServingBundle.load(tiny_bundle)


@pytest.fixture
def pipeline(bundle, tmp_path):
    p = Pipeline(bundle, SQLiteStore(tmp_path / "state.db"), Config())
    yield p
    p.close()


def active_user(bundle) -> tuple[str, int]:
    """A raw user id with history in the bundle, and a time after it: an hour after the bundle's log ends, so the
    events tests post (up to ~20 minutes before it) are live ones, newer than the log (`ServingBundle.history_end`)."""
    indptr, _, _, ts = bundle.history
    code = int(np.argmax(np.diff(indptr)))
    raw = str(bundle.vocabs["user"].decode(pl.Series([code], dtype=pl.Int32))[0])
    return raw, max(int(ts[indptr[code + 1] - 1]) + 60, bundle.history_end + 3600)


def all_items(page) -> list[str]:
    return [it.item_id for items in page.slots.values() for it in items]


def test_known_user_gets_full_scattered_page(pipeline, bundle):
    user, now = active_user(bundle)
    page = pipeline.homepage(HomepageRequest(user_id=user, now=now))
    cfg = Config().serve.slots
    assert {s: len(v) for s, v in page.slots.items()} == cfg
    items = all_items(page)
    assert len(items) == len(set(items))  # no item twice across the channels of one page
    channels = {it.channel for v in page.slots.values() for it in v}
    assert channels & {"itemcf", "swing", "ranki2i"}  # personalised channels reached the page
    for slot, its in page.slots.items():
        codes = [bundle.item_code(i.item_id) for i in its]
        if slot in bundle.pool_mask:
            assert bundle.pool_mask[slot][codes].all(), f"{slot} shows items outside its material pool"
    assert page.degraded == [] and all(it.reason for it in page.slots["recommended"])


def test_unknown_and_cold_users_are_served(pipeline):
    page = pipeline.homepage(HomepageRequest(user_id="never-seen-user", now=int(time.time())))
    assert sum(len(v) for v in page.slots.values()) == sum(Config().serve.slots.values())
    assert {it.channel for v in page.slots.values() for it in v} <= {"crowd", "popular"}


def test_templates_rotate_then_rebuild_on_new_behaviour(pipeline, bundle):
    user, now = active_user(bundle)
    first = pipeline.homepage(HomepageRequest(user_id=user, now=now))
    second = pipeline.homepage(HomepageRequest(user_id=user, now=now + 1, template_index=first.template_index))
    assert second.template_index == first.template_index + 1
    assert not set(all_items(first)) & set(all_items(second))  # the next template shows other items
    assert "recall" not in second.timings_ms  # served from the stored template, no recall or rank
    pipeline.ingest([EventIn(event_id="e-new", user_id=user, item_id=all_items(second)[0], behavior="click", ts=now + 2)])
    third = pipeline.homepage(HomepageRequest(user_id=user, now=now + 3, template_index=second.template_index))
    assert third.template_index == 0 and "recall" in third.timings_ms  # rebuilt


def test_a_bought_category_disappears(pipeline, bundle):
    user, now = active_user(bundle)
    page = pipeline.homepage(HomepageRequest(user_id=user, now=now))
    bought = page.slots["recommended"][0].item_id
    standard = bundle.standard_of[bundle.item_code(bought)]
    stored = pipeline.ingest([EventIn(event_id="buy-1", user_id=user, item_id=bought, behavior="buy", ts=now + 1)])
    assert stored == (1, 1)
    after = pipeline.homepage(HomepageRequest(user_id=user, now=now + 2))
    shown = [bundle.standard_of[bundle.item_code(i)] for i in all_items(after)]
    assert standard not in shown
    assert pipeline.ingest([EventIn(event_id="buy-1", user_id=user, item_id=bought, behavior="buy", ts=now + 1)]) == (1, 0)


def test_a_clicked_items_neighbours_appear(pipeline, bundle):
    now = int(time.time())
    table = bundle.channels["itemcf"].table_
    item = int(np.argmax(np.diff(table.indptr)))
    raw = str(bundle.raw_item[item])
    pipeline.ingest([EventIn(event_id=f"c{i}", user_id="fresh-user", item_id=raw, behavior="click", ts=now - 10 + i)
                     for i in range(3)])
    page = pipeline.homepage(HomepageRequest(user_id="fresh-user", now=now))
    triggered = [it for v in page.slots.values() for it in v if it.trigger == raw]
    assert triggered, "no candidate triggered by the clicked item"
    neighbours = {str(bundle.raw_item[i]) for i in table.neighbors_of(item)[0]}
    assert {it.item_id for it in triggered if it.channel == "itemcf"} <= neighbours


class Broken:
    def recall(self, state, k):
        raise RuntimeError("channel down")


class Slow:
    def __init__(self, inner):
        self.inner = inner

    def recall(self, state, k):
        time.sleep(0.5)
        return self.inner.recall(state, k)


def test_failing_or_slow_channel_still_gives_full_pages(bundle, tmp_path):
    channels = dict(bundle.channels)
    bundle.channels = {**channels, "itemcf": Broken(), "swing": Slow(channels["swing"])}
    try:
        p = Pipeline(bundle, SQLiteStore(tmp_path / "s.db"), Config.model_validate({"serve": {"recall_budget_ms": 100}}))
        user, now = active_user(bundle)
        page = p.homepage(HomepageRequest(user_id=user, now=now))
        assert set(page.degraded) == {"recall:itemcf:error", "recall:swing:timeout"}
        assert sum(len(v) for v in page.slots.values()) == sum(Config().serve.slots.values())
        assert b'homefeed_channel_errors_total{arm="",channel="itemcf",kind="error"} 1.0' in p.metrics.render()
        p.close()
    finally:
        bundle.channels = channels


def test_the_learned_seen_factor_applies_when_serving(bundle, tmp_path):
    """A merger that learned seen_weight 0 (repeats never convert on this log) drops the user's items from the candidates."""
    p = Pipeline(bundle, SQLiteStore(tmp_path / "s.db"), Config())
    user, now = active_user(bundle)
    state = p.user_state(user, now)
    before, merger = p.recall(state, []), bundle.merger
    assert np.isin(before.items, state.items).any()  # the tiny shop's channels do recall repeats
    old = merger.seen_weight_
    merger.seen_weight_ = 0.0
    try:
        after = p.recall(state, [])
    finally:
        merger.seen_weight_ = old
        p.close()
    assert len(after.items) and not np.isin(after.items, state.items).any()


class Sleepy:
    """A real channel's answer for one user, given after `delay_s`."""

    def __init__(self, answer, delay_s: float):
        self.answer, self.delay_s = answer, delay_s

    def recall(self, state, k):
        time.sleep(self.delay_s)
        return self.answer


def test_channel_pool_runs_every_admitted_request_at_once(bundle, tmp_path):
    """serve.max_inflight requests run all their channels at once: none waits for a thread and misses the budget."""
    cfg = Config.model_validate({"serve": {"max_inflight": 4, "recall_budget_ms": 700}})
    user, now = active_user(bundle)
    p = Pipeline(bundle, SQLiteStore(tmp_path / "s.db"), cfg)
    state = p.user_state(user, now)
    channels = dict(bundle.channels)
    # 0.4 s each: with threads for fewer requests, a second wave would end at 0.8 s, past the 0.7 s budget
    bundle.channels = {name: Sleepy(ch.recall(state, cfg.recall.k_per_channel), 0.4) for name, ch in channels.items()}
    try:
        degraded: list[list[str]] = [[] for _ in range(4)]
        threads = [threading.Thread(target=p.recall, args=(state, d)) for d in degraded]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        assert degraded == [[]] * 4, degraded
        assert p.pool._max_workers == len(channels) * 4
    finally:
        bundle.channels = channels
        p.close()


def test_broken_ranker_keeps_recall_order(bundle, tmp_path):
    ranker = bundle.ranker
    assert ranker is not None, "the tiny bundle should carry a ranker"

    class Failing:
        def score(self, *a):
            raise RuntimeError("model gone")

    bundle.ranker = Failing()
    try:
        p = Pipeline(bundle, SQLiteStore(tmp_path / "s.db"), Config())
        user, now = active_user(bundle)
        page = p.homepage(HomepageRequest(user_id=user, now=now))
        assert "rank:error" in page.degraded and len(page.slots["recommended"]) == Config().serve.slots["recommended"]
        p.close()
    finally:
        bundle.ranker = ranker


def test_promotion_scene(pipeline, bundle):
    user, now = active_user(bundle)
    page = pipeline.homepage(HomepageRequest(user_id=user, scene="promotion", now=now))
    assert len(page.slots["main_venue"]) == Config().serve.promotion_slots["main_venue"]
    venues = page.slots["industry_venue"]
    assert venues and all(it.reason.startswith("venue ") for it in venues)
    codes = [bundle.item_code(i.item_id) for i in page.slots["main_venue"]]
    assert (bundle.venue_of[codes] >= 0).all()


def test_served_ranker_fast_path_equals_the_training_feature_code(pipeline, bundle):
    user, now = active_user(bundle)
    state = pipeline.user_state(user, now)
    cands = pipeline.recall(state, [])
    ranker = bundle.ranker
    shown = (cands.items[::7].astype(np.int64), np.full(len(cands.items[::7]), now - 3600, np.int64))
    fast, exact = ranker.features(state, cands, {"page": 1}, shown), ranker.exact_features(state, cands, {"page": 1}, shown)
    assert all(torch.equal(fast[k], exact[k]) for k in ("sparse", "seq", "seq_gap"))
    torch.testing.assert_close(fast["dense"], exact["dense"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ranker.predict(fast), ranker.predict(exact), rtol=0, atol=1e-6)
    ranker.exact = True  # the reference path kept for serving too
    try:
        np.testing.assert_allclose(ranker.score(state, cands, {}, shown), ranker.predict(ranker.features(state, cands, {}, shown)),
                                   rtol=0, atol=1e-6)
    finally:
        ranker.exact = False
    assert len(cands) > 50 and (fast["seq_gap"] > 0).any()


def test_served_pages_are_logged_as_exposures_for_the_ranker(pipeline, bundle):
    user, now = active_user(bundle)
    first = pipeline.homepage(HomepageRequest(user_id=user, now=now))
    log = pipeline.exposure_log(pipeline.store.get_blob(user, "templates"))
    codes = [bundle.item_code(i) for i in all_items(first)]
    assert log == {"ts": [now], "items": [codes]}
    seen = {}

    class Spy:  # the real ranker, recording the exposures the pipeline hands it
        def score(self, state, cands, context, exposures):
            seen["exposures"] = exposures
            return bundle.ranker.score(state, cands, context, exposures)

    ranker, bundle.ranker = bundle.ranker, Spy()
    try:
        pipeline.homepage(HomepageRequest(user_id=user, scene="promotion", now=now + 5))  # another scene: a rebuild
    finally:
        bundle.ranker = ranker
    items, ts = seen["exposures"]
    assert items.tolist() == codes and (ts == now).all()
    state = pipeline.user_state(user, now + 5)
    cands = pipeline.recall(state, [])
    batch = ranker.features(state, cands, {}, seen["exposures"])
    shown_col = ranker.encoders.spec.sparse_index("item_shown_1d")  # the tiny shop's model trained on exposures
    on_page = np.isin(cands.items, codes)  # count code 1 = never shown; >= 2 = shown at least once
    assert on_page.any() and (batch["sparse"][on_page, shown_col] >= 2).all()
    assert (batch["sparse"][~on_page, shown_col] == 1).all()


def bad_state_counts(pipeline) -> dict[str, float]:
    """homefeed_bad_state_total by what was unreadable."""
    return {s.labels["what"]: s.value for m in pipeline.metrics.bad_state.collect() for s in m.samples
            if s.name.endswith("_total")}


INT64_OVER = 2**63 + 5  # what `now=9223372036854775813` left in the exposure log before `now` was bounded


def _exposed_ts(blob, ts):
    return {**blob, "exposed": {"ts": [ts], "items": blob["exposed"]["items"][:1]}}


@pytest.mark.parametrize("key, poison", [
    ("templates", lambda blob: _exposed_ts(blob, INT64_OVER)),
    ("templates", lambda blob: _exposed_ts(blob, -INT64_OVER)),
    ("templates", lambda blob: {**blob, "state": {**blob["state"], "built_at": INT64_OVER}}),
    ("templates", lambda blob: {**blob, "rows": [[[10**9, 0, 1.0, "itemcf", -1]]]}),  # no such item code
    ("templates", lambda blob: {**blob, "rows": [[[1, 99, 1.0, "itemcf", -1]]]}),  # no such slot
    ("templates", lambda blob: {**blob, "state": {**blob["state"], "templates": "abc"}}),
    ("templates", lambda blob: {"from_a_newer_version": 1}),
    ("purchase_filter", lambda blob: {"blocks": {str(2**70): [1, 0]}}),
    ("purchase_filter", lambda blob: {"blocks": {"3": ["soon"]}}),
], ids=["exposed-ts-over", "exposed-ts-under", "built-at-over", "row-item", "row-slot", "state-type", "unknown",
        "purchase-key-over", "purchase-value"])
def test_bad_stored_state_is_ignored_and_counted(pipeline, bundle, key, poison):
    """A stored value the pipeline cannot use never breaks the user's pages: it is ignored (rebuilt) and counted."""
    user, now = active_user(bundle)
    pipeline.homepage(HomepageRequest(user_id=user, now=now))
    pipeline.ingest([EventIn(event_id="b1", user_id=user, item_id=str(bundle.raw_item[1]), behavior="buy", ts=now - 5)])
    blob = pipeline.store.get_blob(user, key)
    pipeline.store.put_blob(user, key, poison(blob))
    for i in range(2):
        page = pipeline.homepage(HomepageRequest(user_id=user, now=now + 1 + i))
        assert sum(len(v) for v in page.slots.values()) == sum(Config().serve.slots.values())
    assert bad_state_counts(pipeline)[key] >= 1
    assert pipeline.exposure_log(pipeline.store.get_blob(user, "templates"))["ts"][-1] == now + 2  # written afresh


def test_unreadable_stored_events_and_profile_are_skipped_and_counted(pipeline, bundle):
    import sqlite3

    user, now = active_user(bundle)
    with sqlite3.connect(pipeline.store.path) as c:
        c.execute("INSERT INTO events (event_id, user_id, item_id, behavior, ts) VALUES ('bad-ts', ?, '1', 'click', 'soon')", (user,))
        c.execute("INSERT INTO events (event_id, user_id, item_id, behavior, ts) VALUES ('bad-behavior', ?, '1', 'teleport', ?)", (user, now - 5))
        c.execute("INSERT INTO profiles VALUES (?, 'not json')", (user,))
    state = pipeline.user_state(user, now)
    assert state.profile == bundle.profiles.get(bundle.user_code(user), {})
    assert pipeline.homepage(HomepageRequest(user_id=user, now=now)).slots["recommended"]
    counted = bad_state_counts(pipeline)
    assert counted["events"] >= 2 and counted["profile"] >= 1


def test_slots_that_match_no_material_pool_are_refused(bundle, tmp_path):
    from homefeed.config import ConfigError

    bad = Config.model_validate({"serve": {"slots": {"recommended": 8, "flash_sael": 4}}})
    with pytest.raises(ConfigError, match="flash_sael.*valid slots"):
        Pipeline(bundle, SQLiteStore(tmp_path / "s.db"), bad)
    p = Pipeline(bundle, SQLiteStore(tmp_path / "s2.db"), Config())
    with pytest.raises(ConfigError, match="grup_buy"):
        p.homepage(HomepageRequest(user_id="u1", slots={"grup_buy": 3}))
    page = p.homepage(HomepageRequest(user_id="u1", slots={"group_buy": 3}))
    assert all(bundle.pool_mask["group_buy"][bundle.item_code(it.item_id)] for it in page.slots["group_buy"])


def test_stored_events_the_bundles_log_already_holds_count_once(pipeline, bundle):
    """After a reload to a bundle built from a newer log, the store still holds events that log contains: the
    user's state takes the history from the bundle and only the stored events from the second its log ends."""
    user, now = active_user(bundle)
    end = bundle.history_end
    assert end == json.loads((bundle.path / "data" / "split.json").read_text())["valid_end"]
    code = bundle.user_code(user)
    items, behaviors, ts = bundle.past(code)
    assert len(items) and ts.max() < end
    before = pipeline.user_state(user, now)
    logged = [EventIn(event_id=f"logged-{i}", user_id=user, item_id=str(bundle.raw_item[it]), behavior=BEHAVIORS[b],
                      ts=int(t)) for i, (it, b, t) in enumerate(zip(items[-5:], behaviors[-5:], ts[-5:]))]
    late = EventIn(event_id="live-1", user_id=user, item_id=str(bundle.raw_item[items[0]]), behavior="click", ts=end + 5)
    pipeline.ingest(logged + [late])  # what the store holds after serving the old bundle: logged ones, then a live one
    state = pipeline.user_state(user, now)
    n = pipeline.cfg.serve.history_len
    assert np.array_equal(state.ts, np.concatenate([before.ts, [end + 5]])[-n:])  # the logged ones once, the live one
    assert state.items[-1] == items[0] and (np.diff(state.ts) >= 0).all()
    cold = pipeline.user_state("not-in-the-bundle", now)  # a user the log does not know keeps every stored event
    pipeline.ingest([EventIn(event_id="cold-1", user_id="not-in-the-bundle", item_id=late.item_id, behavior="click",
                             ts=end - 86400)])
    assert len(pipeline.user_state("not-in-the-bundle", now).ts) == len(cold.ts) + 1


def test_switches_serve_the_recall_order_and_the_plain_ranked_list(bundle, tmp_path):
    """serve.rank=false: the merged recall order; serve.mechanism=false: each slot's best items by score, an item
    once per page, no purchase filter, a rebuild on every request (no rotation)."""
    user, now = active_user(bundle)
    plain = Pipeline(bundle, SQLiteStore(tmp_path / "a.db"), load_config(overrides=["serve.mechanism=false"]))
    bare = Pipeline(bundle, SQLiteStore(tmp_path / "b.db"), load_config(overrides=["serve.mechanism=false", "serve.rank=false"]))
    try:
        for p in (plain, bare):
            page = p.homepage(HomepageRequest(user_id=user, now=now))
            assert {s: len(v) for s, v in page.slots.items()} == Config().serve.slots
            items = all_items(page)
            assert len(items) == len(set(items))
            for its in page.slots.values():
                scores = [it.score for it in its]
                assert scores == sorted(scores, reverse=True)
            again = p.homepage(HomepageRequest(user_id=user, now=now + 1, template_index=page.template_index))
            assert again.template_index == 0 and "recall" in again.timings_ms  # rebuilt: no rotation
            if p is bare:  # no model, so no fatigue features: the same state gives the same page
                assert all_items(again) == items
            standards = [int(bundle.standard_of[bundle.item_code(i)]) for i in items]
            standard = max(set(standards) - {-1}, key=standards.count)  # the page's commonest category (no scattering)
            assert standards.count(standard) >= 3
            bought = items[standards.index(standard)]
            p.ingest([EventIn(event_id=f"b-{id(p)}", user_id=user, item_id=bought, behavior="buy", ts=now + 2)])
            after = p.homepage(HomepageRequest(user_id=user, now=now + 3))
            assert standard in {bundle.standard_of[bundle.item_code(i)] for i in all_items(after)}  # no purchase filter
        state = bare.user_state(user, now)
        cands = bare.recall(state, [])
        assert np.array_equal(bare.rank(state, cands, {}, []), -np.arange(len(cands)))  # the recall order, no model
        assert not np.array_equal(plain.rank(state, cands, {}, []), -np.arange(len(cands)))
    finally:
        plain.close()
        bare.close()
