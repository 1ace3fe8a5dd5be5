"""The shared state store: Redis (or Redis Cluster), each write one Lua script over one user's hash-tagged keys.

See `serve/state.py` for what every store promises; this file holds the Redis backend only.
"""
from __future__ import annotations

import json

import redis
from redis.cluster import RedisCluster

from homefeed.serve.state_base import IDLE_S, Change, Event, Fold, StateStore, by_user, decode, decode_event, guarded

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
        news = [change(decode(raw) if raw is not None else None) for change, raw in zip(changes, raws)]
        argv: list = [self.max_events, self.max_ids, len(events), len(fields)]
        for e in events:
            argv += [e.event_id, json.dumps([e.event_id, e.user_id, e.item_id, e.behavior, int(e.ts), e.arm]), int(e.ts)]
        for field, raw, new in zip(fields, raws, news):
            argv += [field, "" if raw is None else "=" + raw, "" if new is None else json.dumps(new)]
        return bool(self._commit(keys=keys, args=[*argv, self.idle_s])), news

    def _failed(self, e: BaseException) -> None:
        pass  # a Redis outage heals by itself: the next call tries again

    @guarded
    def append_events(self, events: list[Event], fold: Fold | None = None) -> list[Event]:
        seen: set[str] = set()
        unique = [e for e in events if not (e.event_id in seen or seen.add(e.event_id))]  # first of each id
        new: list[Event] = []
        for user, evs in by_user(unique).items():
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

    @guarded
    def recent_events(self, user_id: str, n: int = 200) -> list[Event]:
        return [decode_event(r, user_id) for r in self.r.zrange(self.keys_of(user_id)[0], -n, -1)]

    @guarded
    def get_profile(self, user_id: str) -> dict:
        raw = self.r.hget(f"{self.prefix}profile", str(user_id))
        return decode(raw) if raw else {}

    @guarded
    def put_profiles(self, profiles: dict[str, dict]) -> None:
        if profiles:
            self.r.hset(f"{self.prefix}profile", mapping={str(u): json.dumps(p) for u, p in profiles.items()})

    @guarded
    def get_blob(self, user_id: str, key: str) -> dict | None:
        raw = self.r.hget(self.keys_of(user_id)[3], key)
        return decode(raw) if raw else None

    @guarded
    def put_blob(self, user_id: str, key: str, value: dict) -> None:
        self.update_blob(user_id, key, lambda _: value)  # the script: one write that also renews the user's expiry

    @guarded
    def update_blob(self, user_id: str, key: str, change: Change) -> dict | None:
        while True:  # optimistic: the script writes only if the field is as read, else `change` runs again
            ok, [new] = self._write(user_id, [], [key], [change])
            if ok:
                return new

    @guarded
    def has_event(self, event_id: str, user_id: str | None = None) -> bool:
        if user_id is None:
            raise ValueError("RedisStore keeps event ids per user (one Cluster slot each): pass user_id")
        return self.r.zscore(self.keys_of(user_id)[1], event_id) is not None

    @guarded
    def count_events(self) -> int:
        """Events kept (after trimming), over every user: a scan, for tests and tools."""
        return sum(self.r.zcard(k) for k in self.r.scan_iter(f"{self.prefix}{{*}}:ev", count=1000))

    def close(self) -> None:
        self.r.close()

