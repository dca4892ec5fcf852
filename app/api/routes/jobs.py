"""``GET /v1/jobs/{id}``: progress and result of a large upload analysed in the background."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.auth import allow
from app.api.deps import RuntimeDep
from app.api.routes.common import TextId, errors
from app.api.schemas import JobOut
from app.core.errors import NotFoundError
from app.usecases.keys import Access

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}", response_model=JobOut, responses=errors(404), dependencies=[allow(Access.JOB)])
async def get_job(job_id: TextId, runtime: RuntimeDep) -> JobOut:
    """A background job: `queued`, `running` (with `progress` 0-1), `done` (with `result`, shaped as an upload's
    201 answer) or `failed` (with `error` and the `error_status` a direct upload would have had)."""
    if runtime.jobs is None:
        raise NotFoundError(f"job {job_id!r} not found")
    return JobOut.model_validate(await run_in_threadpool(runtime.jobs.get, job_id))
