"""Fuzz the HTTP API from its own OpenAPI document with Schemathesis, in process (ASGI), deterministically.

Every operation gets ``FUZZ_EXAMPLES[backend]`` generated requests (valid and invalid: ``derandomize`` makes the run
the same each time), on SQLite and, when ``WAGON_TEST_POSTGRES_URL`` is set, again on PostgreSQL (fewer examples:
PostgreSQL refuses what SQLite stores, e.g. NUL characters in text, so its run looks for those 500s). Checks: every
Schemathesis check but one: no 5xx, responses match their documented schema, status codes, content types and
headers are documented, schema-invalid requests are refused. Left out:
``positive_data_acceptance``, because the schema cannot say everything the service checks (opaque cursors, GeoJSON
footprints, timestamps carried as strings), so schema-valid requests may rightly get 422. The detector is a cheap
test double (the real model's uploads are tested in ``tests/api/test_images.py``); the database is seeded with a
facility, observations and an image observation so that generated ids sometimes hit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.core.settings import Settings
from tests.support import ADMIN_KEY
from tests.support.fakes import RecordingFakeDetector
from tests.support.images import encode_image, gradient_rgb
from tests.support.pgtools import require_postgres, temporary_database

#: Generated requests per operation and mode, by database.
FUZZ_EXAMPLES = {"sqlite": 40, "postgresql": 20}
#: The fuzzer calls as admin, so that every operation is reached past authentication (tested in tests/api/test_auth.py).
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(backend, database URL)``: an SQLite file, or a fresh PostgreSQL database (skipped without a server)."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{tmp_path_factory.mktemp('fuzzdb') / 'wagon.db'}"
        return
    with temporary_database(require_postgres()) as url:
        yield "postgresql", url


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_backend: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The schema of a started app (Schemathesis starts its lifespan and keeps it for the process), seeded."""
    from schemathesis.python import asgi

    from app.api.main import create_app

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    cfg = Settings(
        database_url=fuzz_backend[1],
        load_model=False,
        archive_dir=tmp / "originals",
        jobs_sqlite_path=tmp / "jobs.db",
        jobs_worker=False,
        request_timeout_s=60,
        max_upload_mb=1,
        admin_key=ADMIN_KEY,
    )
    app = create_app(cfg, detector=RecordingFakeDetector())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    with asgi.get_client(app) as client:
        client.headers.update(AUTH)
        assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
        rows = [{"captured_at": f"2021-01-{d:02d}T00:00:00Z", "counts": {"railcar": d}} for d in range(1, 11)]
        assert client.post("/v1/facilities/yard/observations", json={"observations": rows}).status_code == 201
        r = client.post(
            "/v1/facilities/yard/images",
            data={"captured_at": "2024-05-01T10:30:00Z"},
            files={"file": ("c.png", encode_image(gradient_rgb(), "PNG"), "image/png")},
        )
        assert r.status_code == 201, r.text
    return schema


def _schema() -> Any:
    """The OpenAPI document of an app built (not started) only to describe itself."""
    from app.api.main import create_app

    return schemathesis.openapi.from_dict(create_app(Settings(load_model=False)).openapi())


OPERATIONS = sorted(op.ok().label for op in _schema().get_all_operations())
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


# (schemathesis' own pytest loader, ``from_fixture``, does not work with pytest 9: it sets a removed attribute.)
@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("label", OPERATIONS)
def test_api_fuzz(fuzz_backend: tuple[str, str], fuzz_schema: Any, label: str, mode: GenerationMode) -> None:
    operation = fuzz_schema.find_operation_by_label(label)
    assert operation is not None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES[fuzz_backend[0]],
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        # An empty array in the query serialises to ``name=``: an empty string, which the schema allows (and the API
        # reads as "not given"), so such a "negative" case is not one.
        assume(not any(value == [] for value in (case.query or {}).values()))
        case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

    try:
        fuzz()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip("the schema leaves nothing to violate in this operation's request")
