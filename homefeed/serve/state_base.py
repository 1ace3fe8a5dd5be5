"""The state store's interface shared by every backend: `Event`, `StateStore`, `StoreError` and safe decoding.

A backend (`state_sqlite.SQLiteStore`, `state_redis.RedisStore`) implements `StateStore`; `serve/state.py` opens one
from a spec and says what each promises. Stored values are decoded defensively here (`decode`, `decode_event`), so a
corrupt row reads as UNREADABLE instead of raising on the way out.
"""
from __future__ import annotations

import functools
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

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
    arm: str = ""  # the experiment arm that served the user when the event came ("" = no experiment)


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


def by_user(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.user_id, []).append(e)
    return out


def guarded(method):
    """Decorator: the backend's own errors (`self.ERRORS`) out of a store method become StoreError naming them."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except self.ERRORS as e:
            self._failed(e)
            raise StoreError(f"{self.NAME}: {e}") from e
    return guarded


def decode(raw: str) -> dict:
    """A stored JSON object; anything else (corrupt text, another type) as {UNREADABLE: the start of it}."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {UNREADABLE: str(raw)[:100]}


def decode_event(raw: str, user_id: str) -> Event:
    """A stored event row (a JSON list); one that does not decode as an event with behavior UNREADABLE."""
    try:
        return Event(*json.loads(raw))  # 5 fields (stored before live experiments) or 6 (with the arm)
    except (TypeError, ValueError):
        return Event("", str(user_id), "", UNREADABLE, 0)

