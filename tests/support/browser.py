"""What the dashboard's browser tests share: Debian's Chromium and its flags, where screenshots go, a real uvicorn
server on loopback in a thread, and multipart bodies for plain ``urllib`` requests."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import PROJECT_ROOT

CHROMIUM = os.environ.get("WAGON_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("WAGON_TEST_ARTIFACTS", PROJECT_ROOT / "build" / "test-artifacts"))


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(fields: dict[str, str], file: bytes, boundary: str = "wagonboundary7d1f") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``fields`` and a PNG ``file`` part, and its content type."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="chip.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + file
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL once it answers."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:  # pragma: no cover
        raise RuntimeError("server did not start")
    try:
        yield base
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
