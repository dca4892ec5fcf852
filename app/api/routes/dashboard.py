"""The analysts' dashboard: one static page (HTML, JS, CSS and the vendored chart library) served by the service
itself, so it works offline. The page reads the same public API as any other client."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.api.auth import allow
from app.usecases.keys import Access

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/dashboard", dependencies=[allow(Access.PUBLIC)])
def dashboard() -> FileResponse:
    """The dashboard page (`?facility=ID` opens a facility; `?api_key=KEY` signs in once)."""
    return FileResponse(
        STATIC_DIR / "dashboard.html",
        media_type="text/html",
        headers={"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"},
    )


def static_files() -> StaticFiles:
    """The page's scripts, styles and vendored library, mounted at ``/dashboard/static``."""
    return StaticFiles(directory=STATIC_DIR)
