"""The database handle: engine and session factory for one URL; migrates the schema to the newest on construction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (
    Engine,
    text,
)
from sqlalchemy.orm import Session, sessionmaker

from app.database.engine import SQLITE_IMMEDIATE, make_engine
from app.database.migrate import upgrade


class Store:
    """Engine and session factory for one database URL; migrates the schema to the newest on construction."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.engine: Engine = make_engine(database_url)
        upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reading (or writing without the SQLite write lock up front)."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one write transaction: commits on success, rolls back on any exception.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE`` so read-then-write sequences (rescoring) never
        race another writer; on PostgreSQL writers of one facility serialise on :func:`lock_facility`.
        """
        with self._sessions() as session:
            session.connection(execution_options={SQLITE_IMMEDIATE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            # a health check reports, never raises
            return False

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
