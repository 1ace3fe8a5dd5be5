"""The feature server: per-user state behind one small interface, with two backends.

Per user it keeps the profile, the behaviour log (clicks, favs, carts, purchases, views with
time), and named JSON blobs for the mechanism's state (purchase filter, exposure templates). Ids
are the shop's raw ids as strings, so a newer bundle with new vocabularies reads the same state.

An event and the state it changes commit together: `append_events(events, fold)` stores the new
events and applies `fold`'s blob changes for their users in one SQLite transaction or one Redis
script, so a process killed at any point leaves both written or neither (a buy stored but never
folded into the purchase filter cannot happen: a retry would find it stored and fold nothing).

- `SQLiteStore`: the embedded default, one file in WAL mode; a write returns only after its
  transaction is committed, so an acknowledged event survives `kill -9`. Events are committed with
  `synchronous=FULL` (fsync before the acknowledgement: they survive a power cut too); the
  mechanism blobs, rewritten on every homepage request, with `synchronous=NORMAL` (no fsync per
  commit: a killed process loses nothing, a power cut may lose the last blob writes, never events).
  Opening runs SQLite's `quick_check`; a file deleted or replaced under the running server, or found
  corrupt, fails every later call instead of writing into a file nobody will read again. Blobs not
  written for `idle_s` are deleted by `evict_idle` (the server sweeps hourly); events are kept.
- `RedisStore`: shared by many API replicas; each write is one Lua script over one user's keys, all
  sharing the hash tag `{user id}` (one Redis Cluster slot), declared in KEYS. Each user keeps their
  last `max_events` events and event ids (idempotency holds within that window); a user's keys expire
  `idle_s` after their last write. Durability is the server's AOF setting (`appendfsync always`).

Every backend failure is a `StoreError` naming the fault (the API answers 503 with it). A stored
value that does not decode never raises on the way out: a blob or profile that is not a JSON object
reads as `{UNREADABLE: <the start of the raw text>}`, an event row that does not decode as an event
whose behavior is UNREADABLE, so the caller can skip it and count it.

    >>> store = open_store("sqlite:/tmp/state.db")          # doctest: +SKIP
    >>> store.append_events([Event("e1", "u1", "i9", "click", 1700000000)])   # doctest: +SKIP
    [Event(event_id='e1', ...)]
"""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis
from redis.cluster import RedisCluster

UNREADABLE = "__unreadable__"
HEALTH_USER = "__homefeed_health__"  # the user id under which `check` writes and reads its probe blob
IDLE_S = 180 * 86_400  # a user's mechanism state (and, in Redis, events) is dropped after this long without a write

Change = Callable[[dict | None], dict | None]  # a blob's current value (None: absent) -> new value (None: unchanged)
Fold = Callable[[str, list["Event"]], list[tuple[str, Change]]]  # (user, its new events) -> [(blob key, change)]


class StoreError(RuntimeError):
    """The state store cannot be used right now (down, deleted, corrupt, full); the message says which."""


@dataclass(frozen=True)
class Event:
    """One behaviour event as clients send it. `event_id` makes ingestion idempotent."""

    event_id: str
    user_id: str
    item_id: str
    behavior: str
    ts: int


class StateStore(ABC):
    """What the online pipeline needs to know and remember about users."""

    @abstractmethod
    def append_events(self, events: list[Event], fold: Fold | None = None) -> list[Event]:
        """Store events not seen before (by event_id); return those new ones. Durable on return.

        For each user with new events, `fold(user, their new events)` names blob changes that commit
        atomically with the events; a change may run more than once, so it must have no side effects."""

    @abstractmethod
    def recent_events(self, user_id: str, n: int = 200) -> list[Event]:
        """The user's last n events, oldest first."""

    @abstractmethod
    def get_profile(self, user_id: str) -> dict:
        """The user's profile (gender, age, city, purchase_power); {} when unknown."""

    @abstractmethod
    def put_profiles(self, profiles: dict[str, dict]) -> None: ...

    @abstractmethod
    def get_blob(self, user_id: str, key: str) -> dict | None:
        """A named piece of mechanism state (e.g. 'purchase_filter', 'templates'), or None."""

    @abstractmethod
    def put_blob(self, user_id: str, key: str, value: dict) -> None: ...

    @abstractmethod
    def update_blob(self, user_id: str, key: str, change: Change) -> dict | None:
        """Read-modify-write one blob atomically (across threads, processes and replicas): `change` gets the
        current value (None if absent) and returns the new one (None: leave it unchanged); returns that value.
        `change` may run more than once (optimistic retry), so it must have no side effects."""

    @abstractmethod
    def has_event(self, event_id: str, user_id: str | None = None) -> bool:
        """Whether the event is stored (RedisStore keeps event ids per user, so it needs `user_id`)."""

    @abstractmethod
    def count_events(self) -> int: ...

    def check(self) -> None:
        """A write-and-read round trip through the store (what /readyz runs); raises StoreError naming the fault."""
        nonce = uuid.uuid4().hex
        key = f"check-{self._probe}"
        self.put_blob(HEALTH_USER, key, {"nonce": nonce})
        if (self.get_blob(HEALTH_USER, key) or {}).get("nonce") != nonce:
            raise StoreError("a value written to the state store did not read back")

    def evict_idle(self, limit: int = 10_000) -> int:
        """Delete up to `limit` blobs not written for the store's `idle_s`; returns how many (Redis expires keys itself)."""
        return 0

    @functools.cached_property
    def _probe(self) -> str:
        return uuid.uuid4().hex[:12]  # one probe key per store client: workers' probes never overwrite each other

    def close(self) -> None:
        pass


def _by_user(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.user_id, []).append(e)
    return out


def _guarded(method):
    """Decorator: the backend's own errors (`self.ERRORS`) out of a store method become StoreError naming them."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except self.ERRORS as e:
            self._failed(e)
            raise StoreError(f"{self.NAME}: {e}") from e
    return guarded


# --- SQLite -----------------------------------------------------------------------------------------
SQLITE_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB: the file is damaged; nothing more is written to it


class SQLiteStore(StateStore):
    """One SQLite file in WAL mode; a connection per thread (FastAPI runs handlers in a pool)."""

    NAME, ERRORS = "SQLite state store", (sqlite3.Error, OSError)

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                                       behavior TEXT NOT NULL, ts INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts);
    CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, profile TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS blobs (user_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                                      touched INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (user_id, key));
    """
    NOW = "CAST(strftime('%s', 'now') AS INTEGER)"
    PUT_BLOB = f"INSERT OR REPLACE INTO blobs (user_id, key, value, touched) VALUES (?, ?, ?, {NOW})"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", blob_synchronous: str = "NORMAL",
                 integrity_check: bool = True, idle_s: int = IDLE_S):
        self.path, self.idle_s = str(path), idle_s
        self.synchronous, self.blob_synchronous = synchronous, blob_synchronous
        self.fault: str | None = None  # set once the file is found corrupt: every later call fails with it
        self._local = threading.local()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._file = None
        self._open(integrity_check)

    @_guarded
    def _open(self, integrity_check: bool) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # creates the file when missing
        try:
            if integrity_check:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
                if problems != ["ok"]:
                    raise StoreError(f"the state file {self.path} failed SQLite's integrity check: {'; '.join(problems)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(self.SCHEMA)
            self._transaction(conn, lambda: self._migrate(conn))
        finally:
            conn.close()
        self._file = _identity(self.path)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """A file from before blob eviction: add the write-time column, its blobs counted as written now."""
        if "touched" not in {row[1] for row in conn.execute("PRAGMA table_info(blobs)")}:
            conn.execute("ALTER TABLE blobs ADD COLUMN touched INTEGER NOT NULL DEFAULT 0")
            conn.execute(f"UPDATE blobs SET touched = {self.NOW}")
        conn.execute("CREATE INDEX IF NOT EXISTS blobs_by_touched ON blobs (touched)")

    def _failed(self, e: BaseException) -> None:
        if getattr(e, "sqlite_errorcode", None) in SQLITE_CORRUPT:
            self.fault = f"the state file is corrupt ({e}); restore it from a backup or move it away"

    def _conn(self, *, blobs: bool = False) -> sqlite3.Connection:
        """This thread's connection: events and reads, or (blobs=True) mechanism-blob writes.

        Refuses (StoreError) once the file is corrupt, or deleted or replaced since the store opened it:
        a connection still open on a deleted file would acknowledge writes nobody can read again."""
        if self.fault:
            raise StoreError(self.fault)
        if _identity(self.path) != self._file:
            raise StoreError("the state file was deleted or replaced while the server ran; restart it to open the file anew")
        name = "blob_conn" if blobs else "conn"
        conn = getattr(self._local, name, None)
        if conn is None:  # mode=rw: never create a fresh empty file in place of a deleted one
            conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.blob_synchronous if blobs else self.synchronous}")
            setattr(self._local, name, conn)
        return conn

    @staticmethod
    def _transaction(conn: sqlite3.Connection, work: Callable[[], object]):
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: no other writer can slip in between read and write
        try:
            out = work()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return out

    @_guarded
    def append_events(self, events: list[Event], fold: Fold | None = None) -> list[Event]:
        conn = self._conn()

        def work() -> list[Event]:
            new = []
            for e in events:  # one prepared statement per event, inside one transaction
                cur = conn.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                                   (e.event_id, e.user_id, e.item_id, e.behavior, int(e.ts)))
                if cur.rowcount == 1:
                    new.append(e)
            for user, evs in _by_user(new).items() if fold else ():
                for key, change in fold(user, evs):
                    self._change(conn, user, key, change)
            return new

        return self._transaction(conn, work)

    @staticmethod
    def _change(conn: sqlite3.Connection, user_id: str, key: str, change: Change) -> dict | None:
        row = conn.execute("SELECT value FROM blobs WHERE user_id = ? AND key = ?", (str(user_id), key)).fetchone()
        new = change(_decode(row[0]) if row else None)
        if new is not None:
            conn.execute(SQLiteStore.PUT_BLOB, (str(user_id), key, json.dumps(new)))
        return new

    @_guarded
    def recent_events(self, user_id: str, n: int = 200) -> list[Event]:
        rows = self._conn().execute(
            "SELECT event_id, user_id, item_id, behavior, ts FROM events WHERE user_id = ? ORDER BY ts DESC, rowid DESC LIMIT ?",
            (str(user_id), n)).fetchall()
        return [Event(*r) for r in reversed(rows)]

    @_guarded
    def get_profile(self, user_id: str) -> dict:
        row = self._conn().execute("SELECT profile FROM profiles WHERE user_id = ?", (str(user_id),)).fetchone()
        return _decode(row[0]) if row else {}

    @_guarded
    def put_profiles(self, profiles: dict[str, dict]) -> None:
        conn = self._conn()
        self._transaction(conn, lambda: conn.executemany(
            "INSERT OR REPLACE INTO profiles VALUES (?, ?)", [(str(u), json.dumps(p)) for u, p in profiles.items()]))

    @_guarded
    def get_blob(self, user_id: str, key: str) -> dict | None:
        row = self._conn().execute("SELECT value FROM blobs WHERE user_id = ? AND key = ?", (str(user_id), key)).fetchone()
        return _decode(row[0]) if row else None

    @_guarded
    def put_blob(self, user_id: str, key: str, value: dict) -> None:
        self._conn(blobs=True).execute(self.PUT_BLOB, (str(user_id), key, json.dumps(value)))

    @_guarded
    def update_blob(self, user_id: str, key: str, change: Change) -> dict | None:
        conn = self._conn(blobs=True)
        return self._transaction(conn, lambda: self._change(conn, user_id, key, change))

    @_guarded
    def has_event(self, event_id: str, user_id: str | None = None) -> bool:
        return self._conn().execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone() is not None

    @_guarded
    def count_events(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    @_guarded
    def evict_idle(self, limit: int = 10_000) -> int:
        return self._conn(blobs=True).execute(
            f"DELETE FROM blobs WHERE rowid IN (SELECT rowid FROM blobs WHERE touched < {self.NOW} - ? LIMIT ?)",
            (self.idle_s, limit)).rowcount

    def close(self) -> None:
        for name in ("conn", "blob_conn"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


# --- Redis ------------------------------------------------------------------------------------------
# One user's keys (KEYS): events (zset of JSON rows by ts), event ids (zset by arrival), arrival counter,
# blobs (hash). ARGV: max_events, max_ids, n_events, n_blobs, then per event (id, row, ts), then per blob
# (field, expected, new): expected '' = absent, else '=' .. the raw value read; new '' = leave it; last, idle_s:
# every key of the user expires that long after this write. Returns 0 without writing anything when an event
# id is stored by now or a blob changed since it was read.
COMMIT_LUA = """
local max_events, max_ids, n, m = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = 4 + 3 * n
for i = 0, n - 1 do
  if redis.call('ZSCORE', KEYS[2], ARGV[5 + 3 * i]) then return 0 end
end
for i = 0, m - 1 do
  local current = redis.call('HGET', KEYS[4], ARGV[b + 1 + 3 * i])
  if (current and ('=' .. current) or '') ~= ARGV[b + 2 + 3 * i] then return 0 end
end
for i = 0, n - 1 do
  local seq = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[2], seq, ARGV[5 + 3 * i])
  redis.call('ZADD', KEYS[1], tonumber(ARGV[7 + 3 * i]) * 1000000 + seq % 1000000, ARGV[6 + 3 * i])
end
for i = 0, m - 1 do
  if ARGV[b + 3 + 3 * i] ~= '' then redis.call('HSET', KEYS[4], ARGV[b + 1 + 3 * i], ARGV[b + 3 + 3 * i]) end
end
if n > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -max_events - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -max_ids - 1)
end
for k = 1, #KEYS do redis.call('EXPIRE', KEYS[k], ARGV[#ARGV]) end
return 1
"""
USER_KEYS = ("ev", "eid", "seq", "blob")  # COMMIT_LUA's KEYS, in order


class RedisStore(StateStore):
    """State in a Redis server (or Redis Cluster: `cluster=True`) shared by every replica; keys under `prefix`."""

    NAME, ERRORS = "Redis state store", (redis.RedisError, OSError)

    def __init__(self, url: str, *, prefix: str = "hf:", max_events: int = 1000, max_ids: int | None = None,
                 cluster: bool = False, idle_s: int = IDLE_S):
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"Redis key prefix {prefix!r}: braces are reserved for the per-user hash tag")
        if max_events < 1:
            raise ValueError(f"max_events={max_events}: keep at least one event per user")
        self.r = (RedisCluster.from_url if cluster else redis.Redis.from_url)(url, decode_responses=True)
        self.prefix, self.max_events, self.idle_s = prefix, max_events, idle_s
        self.max_ids = max_ids or 10 * max_events  # ids outlive their events: a late retry is still recognised
        self._commit = self.r.register_script(COMMIT_LUA)

    def keys_of(self, user_id: str) -> list[str]:
        """The user's keys in COMMIT_LUA's order; the `{user}` hash tag puts them in one Cluster slot."""
        return [f"{self.prefix}{{{user_id}}}:{k}" for k in USER_KEYS]

    def _write(self, user_id: str, events: list[Event], fields: list[str], changes: list[Change]) -> tuple[bool, list]:
        """Read the user's blob fields, apply `changes`, and commit them with `events` if nothing moved meanwhile."""
        keys = self.keys_of(user_id)
        raws = self.r.hmget(keys[3], fields) if fields else []
        news = [change(_decode(raw) if raw is not None else None) for change, raw in zip(changes, raws)]
        argv: list = [self.max_events, self.max_ids, len(events), len(fields)]
        for e in events:
            argv += [e.event_id, json.dumps([e.event_id, e.user_id, e.item_id, e.behavior, int(e.ts)]), int(e.ts)]
        for field, raw, new in zip(fields, raws, news):
            argv += [field, "" if raw is None else "=" + raw, "" if new is None else json.dumps(new)]
        return bool(self._commit(keys=keys, args=[*argv, self.idle_s])), news

    def _failed(self, e: BaseException) -> None:
        pass  # a Redis outage heals by itself: the next call tries again

    @_guarded
    def append_events(self, events: list[Event], fold: Fold | None = None) -> list[Event]:
        seen: set[str] = set()
        unique = [e for e in events if not (e.event_id in seen or seen.add(e.event_id))]  # first of each id
        new: list[Event] = []
        for user, evs in _by_user(unique).items():
            while True:  # optimistic: the script refuses if an id or a blob moved since we read them
                stored = self.r.zmscore(self.keys_of(user)[1], [e.event_id for e in evs])
                fresh = [e for e, score in zip(evs, stored) if score is None]
                if not fresh:
                    break
                folds = fold(user, fresh) if fold else []
                ok, _ = self._write(user, fresh, [k for k, _ in folds], [c for _, c in folds])
                if ok:
                    new += fresh
                    break
        return new

    @_guarded
    def recent_events(self, user_id: str, n: int = 200) -> list[Event]:
        return [_event(r, user_id) for r in self.r.zrange(self.keys_of(user_id)[0], -n, -1)]

    @_guarded
    def get_profile(self, user_id: str) -> dict:
        raw = self.r.hget(f"{self.prefix}profile", str(user_id))
        return _decode(raw) if raw else {}

    @_guarded
    def put_profiles(self, profiles: dict[str, dict]) -> None:
        if profiles:
            self.r.hset(f"{self.prefix}profile", mapping={str(u): json.dumps(p) for u, p in profiles.items()})

    @_guarded
    def get_blob(self, user_id: str, key: str) -> dict | None:
        raw = self.r.hget(self.keys_of(user_id)[3], key)
        return _decode(raw) if raw else None

    @_guarded
    def put_blob(self, user_id: str, key: str, value: dict) -> None:
        self.update_blob(user_id, key, lambda _: value)  # the script: one write that also renews the user's expiry

    @_guarded
    def update_blob(self, user_id: str, key: str, change: Change) -> dict | None:
        while True:  # optimistic: the script writes only if the field is as read, else `change` runs again
            ok, [new] = self._write(user_id, [], [key], [change])
            if ok:
                return new

    @_guarded
    def has_event(self, event_id: str, user_id: str | None = None) -> bool:
        if user_id is None:
            raise ValueError("RedisStore keeps event ids per user (one Cluster slot each): pass user_id")
        return self.r.zscore(self.keys_of(user_id)[1], event_id) is not None

    @_guarded
    def count_events(self) -> int:
        """Events kept (after trimming), over every user: a scan, for tests and tools."""
        return sum(self.r.zcard(k) for k in self.r.scan_iter(f"{self.prefix}{{*}}:ev", count=1000))

    def close(self) -> None:
        self.r.close()


def _decode(raw: str) -> dict:
    """A stored JSON object; anything else (corrupt text, another type) as {UNREADABLE: the start of it}."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {UNREADABLE: str(raw)[:100]}


def _event(raw: str, user_id: str) -> Event:
    """A stored event row (a JSON list); one that does not decode as an event with behavior UNREADABLE."""
    try:
        return Event(*json.loads(raw))
    except (TypeError, ValueError):
        return Event("", str(user_id), "", UNREADABLE, 0)


def open_store(spec: str, *, max_events: int = 1000, idle_s: int = IDLE_S) -> StateStore:
    """`sqlite:PATH`, `redis://host:port/db` or `redis+cluster://host:port` (any node of a Redis Cluster).

    max_events: events kept per user by Redis (SQLite keeps them all); idle_s: state dropped after that long unwritten."""
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.removeprefix("sqlite:"), idle_s=idle_s)
    if spec.startswith("redis+cluster://"):
        return RedisStore("redis://" + spec.removeprefix("redis+cluster://"), max_events=max_events, cluster=True,
                          idle_s=idle_s)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec, max_events=max_events, idle_s=idle_s)
    raise ValueError(f"unknown state store {spec!r}; use sqlite:PATH, redis://HOST:PORT/DB or redis+cluster://HOST:PORT")
