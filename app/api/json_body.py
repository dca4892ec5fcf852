"""Strict JSON for request bodies: a body that Python's parser would choke on (nested too deep, a number with
thousands of digits) is refused with a reason instead of an internal error, and so is a key given twice in one
object (last-wins would silently drop the first)."""

from __future__ import annotations

import json
from typing import Any

from app.core.errors import InvalidInputError

#: Longest integer literal accepted (far above any count or id; Python refuses to convert past 4,300 digits).
MAX_INT_DIGITS = 20


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInputError(
            f"a number in the JSON body has {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS}"
        )
    return int(text)


class DuplicateKeyError(InvalidInputError):
    """A JSON object gives one key twice (``key``): which one was meant cannot be known."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"field {key!r} is given more than once in a JSON object; give each field once")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def loads(text: str | bytes) -> Any:
    """Parse a JSON body; :class:`InvalidInputError` saying what is wrong when it cannot be (including a key given
    twice in one object: :class:`DuplicateKeyError`)."""
    try:
        return json.loads(text, parse_int=_parse_int, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidInputError("the JSON body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidInputError("body is not UTF-8 text") from None
