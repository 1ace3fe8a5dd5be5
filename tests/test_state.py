"""Both user-state backends pass the same tests: a real SQLite file and a real redis-server."""
import sqlite3
import threading

import pytest

from homefeed.serve.state import UNREADABLE, Event, RedisStore, SQLiteStore, open_store


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "state.db")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, prefix=f"t{abs(hash(request.node.name))}:")
    yield s
    s.close()


def ev(i, user="u1", item="i1", behavior="click", ts=100):
    return Event(f"e{i}", user, item, behavior, ts)


def test_append_is_idempotent_on_event_id(store):
    assert [e.event_id for e in store.append_events([ev(1), ev(2, ts=101)])] == ["e1", "e2"]
    assert [e.event_id for e in store.append_events([ev(2, ts=101), ev(3, ts=102), ev(3, ts=102)])] == ["e3"]
    assert [e.event_id for e in store.recent_events("u1")] == ["e1", "e2", "e3"]
    assert store.has_event("e3") and not store.has_event("e9")
    assert store.count_events() == 3


def test_recent_events_oldest_first_and_limited(store):
    store.append_events([ev(i, ts=1000 - i) for i in range(10)])  # arrive newest first
    recent = store.recent_events("u1", n=3)
    assert [e.ts for e in recent] == sorted(e.ts for e in recent)
    assert [e.ts for e in recent] == [998, 999, 1000]
    assert store.recent_events("nobody") == []


def test_profiles_and_blobs(store):
    assert store.get_profile("u1") == {}
    store.put_profiles({"u1": {"gender": "F", "age": 31}, "u2": {"city": "c3"}})
    assert store.get_profile("u1") == {"gender": "F", "age": 31}
    assert store.get_blob("u1", "purchase_filter") is None
    store.put_blob("u1", "purchase_filter", {"blocked": {"7": 1234}})
    store.put_blob("u1", "purchase_filter", {"blocked": {"8": 99}})
    assert store.get_blob("u1", "purchase_filter") == {"blocked": {"8": 99}}


def test_concurrent_writers_lose_nothing(store):
    def write(t):
        for i in range(50):
            store.append_events([ev(f"{t}-{i}", user=f"u{t}", ts=i)])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert store.count_events() == 200
    assert len(store.recent_events("u2", n=1000)) == 50


def _twin(store):
    """A second client of the same state (another worker process would hold one)."""
    return SQLiteStore(store.path) if isinstance(store, SQLiteStore) else RedisStore(_url(store), prefix=store.prefix)


def _url(store):
    kw = store.r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def test_update_blob_is_atomic_across_threads_and_clients(store):
    twin = _twin(store)

    def bump(blob):
        return {"n": (blob or {"n": 0})["n"] + 1}

    def work(s):
        for _ in range(25):
            s.update_blob("u1", "counter", bump)

    threads = [threading.Thread(target=work, args=(s,)) for s in (store, store, twin, twin)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert store.get_blob("u1", "counter") == {"n": 100}  # a plain get + put would lose increments here
    twin.close()


def test_update_blob_none_keeps_the_value_and_errors_change_nothing(store):
    assert store.update_blob("u1", "k", lambda blob: None) is None and store.get_blob("u1", "k") is None
    store.put_blob("u1", "k", {"a": 1})
    assert store.update_blob("u1", "k", lambda blob: None) is None and store.get_blob("u1", "k") == {"a": 1}

    def broken(blob):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.update_blob("u1", "k", broken)
    assert store.update_blob("u1", "k", lambda blob: {"a": blob["a"] + 1}) == {"a": 2}  # the store still works


def test_undecodable_stored_values_read_as_unreadable_and_can_be_replaced(store):
    """Values written behind the store's back (a corrupt row, an older format) never raise on the way out."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as c:
            c.execute("INSERT INTO blobs VALUES ('u1', 'templates', '{not json')")
            c.execute("INSERT INTO profiles VALUES ('u1', '[1, 2]')")
            c.execute("INSERT INTO events VALUES ('bad', 'u1', 'i1', 'click', 'soon')")  # SQLite keeps the text
    else:
        store.r.hset(f"{store.prefix}blob:u1", "templates", "{not json")
        store.r.hset(f"{store.prefix}profile", "u1", "[1, 2]")
        store.r.zadd(f"{store.prefix}ev:u1", {"not an event": 1})
    assert set(store.get_blob("u1", "templates")) == {UNREADABLE}
    assert set(store.get_profile("u1")) == {UNREADABLE}
    [bad] = store.recent_events("u1")
    assert bad.behavior == UNREADABLE or not isinstance(bad.ts, int)
    seen = []
    assert store.update_blob("u1", "templates", lambda blob: seen.append(blob) or {"fresh": 1}) == {"fresh": 1}
    assert UNREADABLE in seen[0] and store.get_blob("u1", "templates") == {"fresh": 1}


def test_sqlite_survives_reopen(tmp_path):
    s = SQLiteStore(tmp_path / "s.db")
    s.append_events([ev(1)])
    s.close()
    assert [e.event_id for e in open_store(f"sqlite:{tmp_path / 's.db'}").recent_events("u1")] == ["e1"]
    with pytest.raises(ValueError, match="sqlite:PATH"):
        open_store("mongo://x")
