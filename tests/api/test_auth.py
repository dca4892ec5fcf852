"""Access control: every route's rule (enumerated from the app, so a new route without one fails here), the
permission matrix by role with authentication on, key lifecycle (API and CLI), the first admin key, and auth off."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app import database as db
from app.api.auth import PUBLIC_PATHS, is_api_route, iter_routes, route_access
from app.api.main import create_app
from app.core.settings import Settings
from app.core.validation import parse_timestamp
from app.database import Store
from app.usecases import keys
from app.usecases.facilities import create_facility
from app.usecases.keys import Access
from tests.support import ADMIN_KEY

#: The rule each route must declare. A new route fails the suite until it is added here (and declares its rule).
EXPECTED_RULES: dict[tuple[str, str], Access] = {
    ("GET", "/healthz"): Access.PUBLIC,
    ("GET", "/dashboard"): Access.PUBLIC,
    ("GET", "/metrics"): Access.READ,
    ("POST", "/v1/facilities"): Access.ADMIN,
    ("GET", "/v1/facilities"): Access.READ,
    ("GET", "/v1/facilities/{facility_id}"): Access.READ,
    ("PATCH", "/v1/facilities/{facility_id}"): Access.ADMIN,
    ("POST", "/v1/facilities/{facility_id}/images"): Access.UPLOAD,
    ("POST", "/v1/facilities/{facility_id}/observations"): Access.UPLOAD,
    ("GET", "/v1/facilities/{facility_id}/observations"): Access.READ,
    ("GET", "/v1/observations/{observation_id}"): Access.READ,
    ("GET", "/v1/observations/{observation_id}/detections.geojson"): Access.READ,
    ("GET", "/v1/observations/{observation_id}/overlay.png"): Access.READ,
    ("PUT", "/v1/observations/{observation_id}/review"): Access.REVIEW,
    ("DELETE", "/v1/observations/{observation_id}/review"): Access.REVIEW,
    ("GET", "/v1/observations/{observation_id}/reviews"): Access.READ,
    ("GET", "/v1/facilities/{facility_id}/alerts"): Access.READ,
    ("PUT", "/v1/facilities/{facility_id}/alerts"): Access.ADMIN,
    ("DELETE", "/v1/facilities/{facility_id}/alerts"): Access.ADMIN,
    ("GET", "/v1/facilities/{facility_id}/anomalies"): Access.READ,
    ("GET", "/v1/anomalies"): Access.READ,
    ("GET", "/v1/alerts/deliveries"): Access.READ,
    ("POST", "/v1/alerts/deliveries/retry"): Access.ADMIN,
    ("GET", "/v1/jobs/{job_id}"): Access.JOB,
    ("POST", "/v1/scenes"): Access.SCENE,
    ("GET", "/v1/scenes/{job_id}"): Access.SCENE_JOB,
    ("POST", "/v1/keys"): Access.ADMIN,
    ("GET", "/v1/keys"): Access.ADMIN,
    ("DELETE", "/v1/keys/{key_id}"): Access.ADMIN,
    ("POST", "/v1/subscriptions"): Access.ADMIN,
    ("GET", "/v1/subscriptions"): Access.ADMIN,
    ("GET", "/v1/subscriptions/{subscription_id}"): Access.ADMIN,
    ("DELETE", "/v1/subscriptions/{subscription_id}"): Access.ADMIN,
    ("POST", "/v1/subscriptions/{subscription_id}/poll"): Access.ADMIN,
}

#: Which roles each rule lets through (uploaders: only to a granted facility / a granted facility's job).
ALLOWED: dict[Access, set[str]] = {
    Access.READ: {"admin", "reader", "analyst"},
    Access.REVIEW: {"admin", "analyst"},
    Access.ADMIN: {"admin"},
    Access.UPLOAD: {"admin", "uploader"},
    Access.JOB: {"admin", "reader", "analyst", "uploader"},
    Access.SCENE: {"admin", "uploader"},
    Access.SCENE_JOB: {"admin", "reader", "analyst", "uploader"},
}


def _api_routes() -> list[tuple[str, str, list[Access]]]:
    app = create_app(Settings(database_url="sqlite://", load_model=False))
    out = []
    for route in iter_routes(app.routes):
        if is_api_route(route):
            for method in sorted(route.methods):
                out.append((method, route.path, route_access(route)))
    return out


ROUTES = _api_routes()


def test_every_route_declares_exactly_one_expected_rule() -> None:
    app = create_app(Settings(database_url="sqlite://", load_model=False))
    seen = set()
    for route in iter_routes(app.routes):
        if not is_api_route(route):
            assert route.path in PUBLIC_PATHS, f"{route.path}: not an API route and not listed in PUBLIC_PATHS"
            continue
        rules = route_access(route)
        for method in route.methods:
            assert len(rules) == 1, f"{method} {route.path} declares {rules}: give it exactly one allow(Access.X)"
            expected = EXPECTED_RULES.get((method, route.path))
            assert expected is not None, f"{method} {route.path} is not in EXPECTED_RULES: add its permission"
            assert rules[0] is expected, f"{method} {route.path} declares {rules[0]}, expected {expected}"
            seen.add((method, route.path))
    assert seen == set(EXPECTED_RULES), f"rules for routes that no longer exist: {set(EXPECTED_RULES) - seen}"


# ------------------------------------------------------------------------------------------- permission matrix


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An app with auth on; facilities ``granted`` and ``other``; a reader key; an uploader key for ``granted``;
    one queued job per facility."""
    from fastapi.testclient import TestClient

    tmp = tmp_path_factory.mktemp("auth")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'w.db'}",
        load_model=False,
        archive_dir=tmp / "originals",
        jobs_sqlite_path=tmp / "jobs.db",
        admin_key=ADMIN_KEY,
        jobs_worker=False,
    )
    with TestClient(create_app(settings)) as client:
        store = client.app.state.runtime.store
        for fid in ("granted", "other"):
            create_facility(store, fid, fid, "rail")
        jobs = {}
        with store.transaction() as session:
            for fid in ("granted", "other"):
                jobs[fid] = f"job-{fid}"
                session.add(
                    db.Job(
                        id=jobs[fid],
                        facility_id=fid,
                        captured_at=parse_timestamp("2024-01-01T00:00:00Z"),
                        image_sha256="0" * 64,
                        status="queued",
                        progress=0.0,
                    )
                )
        tokens = {
            "admin": ADMIN_KEY,
            "reader": keys.create_key(store, "reader").key,
            "uploader": keys.create_key(store, "uploader", ["granted"]).key,
            "analyst": keys.create_key(store, "analyst").key,
        }
        yield {"client": client, "tokens": tokens, "jobs": jobs, "store": store}


def _url(path: str, world: dict[str, Any], facility: str = "granted") -> str:
    return (
        path.replace("{facility_id}", facility)
        .replace("{observation_id}", "1")
        .replace("{job_id}", world["jobs"][facility])
        .replace("{key_id}", "000000000000")
    )


def _call(world: dict[str, Any], method: str, url: str, token: str | None) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return world["client"].request(method, url, headers=headers)


@pytest.mark.parametrize(
    "method, path, rules",
    [r for r in ROUTES if r[2] != [Access.PUBLIC]],
    ids=[f"{m} {p}" for m, p, r in ROUTES if r != [Access.PUBLIC]],
)
def test_permission_matrix(world: dict[str, Any], method: str, path: str, rules: list[Access]) -> None:
    access = rules[0]
    url = _url(path, world)
    for token in (None, "wd_000000000000_not-a-key-at-all-not-a-key", ADMIN_KEY + "x"):
        r = _call(world, method, url, token)
        assert r.status_code == 401, (token, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["detail"]
    r = world["client"].request(method, url, headers={"Authorization": f"Basic {ADMIN_KEY}"})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    for role, token in world["tokens"].items():
        r = _call(world, method, url, token)
        if role in ALLOWED[access]:
            assert r.status_code not in (401, 403), (role, r.status_code, r.text)
        else:
            assert r.status_code == 403, (role, r.status_code, r.text)
            assert role in r.json()["detail"]
    if access in (Access.UPLOAD, Access.JOB):  # the uploader, elsewhere than its facility
        r = _call(world, method, _url(path, world, "other"), world["tokens"]["uploader"])
        assert r.status_code == 403, r.text


@pytest.mark.parametrize("path", ["/healthz", "/dashboard", "/docs", "/openapi.json", "/dashboard/static/dashboard.js"])
def test_public_routes_need_no_key(world: dict[str, Any], path: str) -> None:
    assert _call(world, "GET", path, None).status_code == 200


def test_refused_upload_is_not_received(world: dict[str, Any]) -> None:
    """401 and 403 are answered before the request body is read (nothing spooled, nothing archived)."""
    client = world["client"]
    reads: list[bool] = []

    async def receive() -> dict[str, Any]:
        reads.append(True)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for token, status in ((None, 401), (world["tokens"]["reader"], 403), (world["tokens"]["uploader"], 403)):
        headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"100000")]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/facilities/other/images",
            "raw_path": b"",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "scheme": "http",
            "http_version": "1.1",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 1),
        }
        sent.clear()
        client.portal.call(client.app, scope, receive, send)
        assert sent[0]["status"] == status
    assert not reads


def test_reader_key_works_for_the_dashboard_reads(world: dict[str, Any]) -> None:
    token = world["tokens"]["reader"]
    for url in (
        "/v1/facilities?limit=10000",
        "/v1/facilities/granted",
        "/v1/facilities/granted/alerts",
        "/v1/facilities/granted/observations?order=desc&limit=1",
        "/v1/anomalies",
        "/v1/facilities/granted/observations?format=csv",
    ):
        assert _call(world, "GET", url, token).status_code == 200, url


# ------------------------------------------------------------------------------------------- key lifecycle


def test_key_lifecycle_over_the_api(client: Any) -> None:
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = client.post("/v1/keys", json={"role": "uploader", "facilities": ["yard"], "name": "vendor A"})
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["key"]
    assert secret.startswith(f"wd_{created['id']}_") and len(secret) > 40
    assert created["facilities"] == ["yard"] and created["last_used_at"] is None
    listing = client.get("/v1/keys")
    assert secret not in listing.text and "key_hash" not in listing.text
    [listed] = [k for k in listing.json()["keys"] if k["id"] == created["id"]]
    assert listed["role"] == "uploader" and listed["name"] == "vendor A" and listed["revoked_at"] is None
    store = client.app.state.runtime.store
    with store.session() as session:
        row = session.get(db.ApiKey, created["id"])
        assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in repr([getattr(row, c.name) for c in db.ApiKey.__table__.columns])
    as_uploader = {"Authorization": f"Bearer {secret}"}
    r = client.post(
        "/v1/facilities/yard/observations",
        headers=as_uploader,
        json={"observations": [{"captured_at": "2024-01-01T00:00:00Z", "counts": {"railcar": 3}}]},
    )
    assert r.status_code == 201, r.text
    assert client.get("/v1/facilities", headers=as_uploader).status_code == 403
    for _ in range(50):  # the use is recorded in the background
        used = [k for k in client.get("/v1/keys").json()["keys"] if k["id"] == created["id"]][0]
        if used["last_used_at"] is not None:
            break
        time.sleep(0.05)
    assert used["last_used_at"] is not None
    r = client.delete(f"/v1/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"]
    r = client.post("/v1/facilities/yard/observations", headers=as_uploader, json={"observations": []})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert client.delete("/v1/keys/nope").status_code == 404


@pytest.mark.parametrize(
    "body, words",
    [
        ({"role": "uploader"}, ["uploader", "facility"]),
        ({"role": "uploader", "facilities": ["nowhere"]}, ["unknown facility", "nowhere"]),
        ({"role": "reader", "facilities": ["yard"]}, ["only uploader"]),
        ({"role": "root"}, ["role"]),
        ({"role": "reader", "secret": "x"}, ["secret"]),
    ],
)
def test_key_create_refusals(client: Any, body: dict[str, Any], words: list[str]) -> None:
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = client.post("/v1/keys", json=body)
    assert r.status_code == 422, r.text
    for w in words:
        assert w in r.text


def test_last_admin_key_cannot_be_revoked_over_the_api(client: Any) -> None:
    admin_id = keys.key_id_of(ADMIN_KEY)
    r = client.delete(f"/v1/keys/{admin_id}")
    assert r.status_code == 409 and "last active admin" in r.json()["detail"]
    other = client.post("/v1/keys", json={"role": "admin"}).json()
    assert client.delete(f"/v1/keys/{admin_id}").status_code == 200
    assert client.get("/v1/keys").status_code == 401  # the revoked key stops working at once
    assert client.get("/v1/keys", headers={"Authorization": f"Bearer {other['key']}"}).status_code == 200


def test_last_used_is_written_at_most_once_a_minute(store: Store) -> None:
    new = keys.create_key(store, "reader")
    t0 = db.utcnow()
    writes: list[str] = []

    from sqlalchemy import event

    @event.listens_for(store.engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE api_keys"):
            writes.append(statement)

    for dt in (0, 10, 59, 61, 62):
        assert keys.authenticate(store, new.key, now=t0 + timedelta(seconds=dt)) is not None
    assert len(writes) == 2
    [listed] = keys.list_keys(store)
    assert listed.last_used_at == t0 + timedelta(seconds=61)
    assert keys.authenticate(store, new.key + "x") is None


def test_keys_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main
    from app.core.settings import get_settings

    monkeypatch.setenv("WAGON_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    store = Store(settings.database_url)
    try:
        create_facility(store, "tumangang", "Tumangang", "rail")
        assert main(["keys", "create", "--role", "uploader", "--facility", "tumangang", "--name", "vendor"]) == 0
        out = capsys.readouterr()
        secret = out.out.strip()
        assert secret.startswith("wd_") and "shown only now" in out.err and "\n" not in secret
        principal = keys.authenticate(store, secret)
        assert principal is not None and principal.role == "uploader" and principal.facilities == {"tumangang"}
        assert main(["keys", "create", "--role", "uploader"]) == 2
        assert "at least one facility" in capsys.readouterr().err
        assert main(["keys", "create", "--role", "admin"]) == 0
        admin_secret = capsys.readouterr().out.strip()
        assert main(["keys", "list"]) == 0
        listing = capsys.readouterr().out
        assert principal.key_id in listing and "tumangang" in listing and "vendor" in listing
        assert secret not in listing and admin_secret not in listing
        assert main(["keys", "revoke", principal.key_id]) == 0
        assert keys.authenticate(store, secret) is None
        admin_id = keys.key_id_of(admin_secret)
        assert main(["keys", "revoke", admin_id]) == 2
        assert "last active admin" in capsys.readouterr().err
        assert main(["keys", "revoke", admin_id, "--force"]) == 0
        assert main(["keys", "revoke", "nope"]) == 2
    finally:
        store.dispose()
        get_settings.cache_clear()


# ------------------------------------------------------------------------------------------- start-up


def test_first_start_prints_an_admin_key_once(
    make_client: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(api_key=None, admin_key=None)
    err = capsys.readouterr().err
    assert "first admin key" in err
    [secret] = [w for w in err.split() if w.startswith("wd_")]
    assert client.get("/v1/keys", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    make_client(api_key=None, admin_key=None)  # a restart on the same database: keys exist, nothing printed
    assert "wd_" not in capsys.readouterr().err


def test_admin_key_from_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("WAGON_ADMIN_KEY", "wd_fedcba987654_an-operator-chosen-admin-key")
    env_settings = Settings(
        database_url=settings.database_url,
        load_model=False,
        archive_dir=tmp_path / "o",
        jobs_sqlite_path=tmp_path / "j.db",
    )
    assert env_settings.admin_key is not None
    with TestClient(create_app(env_settings)) as client:
        assert "wd_" not in capsys.readouterr().err  # not printed: the operator has it
        r = client.get("/v1/keys", headers={"Authorization": "Bearer wd_fedcba987654_an-operator-chosen-admin-key"})
        assert r.status_code == 200 and [k["id"] for k in r.json()["keys"]] == ["fedcba987654"]
    short = env_settings.model_copy(update={"admin_key": "short", "database_url": f"sqlite:///{tmp_path / 'x.db'}"})
    with pytest.raises(Exception, match="at least 32 characters"):
        with TestClient(create_app(short)):
            pass


def test_auth_off_opens_everything_and_warns(make_client: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app"):
        client = make_client(api_key=None, auth=False)
    assert any("authentication is disabled" in r.getMessage() for r in caplog.records)
    health = client.get("/healthz").json()
    assert health["auth"] == "disabled" and "WAGON_AUTH" in health["warnings"][0]
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
    assert client.get("/v1/facilities").status_code == 200
    with client.app.state.runtime.store.session() as session:  # no key was made
        assert session.query(db.ApiKey).count() == 0


def test_auth_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAGON_AUTH", "off")
    assert Settings().auth is False
    monkeypatch.delenv("WAGON_AUTH")
    assert Settings().auth is True


def test_health_says_auth_is_on(client: Any) -> None:
    health = client.get("/healthz", headers={"Authorization": ""}).json()
    assert health["auth"] == "enabled" and health["warnings"] == []


def test_openapi_documents_the_bearer_scheme(client: Any) -> None:
    spec = client.get("/openapi.json", headers={"Authorization": ""}).json()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["apiKey"]["description"],
    }
    upload = spec["paths"]["/v1/facilities/{facility_id}/images"]["post"]
    assert upload["security"] == [{"apiKey": []}] and upload["x-wagon-access"] == "upload"
    assert {"401", "403"} <= set(upload["responses"])
    assert "security" not in spec["paths"]["/healthz"]["get"]
