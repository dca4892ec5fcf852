"""The settings table of ``docs/deployment.md``, made from :class:`~app.core.settings.Settings` itself.

``python -m app.core.settings_doc`` rewrites the table between the document's markers; ``--check`` exits 1 when the
document and the code differ (the test suite runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from pydantic_core import PydanticUndefined

from app.core.settings import PROJECT_ROOT, Settings
from app.core.validation import iso

DOCUMENT = PROJECT_ROOT / "docs" / "deployment.md"
BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: object) -> str:
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, datetime):
        return f"`{iso(value)}`"
    return f"`{value}`"


def settings_table() -> str:
    """One Markdown row per setting: environment variable, default and description, in the class's order."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(
            f"| `{prefix}{name.upper()}` | {_cell(_default(field.default))} | {_cell(field.description or '')} |"
        )
    return "\n".join(rows)


def render(document: str) -> str:
    """``document`` with the table between its markers replaced by :func:`settings_table`."""
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    return document[:start] + "\n" + settings_table() + "\n" + document[end:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the table in ``docs/deployment.md`` (or, with ``--check``, report whether it is current)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the document's table is out of date")
    args = parser.parse_args(argv)
    text = DOCUMENT.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOCUMENT} is out of date: run python -m app.core.settings_doc", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
