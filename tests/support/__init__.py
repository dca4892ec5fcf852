"""Helpers shared by the tests (fixtures live in ``tests/conftest.py``): paths, keys, images, fakes, geodata,
PostgreSQL and server processes."""

from __future__ import annotations

from pathlib import Path

from app.core.settings import PROJECT_ROOT

#: The tests folder, and the small data committed in it (``tests/data``).
TESTS_DIR: Path = Path(__file__).resolve().parents[1]
DATA_DIR: Path = TESTS_DIR / "data"

#: The shipped weights the real-model tests load.
MODEL_PATH = PROJECT_ROOT / "models" / "wagon-obb.pt"
#: The admin key every test app starts with (``WAGON_ADMIN_KEY``); ``make_client`` sends it unless told otherwise.
ADMIN_KEY = "wd_0123456789ab_test-suite-admin-key-not-a-secret"
