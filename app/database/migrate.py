"""Schema migrations (Alembic, scripts in ``app/database/migrations``): bring a database to the models' schema.

:func:`upgrade` runs at every start-up (the :class:`app.database.Store` constructor), so the service, workers and the
CLI never see an old schema. Concurrent start-ups are serialised: on PostgreSQL by a session advisory lock, on
SQLite by the database write lock (``BEGIN IMMEDIATE``). A database made before migrations existed (no
``alembic_version`` table) is upgraded by the idempotent baseline revision, which adds what older releases lacked.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Connection, Engine, text

from app.database.engine import SQLITE_IMMEDIATE

# Before alembic is imported: quiet its start-up chatter (we log what was migrated).
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402  # alembic logs on import: quieted above
from alembic.config import Config  # noqa: E402  # alembic logs on import: quieted above
from alembic.runtime.migration import MigrationContext  # noqa: E402  # alembic logs on import: quieted above
from alembic.script import ScriptDirectory  # noqa: E402  # alembic logs on import: quieted above

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating (any constant; "wagon-db" in ASCII).
ADVISORY_LOCK_KEY = 0x7761676F6E2D6462 & 0x7FFFFFFFFFFFFFFF


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration pointing at the packaged scripts (and at ``connection`` when given)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision of the packaged scripts."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration scripts found"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` (default: the newest); return the revision it is at afterwards.

    Cheap when nothing is to do (one query). Safe to call from several processes at once.
    """
    with engine.connect() as conn:
        if revision == "head" and current_revision(conn) == head_revision():
            return head_revision()
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if postgres:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.commit()
        else:
            conn = conn.execution_options(**{SQLITE_IMMEDIATE: True})
        try:
            before = current_revision(conn)
            command.upgrade(alembic_config(conn), revision)
            conn.commit()
            after = current_revision(conn)
            if after != before:
                log.info("database schema migrated from revision %s to %s", before or "none", after)
            return after
        finally:
            if postgres:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                conn.commit()
