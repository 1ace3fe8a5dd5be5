"""The real app on 127.0.0.1: uvicorn in a subprocess, real HTTP, real SQLite and Redis state."""
import signal
import threading
import time

import httpx
import polars as pl
import pytest

from conftest import free_port

from homefeed.serve.process import start_server as serve_process

TOKEN = "test-token"


def start_server(bundle, state):
    """The real `homefeed serve` in a subprocess, on a free port, with an admin token."""
    return serve_process(bundle, port=free_port(), state=state, settings=(f'serve.admin_token="{TOKEN}"',), quiet=True)


@pytest.fixture(scope="module")
def state_db(tmp_path_factory):
    return tmp_path_factory.mktemp("http") / "state.db"


@pytest.fixture(scope="module")
def server(tiny_bundle, state_db):
    proc, url = start_server(tiny_bundle, f"sqlite:{state_db}")
    yield url
    proc.terminate()
    proc.wait(10)


def known_user(bundle_dir):
    return str(pl.read_parquet(bundle_dir / "data" / "recent_events.parquet")["user_raw"][0])


def test_homepage_events_similar_health_metrics(server, tiny_bundle):
    user = known_user(tiny_bundle)
    r = httpx.post(server + "/v1/homepage", json={"user_id": user, "now": 1512230000}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["slots"]) == {"recommended", "flash_sale", "group_buy", "flash_discount"}
    item = body["slots"]["recommended"][0]["item_id"]
    assert {"item_id", "score", "channel", "trigger", "reason"} <= set(body["slots"]["recommended"][0])
    r = httpx.post(server + "/v1/events", json={"events": [
        {"event_id": "h1", "user_id": user, "item_id": item, "behavior": "click", "ts": 1512230001},
        {"event_id": "h1", "user_id": user, "item_id": item, "behavior": "click", "ts": 1512230001}]})
    assert r.json() == {"received": 2, "stored": 1}
    sim = httpx.get(server + f"/v1/items/{item}/similar?k=5").json()
    assert sim["item_id"] == item and len(sim["similar"]) <= 5
    assert httpx.get(server + "/v1/items/no-such-item/similar").status_code == 404
    assert httpx.get(server + "/healthz").json()["status"] == "ok"
    metrics = httpx.get(server + "/metrics").text
    assert "homefeed_requests_total" in metrics and "homefeed_stage_seconds_bucket" in metrics


@pytest.mark.parametrize("payload, field", [
    ({"scene": "homepage"}, "user_id"),
    ({"user_id": "u", "scene": "checkout"}, "scene"),
    ({"user_id": "u", "slots": {"recommended": 1000}}, "slots"),
    ({"user_id": "u", "slots": {"recommended": 4, "flash_sael": 2}}, "slots"),  # no such material pool
    ({"user_id": "u", "slots": {f"s{i}": 1 for i in range(17)}}, "slots"),  # bounded number of slots
    ({"user_id": "u", "colour": "red"}, "colour"),
])
def test_bad_homepage_requests_name_the_field(server, payload, field):
    r = httpx.post(server + "/v1/homepage", json=payload)
    assert r.status_code == 422
    assert any(field in d["field"] for d in r.json()["detail"]), r.json()


def test_bad_events_name_the_field(server):
    r = httpx.post(server + "/v1/events", json={"events": [{"event_id": "x", "user_id": "u", "item_id": "i",
                                                            "behavior": "teleport", "ts": 1512230000}]})
    assert r.status_code == 422 and "events.0.behavior" in r.json()["detail"][0]["field"]
    assert "teleport" in r.json()["detail"][0]["problem"]


@pytest.mark.parametrize("now", [2**63, -2**63 - 1, 10**30, 0, 4_102_444_800])
def test_now_outside_the_time_range_is_refused(server, now):
    r = httpx.post(server + "/v1/homepage", json={"user_id": "victim", "now": now})
    assert r.status_code == 422 and [d["field"] for d in r.json()["detail"]] == ["now"], r.text
    assert httpx.post(server + "/v1/homepage", json={"user_id": "victim"}, timeout=30).status_code == 200


def test_stored_state_out_of_int64_never_breaks_a_users_homepage(server, state_db, tiny_bundle):
    """What a `now` past int64 left in a user's state before it was bounded: every later request still gets a 200."""
    import json
    import sqlite3

    user = known_user(tiny_bundle)
    assert httpx.post(server + "/v1/homepage", json={"user_id": user, "now": 1512230000}, timeout=30).status_code == 200
    with sqlite3.connect(state_db) as c:
        [raw] = c.execute("SELECT value FROM blobs WHERE user_id = ? AND key = 'templates'", (user,)).fetchone()
        blob = json.loads(raw)
        blob["exposed"]["ts"][-1] = 2**63 + 5
        c.execute("UPDATE blobs SET value = ? WHERE user_id = ? AND key = 'templates'", (json.dumps(blob), user))
        c.execute("INSERT INTO blobs (user_id, key, value) VALUES ('victim-2', 'templates', '{\"exposed\": {\"ts\": [-9223372036854775809]')")
    for who in (user, user, "victim-2", "victim-2"):
        r = httpx.post(server + "/v1/homepage", json={"user_id": who, "now": 1512230100}, timeout=30)
        assert r.status_code == 200, r.text
    metrics = httpx.get(server + "/metrics").text
    assert 'homefeed_bad_state_total{what="templates"} 2.0' in metrics


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_kill_9_during_ingestion_loses_no_acked_event(tiny_bundle, tmp_path, request, backend):
    state = f"sqlite:{tmp_path / 'kill.db'}" if backend == "sqlite" else request.getfixturevalue("redis_url")
    proc, url = start_server(tiny_bundle, state)
    acked, stop = [], threading.Event()

    def writer(w):
        with httpx.Client(timeout=10) as c:
            for i in range(100000):
                if stop.is_set():
                    return
                # a user per batch: Redis keeps each user's last ids only, and this counts losses, not trimming
                batch = [{"event_id": f"{backend}-{w}-{i}-{j}", "user_id": f"k{w}-{i}", "item_id": "1", "behavior": "pv",
                          "ts": 1512230000 + i} for j in range(5)]
                try:
                    if c.post(url + "/v1/events", json={"events": batch}).status_code == 200:
                        acked.extend((e["event_id"], e["user_id"]) for e in batch)
                except httpx.TransportError:
                    return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    [t.start() for t in threads]
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop.set()
    [t.join() for t in threads]
    assert len(acked) > 0
    from homefeed.serve.state import open_store

    store = open_store(state)
    missing = [e for e, user in acked if not store.has_event(e, user)]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
