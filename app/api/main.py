"""App factory: settings, lifespan (store and model loaded once per process), middleware, routes."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from app import __version__
from app.api.auth import Access, AuthGate, allow, document_security
from app.api.deps import Runtime
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimitMiddleware, RequestTimeoutMiddleware
from app.api.observability import Metrics, RequestContextMiddleware, metrics_endpoint, route_templates
from app.api.routes import alerts as alert_routes
from app.api.routes import (
    dashboard,
    facilities,
    health,
    images,
    jobs,
    keys,
    observations,
    reviews,
    scenes,
    subscriptions,
)
from app.api.routes.common import reject_unknown_params
from app.api.schemas import ImportIn, ValidationErrorOut
from app.api.web import ETagMiddleware
from app.core.backpressure import InferenceGate
from app.core.logs import configure_logging
from app.core.settings import MIB, Settings, get_settings
from app.database import Store
from app.scoring.fit_cache import Prefitter
from app.usecases.images import DetectorProtocol, load_configured_detector
from app.usecases.jobs import JobQueue
from app.usecases.keys import AUTH_OFF_WARNING, bootstrap_admin
from app.usecases.scene_jobs import SceneJobs
from app.usecases.subscription_polls import SubscriptionPoller

log = logging.getLogger("app.api")

#: Allowance for multipart framing and form fields on top of the file-size limit.
MULTIPART_OVERHEAD_BYTES = 1 * MIB


def create_app(settings: Settings | None = None, detector: DetectorProtocol | None = None) -> FastAPI:
    """Build the FastAPI app. ``detector`` injects an already-loaded model (tests); otherwise the lifespan loads
    it from ``settings.model_path`` unless ``settings.load_model`` is false."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.database_url)
        await anyio.to_thread.run_sync(_set_up_auth, store, settings)
        model = detector
        if model is None and settings.load_model:
            model = await anyio.to_thread.run_sync(load_configured_detector, settings)
        queue = await anyio.to_thread.run_sync(JobQueue, settings, store, model)
        scene_jobs = SceneJobs(queue)  # its task registered before the worker starts
        poller = SubscriptionPoller(scene_jobs)  # and the periodic poll of subscriptions
        await anyio.to_thread.run_sync(queue.resume)
        await anyio.to_thread.run_sync(scene_jobs.resume)
        if settings.jobs_worker:
            queue.start_worker()
        gate = InferenceGate(
            settings.max_concurrent_inferences, settings.max_queued_inferences, on_pass=metrics.inference.observe
        )
        metrics.watch_gate(lambda: gate.waiting, lambda: gate.running)
        prefitter = Prefitter(store, busy=lambda: gate.running + gate.waiting > 0)  # fits fill idle time only
        prefitter.start()
        app.state.runtime = Runtime(
            settings=settings,
            store=store,
            detector=model,
            inference_gate=gate,
            jobs=queue,
            scenes=scene_jobs,
            subscriptions=poller,
            prefitter=prefitter,
        )
        log.info("wagon-detector %s ready (model: %s)", __version__, "none" if model is None else model.name)
        async with anyio.create_task_group() as tasks:
            if settings.webhook_url:
                tasks.start_soon(_deliver_alerts, store, settings)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                await anyio.to_thread.run_sync(queue.stop_worker)
                await anyio.to_thread.run_sync(prefitter.stop)
                store.dispose()

    app = FastAPI(
        title="wagon-detector",
        version=__version__,
        summary="Count railcars and containers in satellite image chips and score counts against history.",
        lifespan=lifespan,
    )
    app.add_middleware(AuthGate, routes=app.router.routes)  # innermost: after size limits, inside CORS
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES)
    app.add_middleware(ETagMiddleware)
    app.add_middleware(RequestTimeoutMiddleware, timeout_s=settings.request_timeout_s)
    if settings.cors_origin_list:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["ETag", "X-Next-Cursor", "Location", "Retry-After", "X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, templates=lambda: route_templates(app))
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.mount("/dashboard/static", dashboard.static_files(), name="dashboard-static")
    # Prometheus scrapes with a reader key (``authorization: {credentials: <key>}`` in its scrape config).
    app.add_api_route(
        "/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False, dependencies=[allow(Access.READ)]
    )
    for module in (facilities, observations, reviews, images, alert_routes, jobs, scenes, subscriptions, keys):
        app.include_router(module.router, prefix="/v1", dependencies=[Depends(reject_unknown_params)])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented way to customise it
    return app


def _set_up_auth(store: Store, settings: Settings) -> None:
    """Warn when authentication is off; else, on a database without keys, create the first admin key (printed once
    on stderr unless it came from ``WAGON_ADMIN_KEY``)."""
    if not settings.auth:
        log.warning(AUTH_OFF_WARNING)
        return
    configured = settings.admin_key_value
    new = bootstrap_admin(store, configured)
    if new is not None and configured is None:
        print(
            f"\nwagon-detector: created the first admin key (id {new.record.id}). It is shown only now; "
            f"store it safely:\n\n    {new.key}\n\nSend it as 'Authorization: Bearer <key>'; create other keys "
            "with POST /v1/keys or `wagon-detector keys create`.\n",
            file=sys.stderr,
            flush=True,
        )
    elif new is not None:
        log.info("stored WAGON_ADMIN_KEY as the first admin key (id %s)", new.record.id)


async def _deliver_alerts(store: Store, settings: Settings) -> None:
    """Background loop: POST due alert deliveries to the webhook (in a worker thread), every ``webhook_poll_s``."""
    from app.usecases.alerts import deliver_due

    assert settings.webhook_url
    while True:
        try:
            await anyio.to_thread.run_sync(
                lambda: deliver_due(
                    store,
                    settings.webhook_url or "",
                    timeout_s=settings.webhook_timeout_s,
                    base_backoff_s=settings.webhook_backoff_s,
                    max_backoff_s=settings.webhook_max_backoff_s,
                    max_attempts=settings.webhook_max_attempts,
                )
            )
        except Exception:
            # the loop must survive a bad round (it is retried next round)
            log.exception("alert delivery round failed")
        await anyio.sleep(settings.webhook_poll_s)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI document, plus the schemas of the JSON import body (that route reads its body itself)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    # 422 answers are {"detail": "...", "errors": [...]} (app.api.errors), not FastAPI's default shape.
    schema = json.loads(
        json.dumps(schema).replace(
            '"#/components/schemas/HTTPValidationError"', '"#/components/schemas/ValidationErrorOut"'
        )
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ImportIn, ValidationErrorOut):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for name, body in components.items():
        if name.startswith("Body_"):  # form bodies: unknown form fields are refused (routes.common)
            body["additionalProperties"] = False
    document_security(schema, app.routes)
    app.openapi_schema = schema
    return schema
