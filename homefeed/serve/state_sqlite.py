"""The embedded state store: one SQLite file in WAL mode, events durable (fsync) before they are acknowledged.

See `serve/state.py` for what every store promises; this file holds the SQLite backend only.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from homefeed.serve.state_base import IDLE_S, Change, Event, Fold, StateStore, StoreError, by_user, decode, guarded

SQLITE_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB: the file is damaged; nothing more is written to it


class SQLiteStore(StateStore):
    """One SQLite file in WAL mode; a connection per thread (FastAPI runs handlers in a pool)."""

    NAME, ERRORS = "SQLite state store", (sqlite3.Error, OSError)

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                                       behavior TEXT NOT NULL, ts INTEGER NOT NULL, arm TEXT NOT NULL DEFAULT '');
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

    @guarded
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
        """A file from before blob eviction: add the write-time column, its blobs counted as written now; a file
        from before live experiments: add the events' arm column (empty)."""
        if "arm" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
            conn.execute("ALTER TABLE events ADD COLUMN arm TEXT NOT NULL DEFAULT ''")
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

    @guarded
    def append_events(self, events: list[Event], fold: Fold | None = None) -> list[Event]:
        conn = self._conn()

        def work() -> list[Event]:
            new = []
            for e in events:  # one prepared statement per event, inside one transaction
                cur = conn.execute("INSERT OR IGNORE INTO events (event_id, user_id, item_id, behavior, ts, arm) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (e.event_id, e.user_id, e.item_id, e.behavior, int(e.ts), e.arm))
                if cur.rowcount == 1:
                    new.append(e)
            for user, evs in by_user(new).items() if fold else ():
                for key, change in fold(user, evs):
                    self._change(conn, user, key, change)
            return new

        return self._transaction(conn, work)

    @staticmethod
    def _change(conn: sqlite3.Connection, user_id: str, key: str, change: Change) -> dict | None:
        row = conn.execute("SELECT value FROM blobs WHERE user_id = ? AND key = ?", (str(user_id), key)).fetchone()
        new = change(decode(row[0]) if row else None)
        if new is not None:
            conn.execute(SQLiteStore.PUT_BLOB, (str(user_id), key, json.dumps(new)))
        return new

    @guarded
    def recent_events(self, user_id: str, n: int = 200) -> list[Event]:
        rows = self._conn().execute(
            "SELECT event_id, user_id, item_id, behavior, ts, arm FROM events WHERE user_id = ? ORDER BY ts DESC, rowid DESC LIMIT ?",
            (str(user_id), n)).fetchall()
        return [Event(*r) for r in reversed(rows)]

    @guarded
    def get_profile(self, user_id: str) -> dict:
        row = self._conn().execute("SELECT profile FROM profiles WHERE user_id = ?", (str(user_id),)).fetchone()
        return decode(row[0]) if row else {}

    @guarded
    def put_profiles(self, profiles: dict[str, dict]) -> None:
        conn = self._conn()
        self._transaction(conn, lambda: conn.executemany(
            "INSERT OR REPLACE INTO profiles VALUES (?, ?)", [(str(u), json.dumps(p)) for u, p in profiles.items()]))

    @guarded
    def get_blob(self, user_id: str, key: str) -> dict | None:
        row = self._conn().execute("SELECT value FROM blobs WHERE user_id = ? AND key = ?", (str(user_id), key)).fetchone()
        return decode(row[0]) if row else None

    @guarded
    def put_blob(self, user_id: str, key: str, value: dict) -> None:
        self._conn(blobs=True).execute(self.PUT_BLOB, (str(user_id), key, json.dumps(value)))

    @guarded
    def update_blob(self, user_id: str, key: str, change: Change) -> dict | None:
        conn = self._conn(blobs=True)
        return self._transaction(conn, lambda: self._change(conn, user_id, key, change))

    @guarded
    def has_event(self, event_id: str, user_id: str | None = None) -> bool:
        return self._conn().execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone() is not None

    @guarded
    def count_events(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    @guarded
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

