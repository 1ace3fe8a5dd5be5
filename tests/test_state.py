"""Every user-state backend passes the same tests: a real SQLite file, a real redis-server, a real Redis Cluster."""
import re
import sqlite3
import threading

import pytest

from homefeed.serve.state import COMMIT_LUA, UNREADABLE, USER_KEYS, Event, RedisStore, SQLiteStore, StoreError, open_store
from homefeed.serve.state_base import HEALTH_USER


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "state.db")
    elif request.param == "redis":
        s = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{abs(hash(request.node.name))}:")
    else:  # three masters: users' keys spread over nodes, so an undeclared or cross-slot key fails
        url = request.getfixturevalue("redis_cluster_url").replace("redis+cluster://", "redis://")
        s = RedisStore(url, prefix=f"t{abs(hash(request.node.name))}:", cluster=True)
    yield s
    s.close()


def ev(i, user="u1", item="i1", behavior="click", ts=100):
    return Event(f"e{i}", user, item, behavior, ts)


def test_append_is_idempotent_on_event_id(store):
    assert [e.event_id for e in store.append_events([ev(1), ev(2, ts=101)])] == ["e1", "e2"]
    assert [e.event_id for e in store.append_events([ev(2, ts=101), ev(3, ts=102), ev(3, ts=102)])] == ["e3"]
    assert [e.event_id for e in store.recent_events("u1")] == ["e1", "e2", "e3"]
    assert store.has_event("e3", "u1") and not store.has_event("e9", "u1")
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
    if isinstance(store, SQLiteStore):
        return SQLiteStore(store.path)
    cluster = not hasattr(store.r, "connection_pool")
    kw = store.r.get_default_node().redis_connection.connection_pool.connection_kwargs if cluster \
        else store.r.connection_pool.connection_kwargs
    return RedisStore(f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}", prefix=store.prefix, cluster=cluster)


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
            c.execute("INSERT INTO blobs (user_id, key, value) VALUES ('u1', 'templates', '{not json')")
            c.execute("INSERT INTO profiles VALUES ('u1', '[1, 2]')")
            c.execute("INSERT INTO events (event_id, user_id, item_id, behavior, ts) VALUES ('bad', 'u1', 'i1', 'click', 'soon')")  # SQLite keeps the text
    else:
        events, _, _, blobs = store.keys_of("u1")
        store.r.hset(blobs, "templates", "{not json")
        store.r.hset(f"{store.prefix}profile", "u1", "[1, 2]")
        store.r.zadd(events, {"not an event": 1})
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


def test_events_and_their_fold_commit_together(store):
    """The fold's blob changes land with the events or not at all, and a retry of stored events folds nothing."""
    def count(user, evs):
        return [("seen", lambda blob: {"n": (blob or {"n": 0})["n"] + len(evs), "users": user}),
                ("last", lambda blob: {"ts": max(e.ts for e in evs)})]

    assert len(store.append_events([ev(1), ev(2, ts=105), ev(3, user="u2", ts=90)], fold=count)) == 3
    assert store.get_blob("u1", "seen") == {"n": 2, "users": "u1"} and store.get_blob("u2", "seen")["n"] == 1
    assert store.get_blob("u1", "last") == {"ts": 105}
    assert store.append_events([ev(1), ev(2, ts=105), ev(4, ts=106)], fold=count) == [ev(4, ts=106)]
    assert store.get_blob("u1", "seen")["n"] == 3  # the duplicates were not folded again

    def broken(user, evs):
        return [("seen", lambda blob: {"n": 99}), ("last", lambda blob: 1 / 0)]

    with pytest.raises(ZeroDivisionError):
        store.append_events([ev(5, ts=107)], fold=broken)
    assert not store.has_event("e5", "u1") and store.get_blob("u1", "seen")["n"] == 3  # neither the event nor a blob
    assert store.append_events([ev(5, ts=107)], fold=count) == [ev(5, ts=107)]  # a retry then stores and folds it
    assert store.get_blob("u1", "seen")["n"] == 4


def test_concurrent_folds_of_one_user_lose_nothing(store):
    twin = _twin(store)

    def bump(user, evs):
        return [("n", lambda blob: {"n": (blob or {"n": 0})["n"] + len(evs)})]

    def work(s, t):
        for i in range(25):
            s.append_events([ev(f"{t}-{i}", ts=i)], fold=bump)

    threads = [threading.Thread(target=work, args=(s, t)) for t, s in enumerate((store, store, twin, twin))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert store.get_blob("u1", "n") == {"n": 100}
    twin.close()


def test_check_is_a_round_trip(store):
    store.check()
    first = store.get_blob(HEALTH_USER, f"check-{store._probe}")["nonce"]
    store.check()  # a second probe writes a new value over the first one, and reads it back
    assert store.get_blob(HEALTH_USER, f"check-{store._probe}")["nonce"] not in ("", first)


def test_redis_keeps_each_users_last_events_and_ids(redis_url):
    s = RedisStore(redis_url, prefix="trim:", max_events=5, max_ids=8)
    for i in range(12):
        s.append_events([ev(i, ts=1000 + i)])
    assert [e.event_id for e in s.recent_events("u1", 100)] == [f"e{i}" for i in range(7, 12)]
    events, ids, _, _ = s.keys_of("u1")
    assert s.r.zcard(events) == 5 and s.r.zcard(ids) == 8
    assert s.append_events([ev(11, ts=1011), ev(4, ts=1004)]) == []  # ids of trimmed events still deduplicate
    s.close()


def test_redis_keys_of_a_user_share_one_hash_tag_and_the_script_declares_them(redis_url):
    """Every key the store writes for a user carries the `{user}` hash tag, and the Lua script touches only KEYS."""
    s = RedisStore(redis_url, prefix="tags:")
    s.append_events([ev(1, user="a}b{c"), ev(2, user="u:2")], fold=lambda user, evs: [("k", lambda blob: {"v": 1})])
    s.put_blob("u:3", "x", {"v": 1})
    s.put_profiles({"u:2": {"age": 3}})
    for key in s.r.scan_iter("tags:*"):
        assert key == "tags:profile" or re.fullmatch(r"tags:\{[^}]*\}.*", key), key
    tags = {re.match(r"tags:\{([^}]*)\}", k).group(1) for k in s.r.scan_iter("tags:{*")}
    assert tags == {"a", "u:2", "u:3"}  # 'a}b{c': its hash tag ends at the first brace, the same for all its keys
    assert set(re.findall(r"redis\.call\('\w+', (\w+)", COMMIT_LUA)) == {"KEYS"}  # no key built inside the script
    assert len(USER_KEYS) == max(int(i) for i in re.findall(r"KEYS\[(\d)\]", COMMIT_LUA))
    s.close()


def test_sqlite_refuses_a_deleted_or_corrupt_file(tmp_path):
    path = tmp_path / "s.db"
    s = SQLiteStore(path)
    s.append_events([ev(1)])
    path.unlink()
    with pytest.raises(StoreError, match="deleted or replaced"):
        s.append_events([ev(2)])
    with pytest.raises(StoreError, match="deleted or replaced"):
        s.check()
    assert not path.exists()  # no fresh empty file was created in its place
    s.close()
    healthy = SQLiteStore(tmp_path / "h.db")
    healthy.append_events([ev(i, user=f"u{i}") for i in range(2000)])
    healthy.close()
    data = bytearray((tmp_path / "h.db").read_bytes())
    data[4096 * 3: 4096 * 3 + 2000] = b"\xff" * 2000  # a damaged page in the middle of the file
    (tmp_path / "c.db").write_bytes(bytes(data))
    with pytest.raises(StoreError, match="integrity check"):
        SQLiteStore(tmp_path / "c.db")
    (tmp_path / "n.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SQLiteStore(tmp_path / "n.db")


def test_redis_down_is_a_store_error():
    s = RedisStore("redis://127.0.0.1:1/0")
    for call in (lambda: s.append_events([ev(1)]), s.check, lambda: s.get_blob("u1", "k"), lambda: s.recent_events("u1")):
        with pytest.raises(StoreError, match="Redis state store"):
            call()


def test_idle_users_state_is_evicted_sqlite(tmp_path):
    s = SQLiteStore(tmp_path / "s.db", idle_s=3600)
    for user in ("idle", "active"):
        s.put_blob(user, "templates", {"v": 1})
        s.update_blob(user, "purchase_filter", lambda blob: {"blocks": {}})
    s.append_events([ev(1, user="idle")])
    with sqlite3.connect(s.path) as c:
        c.execute("UPDATE blobs SET touched = touched - 7200 WHERE user_id = 'idle'")
    assert s.evict_idle() == 2 and s.evict_idle() == 0
    assert s.get_blob("idle", "templates") is None and s.get_blob("idle", "purchase_filter") is None
    assert s.get_blob("active", "templates") == {"v": 1}
    assert [e.event_id for e in s.recent_events("idle")] == ["e1"]  # events are the record: kept
    s.close()


def test_a_state_file_from_before_eviction_keeps_its_blobs(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:  # the blobs table as earlier versions created it
        c.execute("CREATE TABLE blobs (user_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (user_id, key))")
        c.execute("""INSERT INTO blobs VALUES ('u1', 'purchase_filter', '{"blocks": {"3": [2000000000, 0]}}')""")
    s = SQLiteStore(path, idle_s=3600)
    assert s.evict_idle() == 0 and s.get_blob("u1", "purchase_filter") == {"blocks": {"3": [2000000000, 0]}}
    s.put_blob("u2", "k", {"v": 2})
    assert s.get_blob("u2", "k") == {"v": 2}
    s.close()


def test_idle_users_keys_expire_redis(redis_url):
    s = RedisStore(redis_url, prefix="idle:", idle_s=3600)
    s.append_events([ev(1)], fold=lambda user, evs: [("purchase_filter", lambda blob: {"blocks": {}})])
    s.put_blob("u2", "templates", {"v": 1})
    for key in s.keys_of("u1"):
        assert 0 < s.r.ttl(key) <= 3600, key
    assert 0 < s.r.ttl(s.keys_of("u2")[3]) <= 3600
    s.close()


def test_an_events_arm_is_stored_and_read_back(store):
    store.append_events([Event("a1", "u1", "i1", "click", 100, "treatment"), ev(2, ts=101)])
    assert [(e.event_id, e.arm) for e in store.recent_events("u1")] == [("a1", "treatment"), ("e2", "")]


def test_a_state_file_from_before_experiments_gains_the_arm_column(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:  # the events table as earlier versions created it
        c.execute("CREATE TABLE events (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL, "
                  "behavior TEXT NOT NULL, ts INTEGER NOT NULL)")
        c.execute("INSERT INTO events VALUES ('old', 'u1', 'i1', 'pv', 100)")
    s = SQLiteStore(path)
    s.append_events([Event("new", "u1", "i2", "click", 101, "b")])
    assert [(e.event_id, e.arm) for e in s.recent_events("u1")] == [("old", ""), ("new", "b")]
    s.close()
