"""Bits shared by the route modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.api import json_body
from app.api.schemas import ErrorOut
from app.core.validation import FACILITY_ID_PATTERN, NO_CONTROL_PATTERN
from app.database import MAX_DB_INT

#: Default and largest page size of list endpoints.
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000

FacilityId = Annotated[str, Path(pattern=NO_CONTROL_PATTERN, description=f"Facility slug ({FACILITY_ID_PATTERN}).")]
#: Any other id in a path (jobs, keys): control characters are refused (PostgreSQL cannot compare NUL).
TextId = Annotated[str, Path(pattern=NO_CONTROL_PATTERN)]
#: Database ids are 32-bit on PostgreSQL: larger numbers are refused (422) before they reach the database.
ObservationId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="Observation id.")]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for refusals (all shaped ``{"detail": "..."}``)."""
    return {code: {"model": ErrorOut} for code in codes}


@dataclass(frozen=True)
class _Declared:
    query: frozenset[str]
    form: frozenset[str]


_DECLARED: dict[int, _Declared] = {}


def _declared(route: APIRoute) -> _Declared:
    """Names of the query parameters and form fields a route (and its dependencies) declares; cached."""
    found = _DECLARED.get(id(route))
    if found is None:
        query: set[str] = set()
        form: set[str] = set()
        stack = [route.dependant]
        while stack:
            dependant = stack.pop()
            query.update(f.alias for f in dependant.query_params)
            form.update(f.alias for f in dependant.body_params)
            stack.extend(dependant.dependencies)
        found = _DECLARED[id(route)] = _Declared(frozenset(query), frozenset(form))
    return found


def _repeated(where: str, names: list[str], what: str) -> list[dict[str, Any]]:
    """Validation errors for each name given more than once."""
    twice = sorted({n for n in names if names.count(n) > 1})
    return [
        {"type": "duplicate", "loc": (where, n), "msg": f"{what} given more than once; give it once", "input": None}
        for n in twice
    ]


async def reject_unknown_params(request: Request) -> None:
    """Refuse (422, naming each) query parameters and form fields the route does not declare (a misspelt ``gsd``
    must not silently mean "no GSD"), and query parameters, form fields, file parts and JSON keys given twice
    (the framework would silently keep one)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _declared(route)
    errors = [
        {"type": "extra_forbidden", "loc": ("query", name), "msg": "unknown query parameter", "input": None}
        for name in sorted(set(request.query_params) - declared.query)
    ]
    errors += _repeated("query", [k for k, _ in request.query_params.multi_items()], "query parameter")
    content_type = request.headers.get("content-type", "")
    if declared.form and content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()  # already parsed (and cached) by FastAPI for the route's own fields
        errors += [
            {"type": "extra_forbidden", "loc": ("form", name), "msg": "unknown form field", "input": None}
            for name in sorted(set(form.keys()) - declared.form)
        ]
        errors += _repeated("form", [k for k, _ in form.multi_items()], "form field (or file part)")
    elif declared.form and content_type.split(";")[0].strip().lower().endswith(("/json", "+json")):
        try:
            json_body.loads(await request.body())  # FastAPI parsed it already, last key winning
        except json_body.DuplicateKeyError as exc:
            errors.append({"type": "duplicate", "loc": ("body", exc.key), "msg": str(exc), "input": None})
    if errors:
        raise RequestValidationError(errors)
