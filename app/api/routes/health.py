"""``GET /healthz``: is the database reachable and the model loaded."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.api.auth import allow
from app.api.deps import RuntimeDep
from app.api.schemas import HealthOut, ModelOut
from app.usecases.keys import AUTH_OFF_WARNING, Access

router = APIRouter(tags=["health"])


@router.get(
    "/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}}, dependencies=[allow(Access.PUBLIC)]
)
async def healthz(runtime: RuntimeDep, response: Response) -> HealthOut:
    """``ok`` (200) when the database answers and a model is loaded (or none is wanted); else ``degraded`` (503).
    Also says whether API keys are required (`auth`), with a warning when they are not."""
    db_ok = await run_in_threadpool(runtime.store.ping)
    model = runtime.detector
    model_ok = model is not None or not runtime.settings.load_model
    healthy = db_ok and model_ok
    if not healthy:
        response.status_code = 503
    return HealthOut(
        status="ok" if healthy else "degraded",
        db=db_ok,
        model=None if model is None else ModelOut(name=model.name, version=model.version),
        version=__version__,
        auth="enabled" if runtime.settings.auth else "disabled",
        warnings=[] if runtime.settings.auth else [AUTH_OFF_WARNING],
    )
