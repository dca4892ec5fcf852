"""The API in a process of its own (uvicorn on loopback), with the blob test double as its detector.

``python tests/support/procserver.py PORT`` serves ``create_app(Settings())`` (settings from the ``WAGON_*``
environment)
with :class:`geodata.BlobDetector` injected, so that tests of several processes, and of killing one, need no model.
:class:`ServerProcess` starts, waits for and kills such a process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import TESTS_DIR

ROOT = TESTS_DIR.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process on ``127.0.0.1:port`` with the given ``WAGON_*`` settings."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "WAGON_LOAD_MODEL": "false",
            "WAGON_LOG_LEVEL": "WARNING",
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        """Start the process and wait until ``/healthz`` answers 200."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s} s: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing; what was not committed is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM), then kill if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def main(argv: list[str]) -> int:
    import uvicorn

    from app.api.main import create_app
    from app.core.settings import Settings
    from tests.support.geodata import BlobDetector

    uvicorn.run(
        create_app(Settings(), detector=BlobDetector()), host="127.0.0.1", port=int(argv[1]), log_level="warning"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
