"""Homepage requests racing purchase events of the same user, on a real SQLite file and a real redis-server.

The race: a homepage rebuild reads the user's state, builds templates, and writes them back; a purchase
folded in between marks the templates stale. A plain put of the rebuilt templates erased that mark, and
the user kept seeing pages built before the purchase. Each test uses two pipelines on two clients of one
store, as two workers would.
"""
import random
import threading
import time

import pytest

from homefeed.config import Config
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.pipeline import PURCHASE, Pipeline
from homefeed.serve.schemas import EventIn, HomepageRequest
from homefeed.serve.state import RedisStore, SQLiteStore

from test_serve_pipeline import active_user, all_items


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return ServingBundle.load(tiny_bundle)


@pytest.fixture(params=["sqlite", "redis"])
def open_client(request, tmp_path):
    """A function that opens one more client of the same store (one per simulated worker)."""
    clients = []

    def open_one():
        if request.param == "sqlite":
            client = SQLiteStore(tmp_path / "state.db")
        else:
            client = RedisStore(request.getfixturevalue("redis_url"), prefix=f"race{abs(hash(request.node.name))}:")
        clients.append(client)
        return client

    yield open_one
    for c in clients:
        c.close()


def standards(bundle, items: list[str]) -> set[int]:
    return {int(bundle.standard_of[bundle.item_code(i)]) for i in items}


class BuyDuringRebuild:
    """A real store client that, right after a rebuild has read the purchase filter, runs `then` once: a
    purchase acknowledged by another worker while this request is still building its templates."""

    def __init__(self, store):
        self.store, self.then = store, None

    def __getattr__(self, name):
        return getattr(self.store, name)

    def get_blob(self, user_id, key):
        value = self.store.get_blob(user_id, key)
        if key == PURCHASE and self.then is not None:
            then, self.then = self.then, None
            then()
        return value


CFG = Config.model_validate({"serve": {"recall_budget_ms": 30_000}})  # no channel dropped: pages are reproducible


@pytest.mark.parametrize("first_page", [True, False], ids=["first-page", "rebuild"])
def test_a_purchase_acknowledged_during_a_rebuild_is_not_lost(bundle, open_client, first_page, tmp_path):
    """Deterministic: the purchase lands between the rebuild's read and its write; the next page reflects it."""
    user, now = active_user(bundle)

    def before(web, events):
        """Nothing stored yet (first page), or templates made stale by a click (the next request rebuilds)."""
        if not first_page:
            shown = web.homepage(HomepageRequest(user_id=user, now=now))
            events.ingest([EventIn(event_id="click", user_id=user, item_id=all_items(shown)[-1], behavior="click",
                                   ts=now - 500)])

    rehearsal = Pipeline(bundle, SQLiteStore(tmp_path / "rehearsal.db"), CFG)  # the same steps without the purchase
    before(rehearsal, rehearsal)
    bought = rehearsal.homepage(HomepageRequest(user_id=user, now=now)).slots["recommended"][0].item_id
    standard = int(bundle.standard_of[bundle.item_code(bought)])

    web, events = Pipeline(bundle, BuyDuringRebuild(open_client()), CFG), Pipeline(bundle, open_client(), CFG)
    before(web, events)
    web.store.then = lambda: events.ingest([EventIn(event_id="buy", user_id=user, item_id=bought, behavior="buy",
                                                    ts=now - 100)])
    during = web.homepage(HomepageRequest(user_id=user, now=now))
    assert web.store.then is None and events.store.has_event("buy", user)  # the purchase did land mid-request
    assert "recall" in during.timings_ms and standard in standards(bundle, all_items(during))  # built before it
    after = web.homepage(HomepageRequest(user_id=user, now=now + 1, template_index=during.template_index))
    assert "recall" in after.timings_ms, "the purchase's stale mark was overwritten: served from old templates"
    assert standard not in standards(bundle, all_items(after))
    web.close(), events.close(), rehearsal.close()


def test_no_page_requested_after_an_acknowledged_purchase_shows_its_category(bundle, open_client):
    """Concurrent: browsers and a buyer of one user, on two clients of one store, for a few seconds."""
    user, now = active_user(bundle)
    cfg = Config()
    web = Pipeline(bundle, open_client(), cfg)
    events = Pipeline(bundle, open_client(), cfg)
    served: list[tuple[float, list[str], bool]] = []  # (time the request was sent, items shown, rebuilt)
    acked: list[tuple[float, int]] = []  # (time the purchase was acknowledged, its standard category)
    stop, errors = threading.Event(), []

    def browse():
        index = None
        try:
            while not stop.is_set():
                sent = time.monotonic()
                page = web.homepage(HomepageRequest(user_id=user, now=now, template_index=index))
                index = page.template_index
                served.append((sent, all_items(page), "recall" in page.timings_ms))
        except Exception as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    def buy(n: int):
        rng = random.Random(0)
        bought: set[int] = set()
        try:
            for i in range(n):
                last = acked[-1][0] if acked else 0.0
                deadline = time.monotonic() + 30
                while not any(sent > last for sent, _, _ in served[-3:]) and time.monotonic() < deadline:
                    time.sleep(0.005)  # the buyer picks from a page requested after its last purchase
                page = next(items for sent, items, _ in reversed(served) if sent > last)
                candidates = [it for it in page if int(bundle.standard_of[bundle.item_code(it)]) not in bought]
                if not candidates:  # such a page shows bought categories only: the assertions below report it
                    break
                item = rng.choice(candidates)
                events.ingest([EventIn(event_id=f"buy-{i}", user_id=user, item_id=item, behavior="buy", ts=now - 1000 + i)])
                acked.append((time.monotonic(), int(bundle.standard_of[bundle.item_code(item)])))
                bought.add(acked[-1][1])
                time.sleep(rng.uniform(0, 0.05))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    browsers = [threading.Thread(target=browse) for _ in range(3)]
    buyer = threading.Thread(target=buy, args=(10,))
    [t.start() for t in browsers + [buyer]]
    buyer.join(120)
    time.sleep(0.3)  # pages requested after the last purchase
    stop.set()
    [t.join(60) for t in browsers]
    assert not errors, errors
    assert len(acked) >= 5 and len(served) > 2 * len(acked), (len(acked), len(served))
    for sent, items, _ in served:
        blocked = {s for at, s in acked if at < sent}
        shown = standards(bundle, items) & blocked
        assert not shown, f"a page requested after the purchase of standard categories {sorted(shown)} shows them"
    web.close(), events.close()


def test_a_late_event_still_makes_templates_stale(bundle, open_client):
    """An event whose ts is older than the behaviour the templates reflect was not in them: rebuild."""
    user, now = active_user(bundle)
    p = Pipeline(bundle, open_client(), Config())
    shown = p.homepage(HomepageRequest(user_id=user, now=now))
    p.ingest([EventIn(event_id="c1", user_id=user, item_id=all_items(shown)[-1], behavior="click", ts=now - 10)])
    first = p.homepage(HomepageRequest(user_id=user, now=now))  # rebuilt: reflects behaviour up to now - 10
    assert "recall" in first.timings_ms
    late = all_items(first)[0]
    p.ingest([EventIn(event_id="late-buy", user_id=user, item_id=late, behavior="buy", ts=now - 20)])
    after = p.homepage(HomepageRequest(user_id=user, now=now + 1, template_index=first.template_index))
    assert "recall" in after.timings_ms
    assert int(bundle.standard_of[bundle.item_code(late)]) not in standards(bundle, all_items(after))
    p.close()


def test_concurrent_pages_of_one_user_all_reach_the_exposure_log(bundle, open_client):
    """Each page served is logged for the ranker's fatigue counts, even when two requests write at once."""
    user, now = active_user(bundle)
    pipes = [Pipeline(bundle, open_client(), Config()) for _ in range(2)]
    pipes[0].homepage(HomepageRequest(user_id=user, now=now))  # templates exist: the rest take the fast path

    def views(p):
        for i in range(10):
            p.homepage(HomepageRequest(user_id=user, now=now + 1 + i, template_index=None))

    threads = [threading.Thread(target=views, args=(p,)) for p in pipes]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    log = pipes[0].exposure_log(pipes[0].store.get_blob(user, "templates"))
    assert sorted(log["ts"]) == sorted([now] + [now + 1 + i for i in range(10)] * 2)  # a plain put loses some
    [p.close() for p in pipes]
