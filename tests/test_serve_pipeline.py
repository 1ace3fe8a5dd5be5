"""The request path in process, on a real bundle of the tiny shop and a real SQLite state file."""
import time

import numpy as np
import polars as pl
import pytest
import torch

from homefeed.config import Config
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
    """A raw user id with history in the bundle, and the time just after it."""
    indptr, _, _, ts = bundle.history
    code = int(np.argmax(np.diff(indptr)))
    raw = str(bundle.vocabs["user"].decode(pl.Series([code], dtype=pl.Int32))[0])
    return raw, int(ts[indptr[code + 1] - 1]) + 60


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
        assert b'homefeed_channel_errors_total{channel="itemcf",kind="error"} 1.0' in p.metrics.render()
        p.close()
    finally:
        bundle.channels = channels


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
