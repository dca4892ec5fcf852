"""Map core exceptions to HTTP answers: every refusal is JSON ``{"detail": "<reason>"}``.

| exception                                   | status |
|---------------------------------------------|--------|
| request validation (missing/bad field)      | 422    |
| ``InvalidInputError`` (incl. import rows)   | 422    |
| ``EmptyImageError``, ``CorruptImageError``  | 422    |
| ``ImageShapeError`` (strip, GSD too coarse) | 422    |
| ``UnsupportedImageError`` (not JPEG/PNG/TIFF) | 415  |
| ``ImageTooLargeError``, body over the limit | 413    |
| body the framework cannot parse (its 400)   | 422    |
| ``NotFoundError``                           | 404    |
| ``ConflictError``                           | 409    |
| ``ModelUnavailableError``                   | 503    |
| ``OverloadedError`` (inference queue full)  | 503 + ``Retry-After`` |
| ``DatabaseBusyError``, database locked      | 503 + ``Retry-After`` |
| request over ``WAGON_REQUEST_TIMEOUT_S``    | 504 (``app.api.limits``) |

"Database locked": a write that still found another writer holding the lock after the busy timeout (SQLite
"database is locked"; PostgreSQL lock timeout or deadlock). Nothing was stored; the client may retry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import database as db
from app.api.observability import mark_error
from app.core.backpressure import OverloadedError
from app.core.errors import (
    ConflictError,
    DatabaseBusyError,
    ImportValidationError,
    InvalidInputError,
    ModelUnavailableError,
    NotFoundError,
    ServiceError,
)
from app.detection.imaging import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageShapeError,
    ImageTooLargeError,
    UnsupportedImageError,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (ModelUnavailableError, 503),
    (OverloadedError, 503),
    (DatabaseBusyError, 503),
    (EmptyImageError, 422),
    (CorruptImageError, 422),
    (ImageShapeError, 422),
    (UnsupportedImageError, 415),
    (ImageTooLargeError, 413),
)


def status_for(exc: Exception) -> int:
    """HTTP status of a core exception (400 for anything unlisted)."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


def _loc(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")] or [str(x) for x in loc]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


async def _core_error(request: Request, exc: Exception) -> JSONResponse:
    mark_error(request.scope, type(exc).__name__)
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, ImportValidationError):
        body["errors"] = exc.errors
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError | DatabaseBusyError) else None
    return JSONResponse(body, status_code=status_for(exc), headers=headers)


#: Seconds a client is told to wait after a write found the database locked.
LOCKED_RETRY_AFTER_S = 5


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A write that found the database locked by another writer (after waiting the busy timeout): 503 with
    ``Retry-After``, nothing stored; any other database error stays a server error."""
    if not db.is_lock_error(exc):
        raise exc
    mark_error(request.scope, "database_locked")
    return JSONResponse(
        {"detail": "the database is busy with another write; nothing was stored, retry shortly"},
        status_code=503,
        headers={"Retry-After": str(LOCKED_RETRY_AFTER_S)},
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    mark_error(request.scope, "validation")
    errors = [{"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", "invalid"))} for e in exc.errors()]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette/FastAPI refusals; a body that cannot be parsed at all (400 from the framework: not UTF-8, broken
    multipart) is a 422 like every other bad input."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != 400:
        mark_error(request.scope, "body_too_large" if exc.status_code == 413 else f"http_{exc.status_code}")
        return await http_exception_handler(request, exc)
    mark_error(request.scope, "unparsable_body")
    cause = exc.__cause__ or exc.__context__
    reason = f": {_parse_reason(cause)}" if cause is not None and str(cause) else ""
    detail = exc.detail if exc.detail != "There was an error parsing the body" else "the request body cannot be parsed"
    return JSONResponse({"detail": f"{detail}{reason}"}, status_code=422)


def _parse_reason(cause: BaseException) -> str:
    """Why a body could not be parsed, in the client's terms (the parser's own words when they are about the
    input; nothing of the interpreter's limits)."""
    if isinstance(cause, RecursionError):
        return "the JSON body is nested too deeply"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return "a number in the JSON body has too many digits"
    if isinstance(cause, (json.JSONDecodeError, UnicodeDecodeError)) or type(cause).__module__.startswith(
        ("multipart", "python_multipart", "starlette")
    ):
        return str(cause)
    log.warning("unparsable body: %s: %s", type(cause).__name__, cause)
    return "see the service log for this request id"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ServiceError, _core_error)
    app.add_exception_handler(ImageError, _core_error)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
