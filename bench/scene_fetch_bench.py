"""Scenes by URL: bytes transferred and wall time of ``POST /v1/scenes`` against an upload of the same file.

    .venv/bin/python -m bench.scene_fetch_bench            # 12,000 x 12,000 px at 0.5 m, 5 runs
    .venv/bin/python -m bench.scene_fetch_bench --quick    # 4,096 px, 3 runs

Makes a tiled, JPEG-compressed GeoTIFF with overviews (a COG's content) with two facilities' footprints inside
and one outside, serves it from a loopback HTTP server that honours ``Range`` and counts the bytes it sends, and
submits it through the API (in-process ``TestClient``, the embedded job worker, the exact blob detector of the
tests rather than the model, so that the figure is the reading, not the inference): by URL (``{"href": ...}``) and
as a multipart upload to ``POST /v1/scenes``. Prints medians of several runs: bytes sent vs the file's size and
the footprint windows' share of the scene, and wall time (submission to the job's end) of each way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.geodata import BlobDetector
from tests.support.range_server import RangeServer
from tests.support.scenes import footprint, make_cog

WHEN = "2023-10-15T02:30:00Z"
MARGIN_PX = 100


def _wait(client: Any, url: str) -> dict[str, Any]:
    while True:
        job = client.get(url).json()
        if job["status"] in ("done", "failed"):
            if job["status"] == "failed":
                raise SystemExit(f"job failed: {job['error']}")
            return job
        time.sleep(0.02)


def _run(size: int, runs: int) -> None:
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.core.settings import Settings

    s = size / 12_000
    boxes = {
        "a": (2000 * s, 3000 * s, 2800 * s, 3500 * s),
        "b": (8000 * s, 7000 * s, 8900 * s, 7600 * s),
        "c": (size + 8000.0, size + 8000.0, size + 8600.0, size + 8400.0),
    }
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        t0 = time.perf_counter()
        scene = make_cog(tmp / "scene.tif", size, 0.5, centres=((2100 * s, 3100 * s), (8100 * s, 7100 * s)))
        file_size = scene.path.stat().st_size
        print(f"scene: {size} x {size} px, {file_size / 1e6:.1f} MB, made in {time.perf_counter() - t0:.1f} s")
        windows = sum(
            (b[2] - b[0] + 2 * MARGIN_PX) * (b[3] - b[1] + 2 * MARGIN_PX) for k, b in boxes.items() if k != "c"
        )
        print(f"footprint windows (with the 50 m margin): {windows / size**2:.2%} of the scene's pixels")
        by_url: list[float] = []
        by_upload: list[float] = []
        sent: list[int] = []
        with RangeServer() as server:
            server.files["/scene.tif"] = scene.path
            for run in range(runs):
                settings = Settings(
                    database_url=f"sqlite:///{tmp / f'db{run}' / 'wagon.db'}",
                    load_model=False,
                    auth=False,
                    archive_dir=tmp / f"originals{run}",
                    jobs_sqlite_path=tmp / f"db{run}" / "jobs.db",
                    fetch_allowed_hosts=["127.0.0.1"],
                    max_upload_mb=2048,
                )
                with TestClient(create_app(settings, detector=BlobDetector())) as client:
                    for fid, box in boxes.items():
                        client.post(
                            "/v1/facilities",
                            json={"id": fid, "name": fid, "kind": "rail", "footprint": footprint(scene, box)},
                        )
                    server.reset_stats()
                    t = time.perf_counter()
                    r = client.post("/v1/scenes", json={"href": server.url("/scene.tif"), "captured_at": WHEN})
                    job = _wait(client, r.json()["status_url"])
                    by_url.append(time.perf_counter() - t)
                    sent.append(server.stats.bytes_sent)
                    assert len(job["result"]["observations"]) == 2, job["result"]
                    t = time.perf_counter()
                    with scene.path.open("rb") as f:
                        r = client.post(
                            "/v1/scenes",
                            files={"file": ("scene.tif", f)},
                            data={"captured_at": "2023-10-16T02:30:00Z"},
                        )
                    _wait(client, r.json()["status_url"])
                    by_upload.append(time.perf_counter() - t)
        median_sent = statistics.median(sent)
        print(f"runs: {runs}")
        print(f"bytes sent by URL: median {median_sent / 1e6:.2f} MB = {median_sent / file_size:.2%} of the file")
        url_runs = ", ".join(f"{v:.2f}" for v in by_url)
        print(f"wall time by URL:    median {statistics.median(by_url):.2f} s  (runs {url_runs})")
        print(
            f"wall time by upload: median {statistics.median(by_upload):.2f} s  "
            f"(runs {', '.join(f'{v:.2f}' for v in by_upload)})"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (``--quick``: a 4,096 px scene, 3 runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4,096 px scene and 3 runs")
    parser.add_argument("--size", type=int, default=None, help="scene side, pixels (default 12,000)")
    parser.add_argument("--runs", type=int, default=None, help="runs (default 5)")
    args = parser.parse_args(argv)
    size = args.size or (4096 if args.quick else 12_000)
    _run(size, args.runs or (3 if args.quick else 5))


if __name__ == "__main__":
    main()
