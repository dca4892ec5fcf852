"""Checks and formats of plain values shared by every layer: ids, free text, timestamps."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.core.errors import InvalidInputError

FACILITY_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Text without control characters (names, sources, ids in paths): PostgreSQL refuses NUL in text, and no name
#: needs a control character.
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def iso(value: datetime) -> str:
    """RFC 3339 in UTC (``...Z``), the API's one time format."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(value: str, name: str = "captured_at") -> datetime:
    """Parse an ISO 8601 datetime that carries a timezone; return it in UTC.

    The rule, everywhere a time is read (form fields, query parameters, JSON and CSV imports): a timezone is
    required (``Z`` or ``+hh:mm``); a naive time is refused rather than guessed. Raises :class:`InvalidInputError`
    for malformed or naive values and for times that do not exist in UTC (year 1 with a positive offset).
    """
    text = (value or "").strip()
    if not text:
        raise InvalidInputError(f"{name} is required (ISO 8601 with timezone, e.g. 2024-05-01T10:30:00Z)")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"{name} {value!r} is not an ISO 8601 datetime (expected e.g. 2024-05-01T10:30:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidInputError(
            f"{name} {value!r} has no timezone; add one, e.g. 'Z' or '+00:00' (2024-05-01T10:30:00Z)"
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(f"{name} {value!r} is out of range in UTC") from None


#: Ground sample distances (metres per pixel) the detector can work with, whatever gives them: a request, a
#: geotransform, a facility's earlier uploads or an estimate.
GSD_RANGE_M: tuple[float, float] = (0.05, 10.0)


def check_gsd(gsd_m: float | None, name: str = "gsd_m") -> float | None:
    """Return ``gsd_m`` (None: not given) unless it is not a finite number within :data:`GSD_RANGE_M`:
    :class:`InvalidInputError` naming ``name`` (where the GSD came from)."""
    if gsd_m is None:
        return None
    lo, hi = GSD_RANGE_M
    if not (isinstance(gsd_m, (int, float)) and math.isfinite(gsd_m) and lo <= gsd_m <= hi):
        raise InvalidInputError(
            f"{name} is {gsd_m!r} m/px; it must be a finite number between {lo} and {hi:g} metres per pixel"
        )
    return float(gsd_m)


#: Default earliest capture time: no satellite imagery of railcars is older.
CAPTURE_EARLIEST = datetime(1960, 1, 1, tzinfo=UTC)
#: Default allowance for capture times ahead of the server's clock (clock skew, time zones), days.
CAPTURE_MAX_FUTURE_DAYS = 1.0


@dataclass(frozen=True)
class CaptureWindow:
    """The capture times an observation may have: from ``earliest`` to ``max_future_days`` past now."""

    earliest: datetime = CAPTURE_EARLIEST
    max_future_days: float = CAPTURE_MAX_FUTURE_DAYS

    def check(self, when: datetime, name: str = "captured_at", now: datetime | None = None) -> datetime:
        """``when`` in UTC, or :class:`InvalidInputError` when it lies outside the window."""
        when = require_aware(when)
        earliest = require_aware(self.earliest)
        if when < earliest:
            raise InvalidInputError(
                f"{name} {iso(when)} is before {iso(earliest)}, the earliest capture time accepted "
                "(WAGON_CAPTURE_EARLIEST)"
            )
        latest = (now or datetime.now(UTC)) + timedelta(days=self.max_future_days)
        if when > latest:
            raise InvalidInputError(
                f"{name} {iso(when)} is more than {self.max_future_days:g} day(s) in the future "
                "(WAGON_CAPTURE_MAX_FUTURE_DAYS)"
            )
        return when


def parse_capture_time(value: str, window: CaptureWindow, name: str = "captured_at") -> datetime:
    """:func:`parse_timestamp`, then the capture-time range (:meth:`CaptureWindow.check`)."""
    return window.check(parse_timestamp(value, name), name)


#: Unicode categories no free text may hold: controls (NUL, tab, line breaks), format characters (such as U+202E,
#: which reverses the text shown after it), lone surrogates (not storable as UTF-8), line and paragraph separators.
FORBIDDEN_TEXT_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def check_text(value: str, name: str) -> str:
    """Return ``value`` unless it holds a character of :data:`FORBIDDEN_TEXT_CATEGORIES` (:class:`InvalidInputError`
    naming the first one)."""
    for i, char in enumerate(value):
        if unicodedata.category(char) in FORBIDDEN_TEXT_CATEGORIES:
            raise InvalidInputError(
                f"{name} must not contain a control character or other invisible character (Unicode categories "
                f"Cc, Cf, Cs, Zl, Zp: NUL, line breaks, U+202E, ...); found U+{ord(char):04X} at position {i}"
            )
    return value


def validate_facility_id(facility_id: str) -> str:
    """Return the id if it is a lowercase slug, else raise :class:`InvalidInputError`."""
    if not isinstance(facility_id, str) or not re.fullmatch(FACILITY_ID_PATTERN, facility_id):
        raise InvalidInputError(f"facility id {facility_id!r} must be a lowercase slug matching {FACILITY_ID_PATTERN}")
    return facility_id


def require_aware(value: datetime) -> datetime:
    """``value`` in UTC; :class:`InvalidInputError` when it carries no timezone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError("captured_at must include a timezone")
    return value.astimezone(UTC)
