"""Engines: one per database URL, with SQLite set up for several processes (WAL, busy timeout, foreign keys)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url

#: Execution option: a SQLite transaction begins with ``BEGIN IMMEDIATE`` (takes the write lock up front).
SQLITE_IMMEDIATE = "wagon_sqlite_immediate"


#: Words of the database errors that mean "another writer holds the lock" (SQLite's "database is locked" after the
#: busy timeout, PostgreSQL's lock timeout and deadlock): the write may succeed when tried again.
_LOCK_ERRORS = ("database is locked", "database table is locked", "lock timeout", "deadlock detected")


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` (a SQLAlchemy or DBAPI error) is a write that found the database locked by another writer."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(words in text for words in _LOCK_ERRORS)


def _enable_wal(cur: Any, attempts: int = 300, pause_s: float = 0.05) -> None:
    """Switch a SQLite file to WAL (a persistent setting of the file), retrying while it is locked.

    The switch needs the file to itself and SQLite does not wait for that with the busy timeout: several processes
    opening a fresh database at once got "database is locked" here (about 1 start in 16 of four at once).
    """
    for attempt in range(attempts):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(pause_s)


def make_engine(database_url: str) -> Engine:
    """Create an engine; for SQLite create the file's directory, enable foreign keys, WAL and a busy timeout."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(database_url, pool_pre_ping=True)
    database = url.database
    in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
    if database and not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if in_memory:
        from sqlalchemy.pool import StaticPool

        kwargs["poolclass"] = StaticPool
    engine = create_engine(database_url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN itself (see "begin" below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if not in_memory:
            _enable_wal(cur)
            # Under WAL, NORMAL syncs at checkpoints, not at every commit: a committed transaction survives a crash
            # of the process (the WAL is in the OS's page cache); only a power loss or OS crash may roll back the
            # last commits, and never corrupts the database.
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
