"""Alembic environment of wagon-detector: migrates the connection :mod:`app.database.migrate` hands over.

Run through :func:`app.database.migrate.upgrade` (the service, the CLI and ``wagon-detector db``), or with the
``alembic`` command from the project root (``alembic.ini``; the database is ``WAGON_DATABASE_URL``), e.g. to
autogenerate a new revision after changing the models in :mod:`app.database`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from app.database import Base, make_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )  # SQLite alters tables by copying
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Migrate the handed-over connection, or one opened on ``WAGON_DATABASE_URL`` (the ``alembic`` command)."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run against a database")
    from app.core.settings import get_settings

    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or get_settings().database_url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


main()
