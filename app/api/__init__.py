"""HTTP layer (FastAPI): thin routes over :mod:`app.service`."""

from app.api.main import create_app

__all__ = ["create_app"]
