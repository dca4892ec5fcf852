"""Who may call which route: every API route declares its :class:`~app.usecases.keys.Access` with :func:`allow` (a
FastAPI dependency); the routes FastAPI adds itself (docs, OpenAPI) and the dashboard's static files are listed in
:data:`PUBLIC_PATHS`. A route with neither fails the test suite (``tests/api/test_auth.py`` enumerates
``app.routes``).

:class:`AuthGate` runs the same check as the dependency before a request body is read, so an unauthenticated or
unauthorised upload is refused without being received. Keys come as ``Authorization: Bearer <key>``; no or an
unknown key answers 401 (with ``WWW-Authenticate: Bearer``), a key whose role does not allow the route 403.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.usecases import keys
from app.usecases.keys import Access, Principal

#: Paths served without a key that are not API routes (FastAPI's docs and schema, the dashboard's static files).
PUBLIC_PATHS: frozenset[str] = frozenset(
    {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/dashboard/static"}
)
_STATE_KEY = "wagon.principal"


class Require:
    """Dependency: the caller must be allowed ``access`` (on the path's facility); returns the caller."""

    def __init__(self, access: Access) -> None:
        self.access = access

    async def __call__(self, request: Request) -> Principal:
        return await authorize(request, self.access)


def allow(access: Access) -> Any:
    """``Depends`` for a route's ``dependencies=[...]`` or a parameter: the permission rule of that route."""
    return Depends(Require(access))


def iter_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route of an app, routers included (FastAPI >= 0.16x keeps included routers nested): each item has
    ``path``, ``methods``, ``matches(scope)`` and, for API routes, ``dependant`` and ``original_route``."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI flattens included routers itself
        yield from routes
        return
    yield from iter_route_contexts(routes)


def is_api_route(route: Any) -> bool:
    """Whether an item of :func:`iter_routes` is a FastAPI route (which must declare its access)."""
    return isinstance(getattr(route, "original_route", route), APIRoute)


def route_access(route: Any) -> list[Access]:
    """The rules an API route declares (its own and its routers'): exactly one is expected."""
    found: list[Access] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Require):
            found.append(dep.call.access)
        stack.extend(dep.dependencies)
    return found


def document_security(schema: dict[str, Any], routes: list[Any]) -> None:
    """Declare the Bearer scheme in an OpenAPI document and mark every non-public operation with it (the docs'
    "Authorize" button then sends the key), noting the role each one needs."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`wd_...`): `Authorization: Bearer <key>`.",
    }
    for route in iter_routes(routes):
        rules = route_access(route) if is_api_route(route) else []
        if len(rules) != 1 or rules[0] is Access.PUBLIC:
            continue
        for method in route.methods:
            operation = schema.get("paths", {}).get(route.path, {}).get(method.lower())
            if operation is not None:
                operation["security"] = [{"apiKey": []}]
                operation["x-wagon-access"] = rules[0].value
                operation.setdefault("responses", {}).update(
                    {
                        "401": {"description": "No, an unknown or a revoked API key."},
                        "403": {"description": "The key's role does not allow this."},
                    }
                )


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


def bearer_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (None without the header); 401 for another scheme."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("send the API key as 'Authorization: Bearer <key>'", "invalid_request")
    return key.strip()


async def authenticate(request: Request) -> Principal:
    """The caller (cached on the request); 401 without a valid key. Everyone is admin when auth is off."""
    cached = request.scope.get(_STATE_KEY)
    if cached is not None:
        return cached
    runtime = request.app.state.runtime
    if not runtime.settings.auth:
        principal = keys.ANONYMOUS
    else:
        key = bearer_key(request)
        if key is None:
            raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        found = await run_in_threadpool(lambda: keys.authenticate(runtime.store, key, wait=False))
        if found is None:
            raise _unauthorized("the API key is unknown or revoked", "invalid_token")
        principal = found
    request.scope[_STATE_KEY] = principal
    return principal


async def authorize(request: Request, access: Access) -> Principal:
    """The caller, if allowed ``access``; 401 or 403 otherwise."""
    if access is Access.PUBLIC:
        return keys.NOBODY
    principal = await authenticate(request)
    facility = request.path_params.get("facility_id")
    if access is Access.JOB and principal.role == "uploader":
        from app.usecases.jobs import facility_of_job

        facility = await run_in_threadpool(
            facility_of_job, request.app.state.runtime.store, str(request.path_params.get("job_id", ""))
        )
    if not principal.allows(access, facility):
        raise HTTPException(status_code=403, detail=_refusal(principal, access, facility))
    return principal


def _refusal(principal: Principal, access: Access, facility: str | None) -> str:
    who = f"key {principal.key_id} (role {principal.role})"
    if access is Access.UPLOAD:
        return f"{who} may not upload to facility {facility!r}"
    if access is Access.JOB:
        return f"{who} may not read this job (readers, and uploaders of the job's facility, may)"
    if access is Access.SCENE:
        return f"{who} may not submit scenes (admins and uploaders may)"
    needs = {Access.ADMIN: "admin", Access.REVIEW: "analyst or admin"}.get(access, "reader, analyst or admin")
    return f"{who} may not do this (needs role {needs})"


class AuthGate:
    """ASGI middleware: applies the matched route's rule before the route (and its body) is reached."""

    def __init__(self, app: ASGIApp, routes: list[Any]) -> None:
        self.app = app
        self.routes = routes  # the app's live route list
        self._rules: list[tuple[Any, Access]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route, child = self._match(scope)
            if route is not None and route[1] is not Access.PUBLIC:
                request = Request({**scope, **child})
                try:
                    principal = await authorize(request, route[1])
                except HTTPException as exc:
                    await _send_error(send, exc)
                    return
                scope[_STATE_KEY] = principal
        await self.app(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[tuple[Any, Access] | None, dict[str, Any]]:
        if self._rules is None:  # routes are complete once the app serves
            self._rules = [
                (r, rules[0])
                for r in iter_routes(self.routes)
                if is_api_route(r) and len(rules := route_access(r)) == 1
            ]
        for item in self._rules:
            match, child = item[0].matches(scope)
            if match is Match.FULL:
                return item, child
        return None, {}


async def _send_error(send: Send, exc: HTTPException) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
