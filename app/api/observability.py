"""Request ids, one JSON access-log line per request, and Prometheus metrics (served at ``/metrics``).

Labels are bounded: requests are labelled by route template (``/v1/facilities/{facility_id}``), never by raw path;
unmatched paths share one label. Each app has its own registry, so several apps in one process (tests) do not
collide.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import request_id_from, request_id_var

access_log = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: Label of requests that matched no route.
UNMATCHED = "<unmatched>"
#: Scope key under which handlers name the kind of error they answered (see :func:`mark_error`).
ERROR_KIND_KEY = "wagon.error_kind"
#: Latency buckets, seconds (uploads with inference take 0.05 s to minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def mark_error(scope: Scope, kind: str) -> None:
    """Name the kind of error a request ended with (for ``wagon_errors_total``)."""
    scope[ERROR_KIND_KEY] = kind


class Metrics:
    """The service's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.requests = Histogram(
            "wagon_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "wagon_inference_duration_seconds",
            "Time of one image analysis in its worker thread (decode and detection, queue wait excluded).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.detections = Counter(
            "wagon_detections", "Detections in analysed uploads, by class.", ["class_name"], registry=self.registry
        )
        self.errors = Counter(
            "wagon_errors",
            "Requests answered with an error, by kind (exception class, `validation`, "
            "`timeout`, `body_too_large`, `unhandled` or `http_<status>`).",
            ["kind"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "wagon_inference_queue_depth", "Uploads waiting for an inference slot.", registry=self.registry
        )
        self.inferences_running = Gauge(
            "wagon_inferences_running", "Inference passes running now.", registry=self.registry
        )

    def watch_gate(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Read the queue depth and running passes from the inference gate at scrape time."""
        self.queue_depth.set_function(waiting)
        self.inferences_running.set_function(running)

    def count_detections(self, counts: Mapping[str, int]) -> None:
        """Add an analysis's per-class counts."""
        for name, n in counts.items():
            if n:
                self.detections.labels(class_name=name).inc(n)

    def render(self) -> Response:
        """The exposition text."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text exposition (unauthenticated; guard it at the proxy or with a dependency)."""
    metrics: Metrics = request.app.state.metrics
    return metrics.render()


Templates = list[tuple[re.Pattern[str], str]]


def route_templates(app: Any) -> Templates:
    """Path templates of every route of ``app`` (those in the OpenAPI document, with their router prefixes, and
    the undocumented ones such as ``/metrics`` and mounts), as anchored patterns, most literal first."""
    found: set[str] = set(app.openapi().get("paths", {}))
    for route in app.routes:
        path = getattr(route, "path", None)
        if isinstance(route, Mount) and path:
            found.add(path.rstrip("/") + "/{path:path}")
        elif isinstance(path, str) and path:
            found.add(path)
    ordered = sorted(found, key=lambda t: (t.count("{"), -len(t)))
    return [(compile_path(t)[0], re.sub(r":path}", "}", t)) for t in ordered]


def route_template(path: str, templates: Templates) -> str:
    """The template a path matches (``/v1/jobs/{job_id}``), ``<unmatched>`` if none: never the raw path."""
    for pattern, template in templates:
        if pattern.match(path):
            return template
    return UNMATCHED


class RequestContextMiddleware:
    """Outermost middleware: request id (``X-Request-ID`` in and out), access log line, request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: Callable[[], Templates]) -> None:
        self.app = app
        self.metrics = metrics
        self._make_templates = templates
        self._templates: Templates | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), None)
        request_id = request_id_from(incoming)
        token = request_id_var.set(request_id)
        status = 500
        started = False
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            mark_error(scope, "unhandled")
            access_log.exception("unhandled error")
            if not started:  # a JSON answer with the id to quote; the server still sees (and logs) the error
                body = json.dumps({"detail": f"internal error; quote request id {request_id}"}).encode()
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body})
            status = 500
            raise
        finally:
            self._record(scope, status, time.perf_counter() - t0, request_id)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, elapsed: float, request_id: str) -> None:
        if self._templates is None:
            self._templates = self._make_templates()
        route = route_template(str(scope.get("path", "")), self._templates)
        method = str(scope.get("method", ""))
        self.metrics.requests.labels(route=route, method=method, status=str(status)).observe(elapsed)
        if status >= 400:
            self.metrics.errors.labels(kind=str(scope.get(ERROR_KIND_KEY) or f"http_{status}")).inc()
        access_log.info(
            "%s %s %d %.1f ms",
            method,
            scope.get("path", ""),
            status,
            elapsed * 1000.0,
            extra={
                "method": method,
                "path": scope.get("path", ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000.0, 1),
                "request_id": request_id,
                "client": _client(scope),
            },
        )


def _client(scope: Scope) -> str | None:
    client: Any = scope.get("client")
    return None if not client else str(client[0])
