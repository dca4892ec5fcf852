"""Bits shared by the route modules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from app.api.schemas import ErrorOut
from app.service import FACILITY_ID_PATTERN

#: Default and largest page size of list endpoints.
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000

FacilityId = Annotated[str, Path(description=f"Facility slug ({FACILITY_ID_PATTERN}).")]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for refusals (all shaped ``{"detail": "..."}``)."""
    return {code: {"model": ErrorOut} for code in codes}
