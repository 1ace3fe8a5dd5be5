"""The feature server: per-user state behind one small interface, with two backends.

Per user it keeps the profile, the behaviour log (clicks, favs, carts, purchases, views with
time), and named JSON blobs for the mechanism's state (purchase filter, exposure templates). Ids
are the shop's raw ids as strings, so a newer bundle with new vocabularies reads the same state.

- `SQLiteStore`: the embedded default, one file in WAL mode; a write returns only after its
  transaction is committed, so an acknowledged event survives `kill -9`. Events are committed with
  `synchronous=FULL` (fsync before the acknowledgement: they survive a power cut too); the
  mechanism blobs, rewritten on every homepage request, with `synchronous=NORMAL` (no fsync per
  commit: a killed process loses nothing, a power cut may lose the last blob writes, never events).
- `RedisStore`: shared by many API replicas; the event append is one Lua script (atomic,
  idempotent on the event id); durability is the server's AOF setting (`appendfsync always`).

A stored value that does not decode never raises on the way out: a blob or profile that is not a JSON
object reads as `{UNREADABLE: <the start of the raw text>}`, an event row that does not decode as an
event whose behavior is UNREADABLE, so the caller can skip it and count it.

    >>> store = open_store("sqlite:/tmp/state.db")          # doctest: +SKIP
    >>> store.append_events([Event("e1", "u1", "i9", "click", 1700000000)])   # doctest: +SKIP
    [Event(event_id='e1', ...)]
"""
from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

UNREADABLE = "__unreadable__"


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
    def append_events(self, events: list[Event]) -> list[Event]:
        """Store events not seen before (by event_id); return those new ones. Durable on return."""

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
    def update_blob(self, user_id: str, key: str, change: Callable[[dict | None], dict | None]) -> dict | None:
        """Read-modify-write one blob atomically (across threads, processes and replicas): `change` gets the
        current value (None if absent) and returns the new one (None: leave it unchanged); returns that value.
        `change` may run more than once (optimistic retry), so it must have no side effects."""

    @abstractmethod
    def has_event(self, event_id: str) -> bool: ...

    @abstractmethod
    def count_events(self) -> int: ...

    def close(self) -> None:
        pass


class SQLiteStore(StateStore):
    """One SQLite file in WAL mode; a connection per thread (FastAPI runs handlers in a pool)."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                                       behavior TEXT NOT NULL, ts INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts);
    CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, profile TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS blobs (user_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                                      PRIMARY KEY (user_id, key));
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", blob_synchronous: str = "NORMAL"):
        self.path = str(path)
        self.synchronous, self.blob_synchronous = synchronous, blob_synchronous
        self._local = threading.local()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(self.SCHEMA)

    def _conn(self, *, blobs: bool = False) -> sqlite3.Connection:
        """This thread's connection: events and reads, or (blobs=True) mechanism-blob writes."""
        name = "blob_conn" if blobs else "conn"
        conn = getattr(self._local, name, None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.blob_synchronous if blobs else self.synchronous}")
            setattr(self._local, name, conn)
        return conn

    def append_events(self, events: list[Event]) -> list[Event]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            new = []
            for e in events:  # one prepared statement per event, inside one transaction
                cur = conn.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                                   (e.event_id, e.user_id, e.item_id, e.behavior, int(e.ts)))
                if cur.rowcount == 1:
                    new.append(e)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return new

    def recent_events(self, user_id: str, n: int = 200) -> list[Event]:
        rows = self._conn().execute(
            "SELECT event_id, user_id, item_id, behavior, ts FROM events WHERE user_id = ? ORDER BY ts DESC, rowid DESC LIMIT ?",
            (str(user_id), n)).fetchall()
        return [Event(*r) for r in reversed(rows)]

    def get_profile(self, user_id: str) -> dict:
        row = self._conn().execute("SELECT profile FROM profiles WHERE user_id = ?", (str(user_id),)).fetchone()
        return _decode(row[0]) if row else {}

    def put_profiles(self, profiles: dict[str, dict]) -> None:
        conn = self._conn()
        with conn:
            conn.execute("BEGIN")
            conn.executemany("INSERT OR REPLACE INTO profiles VALUES (?, ?)", [(str(u), json.dumps(p)) for u, p in profiles.items()])

    def get_blob(self, user_id: str, key: str) -> dict | None:
        row = self._conn().execute("SELECT value FROM blobs WHERE user_id = ? AND key = ?", (str(user_id), key)).fetchone()
        return _decode(row[0]) if row else None

    def put_blob(self, user_id: str, key: str, value: dict) -> None:
        self._conn(blobs=True).execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (str(user_id), key, json.dumps(value)))

    def update_blob(self, user_id: str, key: str, change: Callable[[dict | None], dict | None]) -> dict | None:
        conn = self._conn(blobs=True)
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: no other writer can slip in between read and write
        try:
            row = conn.execute("SELECT value FROM blobs WHERE user_id = ? AND key = ?", (str(user_id), key)).fetchone()
            new = change(_decode(row[0]) if row else None)
            if new is not None:
                conn.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (str(user_id), key, json.dumps(new)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return new

    def has_event(self, event_id: str) -> bool:
        return self._conn().execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone() is not None

    def count_events(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        for name in ("conn", "blob_conn"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)


_APPEND_LUA = """
local added = {}
for i = 1, #ARGV, 2 do
  local id, payload = ARGV[i], ARGV[i + 1]
  if redis.call('SET', KEYS[1] .. id, '1', 'NX') then
    local ev = cjson.decode(payload)
    local key = KEYS[2] .. ev[2]
    redis.call('ZADD', key, ev[5] * 1000000 + redis.call('INCR', KEYS[3]) % 1000000, payload)
    table.insert(added, id)
  end
end
return added
"""


class RedisStore(StateStore):
    """State in a Redis server shared by every replica; keys under `prefix`."""

    def __init__(self, url: str, *, prefix: str = "hf:", max_events: int = 1000):
        import redis

        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self.max_events = max_events
        self._append = self.r.register_script(_APPEND_LUA)

    def append_events(self, events: list[Event]) -> list[Event]:
        if not events:
            return []
        argv: list[str] = []
        for e in events:
            argv += [e.event_id, json.dumps([e.event_id, e.user_id, e.item_id, e.behavior, int(e.ts)])]
        p = self.prefix
        new_ids = set(self._append(keys=[f"{p}eid:", f"{p}ev:", f"{p}seq"], args=argv))
        seen: set[str] = set()
        out = []
        for e in events:
            if e.event_id in new_ids and e.event_id not in seen:
                seen.add(e.event_id)
                out.append(e)
        return out

    def recent_events(self, user_id: str, n: int = 200) -> list[Event]:
        rows = self.r.zrange(f"{self.prefix}ev:{user_id}", -n, -1)
        return [_event(r, user_id) for r in rows]

    def get_profile(self, user_id: str) -> dict:
        raw = self.r.hget(f"{self.prefix}profile", str(user_id))
        return _decode(raw) if raw else {}

    def put_profiles(self, profiles: dict[str, dict]) -> None:
        if profiles:
            self.r.hset(f"{self.prefix}profile", mapping={str(u): json.dumps(p) for u, p in profiles.items()})

    def get_blob(self, user_id: str, key: str) -> dict | None:
        raw = self.r.hget(f"{self.prefix}blob:{user_id}", key)
        return _decode(raw) if raw else None

    def put_blob(self, user_id: str, key: str, value: dict) -> None:
        self.r.hset(f"{self.prefix}blob:{user_id}", key, json.dumps(value))

    def update_blob(self, user_id: str, key: str, change: Callable[[dict | None], dict | None]) -> dict | None:
        import redis

        name = f"{self.prefix}blob:{user_id}"
        with self.r.pipeline() as pipe:
            while True:  # optimistic: WATCH the user's blobs; if anyone writes them before EXEC, run `change` again
                try:
                    pipe.watch(name)
                    raw = pipe.hget(name, key)
                    new = change(_decode(raw) if raw else None)
                    pipe.multi()
                    if new is not None:
                        pipe.hset(name, key, json.dumps(new))
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def has_event(self, event_id: str) -> bool:
        return bool(self.r.exists(f"{self.prefix}eid:{event_id}"))

    def count_events(self) -> int:
        return sum(1 for _ in self.r.scan_iter(f"{self.prefix}eid:*", count=1000))

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


def open_store(spec: str) -> StateStore:
    """`sqlite:PATH` or `redis://host:port/db`."""
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.removeprefix("sqlite:"))
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    raise ValueError(f"unknown state store {spec!r}; use sqlite:PATH or redis://HOST:PORT/DB")
