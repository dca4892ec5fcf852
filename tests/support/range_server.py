"""A loopback HTTP server for scenes by URL: serves files honouring ``Range``, counts the bytes it sends, and can
misbehave on purpose (redirect, 404, 5xx a few times, stall, drop the connection, ignore ``Range``); ``handlers``
answer a path from code (``GET`` with the query string, or ``POST`` with the body), e.g. a fake STAC API search.

    with RangeServer() as server:
        server.files["/scene.tif"] = path_or_bytes
        url = server.url("/scene.tif")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Behaviour:
    """How the server misbehaves for one path."""

    redirect_to: str | None = None  # answer 302 with this Location
    fail_times: int = 0  # answer 503 this many times first
    stall_s: float = 0.0  # wait this long before answering
    drop_after: int | None = None  # close the connection after sending this many body bytes (once)
    ignore_range: bool = False  # answer 200 with the whole file
    etag: str | None = None


@dataclass
class Stats:
    """What the server sent."""

    bytes_sent: int = 0
    requests: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)


class RangeServer:
    """See the module docstring. ``files`` maps a path to bytes or a file; ``behaviour`` to a :class:`Behaviour`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.files: dict[str, bytes | Path] = {}
        self.behaviour: dict[str, Behaviour] = {}
        #: path -> handler(method, query string, body) -> (status, JSON-serialisable answer)
        self.handlers: dict[str, Callable[[str, str, bytes], tuple[int, Any]]] = {}
        self.stats = Stats()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                server._answer(self, head=True)

            def do_GET(self) -> None:
                server._answer(self, head=False)

            def do_POST(self) -> None:
                server._answer(self, head=False)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str | None = None) -> str:
        """The URL of ``path`` on this server (through ``host``, default the address it listens on)."""
        return f"http://{host or self.host}:{self.port}{path}"

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset_stats(self) -> None:
        """Forget what was sent so far."""
        with self._lock:
            self.stats = Stats()

    def _data(self, path: str) -> bytes | None:
        src = self.files.get(path)
        if src is None:
            return None
        return src if isinstance(src, bytes) else Path(src).read_bytes()

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path, _, query = h.path.partition("?")
        handler = self.handlers.get(path)
        if handler is not None:
            length = int(h.headers.get("Content-Length") or 0)
            body = h.rfile.read(length) if length else b""
            status, answer = handler(h.command, query, body)
            with self._lock:
                self.stats.requests += 1
            self._send(h, status, {"Content-Type": "application/geo+json"}, json.dumps(answer).encode(), False)
            return
        b = self.behaviour.get(path, Behaviour())
        with self._lock:
            self.stats.requests += 1
        if b.stall_s:
            time.sleep(b.stall_s)
        if b.redirect_to is not None:
            self._send(h, 302, {"Location": b.redirect_to}, b"", head)
            return
        if b.fail_times > 0:
            b.fail_times -= 1
            self._send(h, 503, {}, b"busy", head)
            return
        data = self._data(path)
        if data is None:
            self._send(h, 404, {}, b"not found", head)
            return
        headers = {"Accept-Ranges": "bytes", "Content-Type": "image/tiff"}
        if b.etag:
            headers["ETag"] = b.etag
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not b.ignore_range:
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = min(len(data) - 1, int(last) if last else len(data) - 1)
            if start >= len(data):
                self._send(h, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", head)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            with self._lock:
                self.stats.ranges.append((start, end))
            self._send(h, 206, headers, data[start : end + 1], head, b)
            return
        self._send(h, 200, headers, data, head, b)

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        headers: dict[str, str],
        body: bytes,
        head: bool,
        b: Behaviour | None = None,
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if head:
            return
        if b is not None and b.drop_after is not None:
            body = body[: b.drop_after]
            b.drop_after = None
            h.wfile.write(body)
            h.wfile.flush()
            h.close_connection = True
            with self._lock:
                self.stats.bytes_sent += len(body)
            return
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            return
        with self._lock:
            self.stats.bytes_sent += len(body)


@contextmanager
def range_server(files: dict[str, bytes | Path] | None = None) -> Iterator[RangeServer]:
    """A started :class:`RangeServer` serving ``files``."""
    with RangeServer() as server:
        server.files.update(files or {})
        yield server
