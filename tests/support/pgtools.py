"""PostgreSQL for the tests: the server in ``WAGON_TEST_POSTGRES_URL`` (``scripts/pg_test_server.sh``), one fresh
database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy.engine import make_url

POSTGRES_URL_VAR = "WAGON_TEST_POSTGRES_URL"
SKIP_REASON = (
    f"PostgreSQL tests need a server: set {POSTGRES_URL_VAR}=postgresql+psycopg://USER@HOST:PORT/postgres "
    "(scripts/pg_test_server.sh run starts a throwaway one; .ci/run does)"
)


def postgres_url() -> str | None:
    """The test server's URL, or ``None`` when none is configured."""
    return os.environ.get(POSTGRES_URL_VAR) or None


def require_postgres() -> str:
    """The test server's URL; skips the test when none is configured."""
    url = postgres_url()
    if url is None:
        pytest.skip(SKIP_REASON)
    return url


def _admin(server_url: str):
    import psycopg

    url = make_url(server_url).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)


@contextmanager
def temporary_database(server_url: str, icu_locale: str | None = None) -> Iterator[str]:
    """Create a uniquely named database on the server (with ``icu_locale``: sorting text by that ICU locale), yield
    its SQLAlchemy URL, drop it afterwards."""
    name = f"wagon_test_{uuid.uuid4().hex[:16]}"
    locale = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{locale}')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
