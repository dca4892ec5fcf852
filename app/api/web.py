"""What makes the API pleasant for browser dashboards: ETags (304 on ``If-None-Match``), opaque cursors for list
pagination, and CSV renderings of the observation and anomaly lists."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from fastapi import HTTPException, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.database import MAX_DB_INT

T = TypeVar("T")

#: Responses larger than this are passed through without an ETag (they are not buffered).
ETAG_MAX_BYTES = 64 * 1024 * 1024


class ETagMiddleware:
    """Add a strong ``ETag`` (hash of the body) to successful GET responses, and answer 304 Not Modified
    when the request's ``If-None-Match`` names it. Responses that already carry an ETag (files) keep it, and get
    the same 304 treatment."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if_none_match = _header(scope, b"if-none-match")
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        passthrough = False
        send_rest = True  # false once a 304 replaced the response: its body is dropped

        async def buffered_send(message: Message) -> None:
            nonlocal start, size, passthrough, send_rest
            if passthrough:
                if send_rest:
                    await send(message)
                return
            if message["type"] == "http.response.start":
                headers = {k.lower() for k, _ in message.get("headers", [])}
                if message["status"] != 200 or b"etag" in headers:  # e.g. files, which have their own ETag
                    passthrough = True
                    own = dict((k.lower(), v) for k, v in message.get("headers", [])).get(b"etag")
                    if own is not None and if_none_match is not None and _matches(if_none_match, own.decode()):
                        await _send_304(send, message, own.decode())
                        send_rest = False
                    else:
                        await send(message)
                    return
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body = message.get("body", b"")
            chunks.append(body)
            size += len(body)
            if size > ETAG_MAX_BYTES:  # too big to hash in memory: send what we have as it is
                passthrough = True
                await send(start)
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"".join(chunks),
                        "more_body": message.get("more_body", False),
                    }
                )
                return
            if message.get("more_body", False):
                return
            full = b"".join(chunks)
            etag = '"' + hashlib.sha256(full).hexdigest()[:32] + '"'
            if if_none_match is not None and _matches(if_none_match, etag):
                await _send_304(send, start, etag)
                return
            start["headers"] = [*start.get("headers", []), (b"etag", etag.encode())]
            await send(start)
            await send({"type": "http.response.body", "body": full})

        await self.app(scope, receive, buffered_send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _matches(if_none_match: str, etag: str) -> bool:
    wanted = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in wanted or etag.removeprefix("W/") in wanted


async def _send_304(send: Send, start: Message, etag: str) -> None:
    keep = {b"cache-control", b"vary", b"content-location", b"expires", b"access-control-allow-origin"}
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() in keep]
    await send({"type": "http.response.start", "status": 304, "headers": [*headers, (b"etag", etag.encode())]})
    await send({"type": "http.response.body", "body": b""})


# ------------------------------------------------------------------------------------------------- cursors


def encode_cursor(key: Sequence[Any]) -> str:
    """An opaque cursor for the position just after ``key`` (a JSON-able sort key)."""
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """The sort key a cursor stands for; 422 when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status_code=422, detail="cursor is not valid (pass next_cursor as it is)") from None
    if not isinstance(key, list):
        raise HTTPException(status_code=422, detail="cursor is not valid (pass next_cursor as it is)")
    return key


def cursor_key(cursor: str | None, *types: type) -> list[Any] | None:
    """The sort key of ``cursor`` checked against the key's shape (one type per part); ``None`` without a cursor
    (an empty parameter counts as none); 422 when it is not a cursor of this list."""
    if not cursor:
        return None
    key = decode_cursor(cursor)
    if len(key) != len(types) or not all(
        isinstance(v, t) and not isinstance(v, bool) and _storable(v) for v, t in zip(key, types, strict=True)
    ):
        raise HTTPException(status_code=422, detail="cursor is not valid for this list (pass next_cursor as it is)")
    return key


def _storable(value: Any) -> bool:
    """Whether a cursor part can be compared in the database: no NUL in text (PostgreSQL refuses it), integers
    within the database's ``Integer`` range."""
    if isinstance(value, str):
        return "\x00" not in value
    return not isinstance(value, int) or abs(value) <= MAX_DB_INT


def paginate(items: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]]) -> tuple[list[T], str | None]:
    """The first ``limit`` of ``items`` (fetch one more to know whether there are more) and the cursor of the next
    page: the key of the page's last item, or ``None`` on the last page."""
    page = list(items[:limit])
    return page, (encode_cursor(key(page[-1])) if len(items) > limit and page else None)


# ------------------------------------------------------------------------------------------------- CSV


def csv_response(
    header: Sequence[str], rows: Iterable[Sequence[Any]], filename: str, headers: dict[str, str] | None = None
) -> Response:
    """A ``text/csv`` response (RFC 4180, CRLF line ends; empty cell = null; text cells that would start a formula
    are prefixed with ``'``: :func:`neutralise_formula`)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else _cell(v) for v in row])
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', **(headers or {})},
    )


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return neutralise_formula(value)
    return str(value)  # numbers stay numbers (a negative score is no formula)


def neutralise_formula(text: str) -> str:
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'`` (shown as text); others as they
    are."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


OBSERVATION_CLASS_FIELDS = ("count", "verified", "score", "drop_score", "expected", "expected_lo", "expected_hi")


def observation_csv_header(classes: Sequence[str]) -> list[str]:
    """Columns of the observations CSV: identity and who reviewed it, then per class the detector's count, the
    verified count (empty: not verified) and the anomaly fields."""
    cols = ["id", "facility_id", "captured_at", "source", "has_image", "reviewed_by", "reviewed_at"]
    for cls in classes:
        cols += [cls if f == "count" else f"{cls}_{f}" for f in OBSERVATION_CLASS_FIELDS]
    return cols


def observation_csv_row(obs: dict[str, Any], classes: Sequence[str]) -> list[Any]:
    """One observation (its JSON dict) as a CSV row matching :func:`observation_csv_header`."""
    review = obs.get("review") or {}
    row: list[Any] = [obs["id"], obs["facility_id"], obs["captured_at"], obs["source"], obs["has_image"]]
    row += [review.get("reviewer"), review.get("reviewed_at")]
    for cls in classes:
        block = (obs.get("anomaly") or {}).get(cls) or {}
        row.append((obs.get("counts") or {}).get(cls))
        row.append((obs.get("verified_counts") or {}).get(cls))
        row += [block.get(f) for f in OBSERVATION_CLASS_FIELDS[2:]]
    return row


ANOMALY_CSV_FIELDS = (
    "facility_id",
    "facility_name",
    "observation_id",
    "captured_at",
    "source",
    "class",
    "direction",
    "count",
    "threshold",
    "score",
    "drop_score",
    "expected",
    "count_sd",
    "history_size",
    "history_max",
    "exceeds_history_max",
    "history_span_days",
    "highest_in_days",
    "lowest_in_days",
    "reason",
    "model",
)
