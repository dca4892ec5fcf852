"""The settings table in docs/deployment.md is the one the settings object makes."""

from __future__ import annotations

from app.core import settings_doc
from app.core.settings import Settings


def test_deployment_document_lists_every_setting_as_the_code_defines_it() -> None:
    text = settings_doc.DOCUMENT.read_text(encoding="utf-8")
    assert settings_doc.render(text) == text, "docs/deployment.md is out of date: run python -m app.core.settings_doc"


def test_table_has_one_row_per_setting_with_its_variable_and_default() -> None:
    table = settings_doc.settings_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    assert any(r.startswith("| `WAGON_DATABASE_URL` | `sqlite:///./var/wagon.db` |") for r in rows)
    assert any(r.startswith("| `WAGON_INFERENCE_THREADS` | unset |") for r in rows)


def test_render_replaces_only_the_marked_table() -> None:
    doc = f"before\n{settings_doc.BEGIN}\n| stale |\n{settings_doc.END}\nafter\n"
    out = settings_doc.render(doc)
    assert out.startswith(f"before\n{settings_doc.BEGIN}\n| variable |") and out.endswith(
        f"{settings_doc.END}\nafter\n"
    )
    assert "| stale |" not in out
