"""ASGI middleware for request limits: body size (413 before the body is spooled) and request time (504)."""

from __future__ import annotations

import json
import logging
import math

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.observability import mark_error

log = logging.getLogger("app.api")

_TIMER_KEY = "wagon.timeout_scope"


class BodySizeLimitMiddleware:
    """Refuse bodies larger than ``max_bytes``: at once from ``Content-Length``, else while streaming.

    A streamed body is counted chunk by chunk; at the first chunk over the limit the 413 is sent, the app is told
    the client disconnected (so it stops reading), and whatever the app still tries to send is dropped.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            mark_error(scope, "body_too_large")
            await send_json_error(send, 413, self._message(declared), close=True)
            return
        seen = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    mark_error(scope, "body_too_large")
                    if not started:
                        await send_json_error(send, 413, self._message(seen), close=True)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out already
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # the app failed on the "disconnect" it was handed after the 413: expected, nothing to report

    def _message(self, size: int) -> str:
        return (
            f"request body of {size / 1048576:.1f} MiB or more exceeds the upload limit of "
            f"{self.max_bytes / 1048576:.1f} MiB (WAGON_MAX_UPLOAD_MB)"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def send_json_error(
    send: Send, status: int, detail: str, *, close: bool = False, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a whole ``{"detail": ...}`` JSON answer."""
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class RequestTimeoutMiddleware:
    """Answer 504 when a request takes longer than ``timeout_s`` (body upload included).

    The request's task is cancelled; work it handed to a worker thread cannot be stopped and finishes on its own
    (the inference gate keeps that thread's slot until then). A response already started is left to end as it
    can (the connection is cut)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with anyio.move_on_after(self.timeout_s) as scope_timer:
            scope[_TIMER_KEY] = scope_timer
            await self.app(scope, receive, tracking_send)
        if scope_timer.cancelled_caught:
            mark_error(scope, "timeout")
            log.warning("request %s %s exceeded %.1f s", scope.get("method"), scope.get("path"), self.timeout_s)
            if not started:
                await send_json_error(
                    send,
                    504,
                    f"the request took longer than {self.timeout_s:g} s (WAGON_REQUEST_TIMEOUT_S) and was abandoned",
                )


def disarm_timeout(scope: Scope) -> None:
    """Let the request finish whatever it takes: call right before storing, so that a request answered 504 has
    stored nothing and one that stores is answered with what it stored."""
    timer = scope.get(_TIMER_KEY)
    if timer is not None:
        timer.deadline = math.inf
