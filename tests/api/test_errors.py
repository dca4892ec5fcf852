"""Error mapping: a write that finds the database locked is answered 503 with Retry-After, never 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from app.usecases import keys


def test_locked_database_is_503_with_retry_after(
    make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT INTO api_keys ...", {}, Exception("database is locked"))

    monkeypatch.setattr(keys, "create_key", locked)
    r = client.post("/v1/keys", json={"role": "reader", "name": "k"})
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) > 0 and "retry" in r.json()["detail"]


def test_other_database_errors_stay_server_errors(
    make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(keys, "create_key", broken)
    with pytest.raises(OperationalError):
        client.post("/v1/keys", json={"role": "reader", "name": "k"})
