"""Shared fixtures: a network guard (loopback only), temporary stores and apps, the real detector, image bytes."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.settings import Settings
from app.database import Store
from tests.support import ADMIN_KEY, MODEL_PATH
from tests.support.images import encode_image, first_busy_yard, gradient_rgb
from tests.support.network import NetworkAccessError
from tests.support.pgtools import require_postgres, temporary_database

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "testserver", ""}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "databases(*names): run the module's database tests on each of these "
        "(default sqlite and postgresql; postgresql needs WAGON_TEST_POSTGRES_URL)",
    )
    # Starlette 1.x nags about httpx in its TestClient; not our concern here.
    config.addinivalue_line("filterwarnings", "ignore::starlette.exceptions.StarletteDeprecationWarning")


# ------------------------------------------------------------------------------------------- network guard


NETWORK_ATTEMPTS: list[str] = []


def _is_local_host(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None:
        return True
    host = str(host).strip("[]").lower()
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_local_address(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if isinstance(address, tuple) and address:
        return _is_local_host(address[0])
    return False


def _blocked(what: str) -> NetworkAccessError:
    NETWORK_ATTEMPTS.append(what)
    return NetworkAccessError(f"network access blocked in tests: {what}")


@pytest.fixture(scope="session", autouse=True)
def _network_guard() -> Iterator[None]:
    """For the whole session: any socket connection or name lookup that is not loopback raises."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_local_address(address):
            raise _blocked(f"connect {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_local_address(address):
            raise _blocked(f"connect_ex {address!r}")
        return real_connect_ex(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local_address(address):
            raise _blocked(f"create_connection {address!r}")
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local_host(host):
            raise _blocked(f"getaddrinfo {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "create_connection", create_connection)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(autouse=True)
def _no_network_attempts() -> Iterator[None]:
    """Fail any test during which something tried to reach the network (even if it swallowed the error)."""
    NETWORK_ATTEMPTS.clear()
    yield
    attempts = list(NETWORK_ATTEMPTS)
    NETWORK_ATTEMPTS.clear()
    assert not attempts, f"non-loopback network access attempted: {attempts}"


@pytest.fixture
def network_attempts() -> list[str]:
    """The list the guard records blocked attempts into (tests of the guard clear it themselves)."""
    return NETWORK_ATTEMPTS


# ------------------------------------------------------------------------------------------- stores and apps


DATABASES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of a module marked ``pytest.mark.databases`` run once per database of ``database_url``."""
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None and "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", marker.args or DATABASES, indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or (parameter ``postgresql``) a new database on the server in
    ``WAGON_TEST_POSTGRES_URL``, dropped afterwards (skipped when that is unset)."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'wagon.db'}"
        return
    assert backend == "postgresql", backend
    with temporary_database(require_postgres()) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings with a fresh database (SQLite unless the module asks for both), no model loading, authentication
    on with :data:`ADMIN_KEY`."""
    return Settings(
        database_url=database_url,
        load_model=False,
        archive_dir=tmp_path / "originals",
        jobs_sqlite_path=tmp_path / "db" / "jobs.db",
        admin_key=ADMIN_KEY,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """A store on a fresh SQLite file."""
    st = Store(settings.database_url)
    yield st
    st.dispose()


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_client(detector=None, api_key=ADMIN_KEY, **settings_overrides)`` -> started ``TestClient``
    on a fresh DB that sends ``Authorization: Bearer <api_key>`` (``api_key=None``: no header)."""
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    opened: list[Any] = []

    def factory(detector: Any = None, api_key: str | None = ADMIN_KEY, **overrides: Any) -> Any:
        app = create_app(settings.model_copy(update=overrides), detector=detector)
        client = TestClient(app, headers={"Authorization": f"Bearer {api_key}"} if api_key else None)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)
        stop_background_threads(client.app)


def stop_background_threads(app: Any) -> None:
    """Stop the job worker and the anomaly prefitter an app started: the lifespan's own cleanup does not run when
    Starlette's test client closes, and every test app would leave its three threads running."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is None:
        return
    if runtime.jobs is not None:
        runtime.jobs.stop_worker()
    if runtime.prefitter is not None:
        runtime.prefitter.stop()
    runtime.store.dispose()


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Any:
    """A started app without a model (uploads answer 503 after validating the input), called with the admin key."""
    return make_client()


@pytest.fixture(scope="session")
def detector() -> Any:
    """The real detector, loaded once per session (skips when the weights or the module are absent)."""
    if not MODEL_PATH.exists():
        pytest.skip(f"model weights not found at {MODEL_PATH}")
    try:
        from app.detection.detector import load_detector
    except ImportError as exc:  # pragma: no cover - only before app/detection/detector.py exists
        pytest.skip(f"app.detection.detector not importable: {exc}")
    return load_detector(MODEL_PATH)


# ------------------------------------------------------------------------------------------- images


@pytest.fixture
def png_bytes() -> bytes:
    """A small valid RGB PNG."""
    return encode_image(gradient_rgb(), "PNG")


# ------------------------------------------------------------------------------------------- synthetic chips


@pytest.fixture(scope="session")
def busy_yard() -> Any:
    """A held-out synthetic rail-yard chip with 60-150 railcars."""
    return first_busy_yard(60)
