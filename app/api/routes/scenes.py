"""``POST /v1/scenes``: one scene, every facility it covers, analysed in the background; ``GET /v1/scenes/{id}``.

The scene comes as a multipart ``file`` (archived like an upload), or as JSON naming it: ``href`` (a URL on an
allowed host, or a path under ``WAGON_SCENE_DIRS``), ``stac_item`` or ``stac_item_href``. Everything that can be
checked without reading the scene is checked here (4xx, nothing stored); the rest fails the job with a reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api import json_body
from app.api.auth import allow
from app.api.deps import RuntimeDep
from app.api.routes.common import TextId, errors
from app.api.routes.images import archive_upload
from app.api.schemas import SceneAcceptedOut, SceneIn, SceneJobOut
from app.core import validation
from app.core.errors import InvalidInputError, ModelUnavailableError, NotFoundError
from app.core.settings import Settings
from app.usecases import scene_runs, scene_sources
from app.usecases.keys import Access, Principal
from app.usecases.scene_sources import SceneSource

router = APIRouter(tags=["scenes"])

_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SceneIn"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "captured_at"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "captured_at": {"type": "string"},
                        "gsd_m": {"type": "number"},
                        "facilities": {"type": "string", "description": "Facility ids, comma-separated."},
                    },
                }
            },
        },
    }
}


@router.post(
    "/scenes",
    status_code=202,
    response_model=SceneAcceptedOut,
    responses=errors(403, 404, 413, 415, 422, 503),
    openapi_extra=_BODY,
)
async def submit_scene(
    runtime: RuntimeDep,
    request: Request,
    principal: Annotated[Principal, allow(Access.SCENE)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="A unique string per scene: a retry with the same key answers the first job.",
        ),
    ] = None,
) -> JSONResponse:
    """Analyse a scene for every facility whose footprint it covers (only the footprints' windows are read):
    202 with a job whose result lists each facility's observation (as an upload to that facility would make it)
    and the facilities skipped, with the reason. The same scene sent again makes no second observation.

    Uploader keys reach only their facilities (others asked for are skipped as `not granted`; none at all: 403)."""
    if runtime.scenes is None:  # pragma: no cover - the lifespan always makes it
        raise ModelUnavailableError("scene jobs are not available")
    if runtime.detector is None and runtime.settings.jobs_worker:
        raise ModelUnavailableError("no detector is loaded in this service (WAGON_LOAD_MODEL is false)")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        scene = await _from_form(request, runtime, principal)
    elif content_type == "application/json":
        scene = await _from_json(request, runtime, principal)
    else:
        raise HTTPException(415, "send the scene as multipart/form-data (file) or application/json (href, stac_item)")
    job_id, _created = await run_in_threadpool(runtime.scenes.submit, scene, principal.scope, idempotency_key)
    body = SceneAcceptedOut(job_id=job_id, status="queued", status_url=f"/v1/scenes/{job_id}")
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.status_url})


def _choose(runtime: Any, principal: Principal, requested: list[str] | None) -> tuple[Any, Any]:
    try:
        return scene_runs.choose_facilities(runtime.store, principal, requested)
    except PermissionError as exc:
        raise HTTPException(403, str(exc)) from None


async def _from_json(request: Request, runtime: Any, principal: Principal) -> scene_runs.SceneRequest:
    try:
        body = SceneIn.model_validate(json_body.loads(await request.body()))
    except ValidationError as exc:
        raise InvalidInputError(f"invalid scene request: {_first_error(exc)}") from None
    given = [k for k in ("href", "stac_item", "stac_item_href") if getattr(body, k) is not None]
    if len(given) != 1:
        raise InvalidInputError("give exactly one of href, stac_item and stac_item_href")
    when = _capture_time(body.captured_at, runtime.settings)
    validation.check_gsd(body.gsd_m)
    facilities, skipped = await run_in_threadpool(_choose, runtime, principal, body.facilities)
    source = await run_in_threadpool(_source, runtime.settings, body)
    return scene_runs.make_request(runtime.settings, source, when, body.gsd_m, facilities, skipped)


def _source(settings: Settings, body: SceneIn) -> SceneSource:
    if body.href is not None:
        return scene_sources.source_of_href(settings, body.href)
    if body.stac_item is not None:
        return scene_sources.source_of_item(settings, body.stac_item)[0]
    assert body.stac_item_href is not None
    item = scene_sources.fetch_item(settings, body.stac_item_href)
    return scene_sources.source_of_item(settings, item)[0]


async def _from_form(request: Request, runtime: Any, principal: Principal) -> scene_runs.SceneRequest:
    settings: Settings = runtime.settings
    form = await request.form(max_files=1, max_fields=20)
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise InvalidInputError("the multipart body needs a file field 'file'")
    captured = form.get("captured_at")
    if not isinstance(captured, str):
        raise InvalidInputError("captured_at is required with an uploaded scene")
    when = _capture_time(captured, settings)
    gsd_text = form.get("gsd_m")
    try:
        gsd = None if not isinstance(gsd_text, str) or not gsd_text.strip() else float(gsd_text)
    except ValueError:
        raise InvalidInputError(f"gsd_m must be a number, not {gsd_text!r}") from None
    validation.check_gsd(gsd)
    names = [v for v in form.getlist("facilities") if isinstance(v, str)]
    requested = [f.strip() for v in names for f in v.split(",") if f.strip()] or None
    facilities, skipped = await run_in_threadpool(_choose, runtime, principal, requested)
    sha, _path, _size, _head = await run_in_threadpool(
        archive_upload, cast(Any, file), settings.max_upload_bytes, settings
    )
    return scene_runs.make_request(settings, SceneSource("upload", sha), when, gsd, facilities, skipped)


def _capture_time(value: str | None, settings: Settings) -> datetime | None:
    return None if value is None else validation.parse_capture_time(value, settings.capture_window)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg')}"


@router.get(
    "/scenes/{job_id}", response_model=SceneJobOut, responses=errors(403, 404), dependencies=[allow(Access.SCENE_JOB)]
)
async def get_scene_job(job_id: TextId, runtime: RuntimeDep, request: Request) -> SceneJobOut:
    """A scene job: `queued`, `running` (with `progress` 0-1), `done` (with `result`: the observation made at each
    facility and the facilities skipped, with the reason) or `failed` (with `error` and `error_status`). Uploaders
    see only the scenes they sent."""
    from app.api.auth import authenticate

    if runtime.scenes is None:  # pragma: no cover - the lifespan always makes it
        raise NotFoundError(f"scene job {job_id!r} not found")
    principal = await authenticate(request)
    if principal.role == "uploader":
        owner = await run_in_threadpool(runtime.scenes.submitter, job_id)
        if owner is not None and owner != principal.scope:
            raise HTTPException(403, f"key {principal.key_id} may not read this scene job (it sent another)")
    return SceneJobOut.model_validate(await run_in_threadpool(runtime.scenes.get, job_id))
