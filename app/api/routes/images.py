"""``POST /v1/facilities/{id}/images``: detect, count, store and score one image chip."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from app import service
from app.api.deps import RuntimeDep
from app.api.routes.common import FacilityId, errors
from app.api.schemas import UploadOut

router = APIRouter(tags=["images"])

CHUNK = 1024 * 1024


@router.post("/facilities/{facility_id}/images", status_code=201, response_model=UploadOut,
             responses=errors(404, 413, 415, 422, 503))
async def upload_image(
    facility_id: FacilityId,
    runtime: RuntimeDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG or TIFF (format read from the content).")],
    captured_at: Annotated[str, Form(description="Acquisition time, ISO 8601 with timezone.")],
    gsd_m: Annotated[float | None, Form(ge=0.05, le=10, description="Ground sample distance, m/pixel.")] = None,
) -> UploadOut:
    """Count railcars and containers in an image, store the observation with its detections and score it."""
    t0 = time.perf_counter()
    store = runtime.store
    await run_in_threadpool(service.get_facility, store, facility_id)
    when = service.parse_timestamp(captured_at)
    data = await _read_limited(file, runtime.settings.max_upload_bytes)
    analysis = await anyio.to_thread.run_sync(
        service.analyse_image, runtime.detector, data, gsd_m, runtime.settings.max_pixels,
        limiter=runtime.inference_limiter,
    )
    del data
    t1 = time.perf_counter()
    record = await run_in_threadpool(service.record_analysis, store, facility_id, when, analysis,
                                    count_rel_error=runtime.settings.count_rel_error)
    t2 = time.perf_counter()
    out = record.to_dict(with_detections=True)
    out["timing_ms"] = {
        "decode": round(analysis.decode_ms, 1),
        "detect": round(analysis.detect_ms, 1),
        "store": round((t2 - t1) * 1000.0, 1),
        "total": round((t2 - t0) * 1000.0, 1),
    }
    return UploadOut.model_validate(out)


async def _read_limited(file: UploadFile, max_bytes: int) -> bytes:
    """Read the whole upload, refusing with 413 as soon as it exceeds ``max_bytes``."""
    parts: list[bytes] = []
    size = 0
    while chunk := await file.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(
                status_code=413,
                detail=f"file exceeds the upload limit of {max_bytes / 1048576:.1f} MiB (WAGON_MAX_UPLOAD_MB)",
            )
        parts.append(chunk)
    return b"".join(parts)
