"""``POST /v1/facilities/{id}/images``: detect, count, store and score one image or scene.

The upload is streamed into the content-addressed archive (never held whole in memory). Uploads larger than
``WAGON_ASYNC_UPLOAD_MB`` are analysed in the background: 202 with a job id (see ``GET /v1/jobs/{id}``).
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.api.auth import allow
from app.api.deps import RuntimeDep, request_prefit
from app.api.limits import disarm_timeout
from app.api.routes.common import FacilityId, errors
from app.api.schemas import JobAcceptedOut, UploadOut
from app.core import validation
from app.core.errors import ModelUnavailableError
from app.core.settings import MIB, Settings
from app.database import Store
from app.detection.imaging import ImageError
from app.detection.raster import sniff_format
from app.usecases import images, observations, scenes
from app.usecases.keys import Access, Principal

router = APIRouter(tags=["images"])

CHUNK = 1024 * 1024


@router.post(
    "/facilities/{facility_id}/images",
    status_code=201,
    response_model=UploadOut,
    responses={
        200: {"model": UploadOut, "description": "A repeated upload: the original observation."},
        202: {"model": JobAcceptedOut, "description": "Large upload: analysed in the background."},
        **errors(404, 413, 415, 422, 503, 504),
    },
)
async def upload_image(
    facility_id: FacilityId,
    runtime: RuntimeDep,
    request: Request,
    principal: Annotated[Principal, allow(Access.UPLOAD)],
    file: Annotated[
        UploadFile, File(description="GeoTIFF/COG, JPEG 2000, NITF, JPEG, PNG or TIFF (format read from the content).")
    ],
    captured_at: Annotated[str, Form(description="Acquisition time, ISO 8601 with timezone.")],
    gsd_m: Annotated[
        float | None,
        Form(
            description="Ground sample distance, m/pixel (a finite number from 0.05 to 10); overrides the image's "
            "geotransform.",
            json_schema_extra={"minimum": validation.GSD_RANGE_M[0], "maximum": validation.GSD_RANGE_M[1]},
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Any unique string (e.g. a UUID) per upload: a retry with the same key (by the same API key, "
            "to the same facility) returns the original observation instead of storing a second.",
        ),
    ] = None,
) -> Response:
    """Count railcars and containers in an image, store the observation with its detections and score it.

    For a georeferenced image of a facility with a footprint, only the part of the scene covering the footprint is
    read and only detections centred inside it are counted; `coverage` says which share of the footprint the image
    covered. Each detection of a georeferenced image carries `obb_lonlat`.

    Never counted twice: the same image bytes at the same facility and time, or a repeated `Idempotency-Key`,
    answer 200 with the original observation (header `Idempotent-Replayed: true`); a key reused for a different
    upload is refused with 422."""
    t0 = time.perf_counter()
    validation.check_gsd(gsd_m)  # before anything is archived or queued
    store = runtime.store
    settings = runtime.settings
    idempotency = None if idempotency_key is None else (principal.scope, idempotency_key)
    footprint, when, (sha, path, size, head), original = await run_in_threadpool(
        _receive, store, facility_id, captured_at, file, settings, idempotency
    )
    if original is not None:
        return _replay(original, t0)
    jobs = runtime.jobs
    if jobs is not None and size > settings.async_upload_mb * MIB and sniff_format(head) is not None:
        if runtime.detector is None and settings.jobs_worker:
            raise ModelUnavailableError("no detector is loaded in this service (WAGON_LOAD_MODEL is false)")
        job_id = await run_in_threadpool(
            jobs.submit, facility_id, when, gsd_m, sha, idempotency
        )  # the facility GSD is looked up when it runs
        body = JobAcceptedOut(job_id=job_id, status="queued", status_url=f"/v1/jobs/{job_id}", image_sha256=sha)
        return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.status_url})
    facility_gsd_m = None if gsd_m is not None else await run_in_threadpool(scenes.facility_gsd, store, facility_id)
    try:
        analysis = await runtime.inference_gate.run(
            partial(scenes.analyse_with_settings, facility_gsd_m=facility_gsd_m),
            runtime.detector,
            path,
            settings,
            gsd_m,
            footprint,
            sha,
        )
    except ImageError:
        path.unlink(missing_ok=True)  # not an image: nothing worth keeping (no observation can share its digest)
        raise
    disarm_timeout(request.scope)  # from here on the request finishes: what is stored is answered
    request.app.state.metrics.count_detections(analysis.counts)
    t1 = time.perf_counter()
    record, created = await run_in_threadpool(
        lambda: images.record_upload(
            store,
            facility_id,
            when,
            analysis,
            idempotency,
            count_rel_error=runtime.settings.count_rel_error,
            repeat_checked=True,
        )
    )  # _receive checked; a repeat stored since is caught by the unique indexes
    if not created:  # a concurrent duplicate stored it first
        return _replay(record, t0)
    t2 = time.perf_counter()
    out = record.to_dict(with_detections=True)
    out["timing_ms"] = {
        "decode": round(analysis.decode_ms, 1),
        "detect": round(analysis.detect_ms, 1),
        "store": round((t2 - t1) * 1000.0, 1),
        "total": round((t2 - t0) * 1000.0, 1),
    }
    # validated once and serialised by pydantic (returning the model would validate and serialise it again); the
    # next upload's anomaly fits are asked for once the answer is sent (so that they do not delay it)
    return Response(
        UploadOut.model_validate(out).model_dump_json(by_alias=True),
        status_code=201,
        media_type="application/json",
        background=BackgroundTask(request_prefit, request, facility_id),
    )


def _replay(original: observations.ObservationRecord, t0: float) -> JSONResponse:
    """200 with the observation a repeated upload had stored (nothing new is stored)."""
    out = original.to_dict(with_detections=True)
    out["timing_ms"] = {
        "decode": 0.0,
        "detect": 0.0,
        "store": 0.0,
        "total": round((time.perf_counter() - t0) * 1000.0, 1),
    }
    body = UploadOut.model_validate(out).model_dump(mode="json", by_alias=True)
    return JSONResponse(body, status_code=200, headers={"Idempotent-Replayed": "true"})


def _receive(
    store: Store,
    facility_id: str,
    captured_at: str,
    file: UploadFile,
    settings: Settings,
    idempotency: observations.Idempotency | None,
) -> tuple[dict[str, Any] | None, datetime, tuple[str, Path, int, bytes], observations.ObservationRecord | None]:
    """What an upload needs before its analysis, in one worker-thread pass: the facility's footprint (404 if the
    facility is unknown), the capture time (422), the upload archived (413 when too large) and the observation it
    repeats, if any."""
    footprint = scenes.facility_footprint(store, facility_id)
    when = validation.parse_capture_time(captured_at, settings.capture_window)
    archived = archive_upload(file, settings.max_upload_bytes, settings)
    return footprint, when, archived, images.find_upload(store, facility_id, when, archived[0], idempotency)


def archive_upload(file: UploadFile, max_bytes: int, settings: Settings) -> tuple[str, Path, int, bytes]:
    """Stream the upload (spooled by the multipart parser) into the archive, refusing with 413 as soon as it
    exceeds ``max_bytes`` (blocking: call it from a worker thread).

    Returns (sha256, path, size, first bytes)."""
    writer = scenes.ArchiveWriter(settings.archive_dir)
    head = b""
    try:
        while chunk := file.file.read(CHUNK):
            if writer.size + len(chunk) > max_bytes:
                raise HTTPException(
                    status_code=413,
                    detail=f"file exceeds the upload limit of {max_bytes / 1048576:.1f} MiB (WAGON_MAX_UPLOAD_MB)",
                )
            if len(head) < 16:
                head += chunk[: 16 - len(head)]
            writer.write(chunk)
    except BaseException:
        writer.discard()
        raise
    sha, path = writer.commit()
    return sha, path, writer.size, head
