"""The feature server: per-user state behind one small interface, with two backends (this module opens one).

Per user it keeps the profile, the behaviour log (clicks, favs, carts, purchases, views with
time), and named JSON blobs for the mechanism's state (purchase filter, exposure templates). Ids
are the shop's raw ids as strings, so a newer bundle with new vocabularies reads the same state.

An event and the state it changes commit together: `append_events(events, fold)` stores the new
events and applies `fold`'s blob changes for their users in one SQLite transaction or one Redis
script, so a process killed at any point leaves both written or neither (a buy stored but never
folded into the purchase filter cannot happen: a retry would find it stored and fold nothing).

- `SQLiteStore` (`state_sqlite.py`): the embedded default, one file in WAL mode; a write returns only after its
  transaction is committed, so an acknowledged event survives `kill -9`. Events are committed with
  `synchronous=FULL` (fsync before the acknowledgement: they survive a power cut too); the
  mechanism blobs, rewritten on every homepage request, with `synchronous=NORMAL` (no fsync per
  commit: a killed process loses nothing, a power cut may lose the last blob writes, never events).
  Opening runs SQLite's `quick_check`; a file deleted or replaced under the running server, or found
  corrupt, fails every later call instead of writing into a file nobody will read again. Blobs not
  written for `idle_s` are deleted by `evict_idle` (the server sweeps hourly); events are kept.
- `RedisStore` (`state_redis.py`): shared by many API replicas; each write is one Lua script over one user's keys, all
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

from homefeed.serve.state_base import HEALTH_USER, IDLE_S, UNREADABLE, Change, Event, Fold, StateStore, StoreError
from homefeed.serve.state_redis import COMMIT_LUA, USER_KEYS, RedisStore
from homefeed.serve.state_sqlite import SQLITE_CORRUPT, SQLiteStore

__all__ = ["COMMIT_LUA", "HEALTH_USER", "IDLE_S", "SQLITE_CORRUPT", "UNREADABLE", "USER_KEYS", "Change", "Event", "Fold",
           "RedisStore", "SQLiteStore", "StateStore", "StoreError", "open_store"]


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
