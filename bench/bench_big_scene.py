"""Benchmark a big scene: write a SIZE x SIZE 3-band GeoTIFF (synthetic rail yards tiled over UTM ground) and run
the service's scene pipeline over it window by window, as an upload would, in a fresh child process.

    python bench/bench_big_scene.py                      # 20,000 x 20,000 px at /tmp/wagon-bench-20000.tif
    python bench/bench_big_scene.py --size 4000 --keep   # smaller; --keep reuses an existing file

Reports wall time, megapixels per second and the child's peak RSS (``ru_maxrss``: model, GDAL cache and windows
together) as JSON on stdout. The child reads through ``app.detection.raster.open_scene`` and
``app.detection.pipeline.detect_scene`` with the configured model (``WAGON_MODEL_PATH``, ``WAGON_RUNTIME``,
``WAGON_INFERENCE_THREADS``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_scene(path: Path, size: int, seeds: int = 6) -> dict[str, object]:
    """Write the scene block row by block row (never whole in memory); return what it holds."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from training.synth import generate_chip

    chips = [generate_chip(9_000_000 + i) for i in range(seeds)]
    gsd = float(chips[0].gsd_m)
    chip_px = chips[0].image.shape[0]
    band_rows = chip_px * 2
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32652",
        transform=from_origin(620_000.0, 4_700_000.0, gsd, gsd),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        photometric="RGB",
        BIGTIFF="YES",
    )
    t0 = time.perf_counter()
    true_railcars = 0
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, band_rows):
            h = min(band_rows, size - r0)
            strip = np.empty((h, size, 3), np.uint8)
            for cy in range(0, h, chip_px):
                for cx in range(0, size, chip_px):
                    k = ((r0 + cy) // chip_px * 7 + cx // chip_px) % len(chips)
                    part = chips[k].image[: min(chip_px, h - cy), : min(chip_px, size - cx)]
                    strip[cy : cy + part.shape[0], cx : cx + part.shape[1]] = part
                    if part.shape[:2] == (chip_px, chip_px):
                        true_railcars += chips[k].counts()["railcar"]
            dst.write(np.moveaxis(strip, 2, 0), window=Window(0, r0, size, h))
    return {
        "path": str(path),
        "size": size,
        "gsd_m": gsd,
        "write_s": round(time.perf_counter() - t0, 1),
        "railcars_in_whole_chips": true_railcars,
        "file_mb": round(path.stat().st_size / 2**20),
    }


def detect(path: Path, progress: bool) -> dict[str, object]:
    """Run the pipeline on the scene (in this process); report timing and counts."""
    from app.core.settings import get_settings
    from app.detection.pipeline import detect_scene
    from app.detection.raster import open_scene
    from app.usecases.images import load_configured_detector

    settings = get_settings()
    t_load = time.perf_counter()
    detector = load_configured_detector(settings)
    load_s = time.perf_counter() - t_load
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def bar(done: int, total: int) -> None:
        if progress:
            print(f"\r  windows {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with open_scene(path, max_scene_pixels=settings.max_scene_pixels, gdal_cache_mb=settings.gdal_cache_mb) as scene:
        out = detect_scene(detector, scene, progress=bar)
        width, height = scene.width, scene.height
    wall = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for d in out.detections:
        counts[d.class_name] = counts.get(d.class_name, 0) + 1
    return {
        "width": width,
        "height": height,
        "windows": out.windows,
        "gsd_m": out.gsd_m,
        "runtime": getattr(detector, "runtime", None),
        "model_load_s": round(load_s, 1),
        "wall_s": round(wall, 1),
        "megapixels_per_s": round(width * height / 1e6 / wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_after_model_load_mb": round(rss_after_load),
        "counts": counts,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20_000, help="scene side in pixels (default 20000)")
    parser.add_argument("--path", type=Path, default=None, help="GeoTIFF to write (default /tmp/wagon-bench-SIZE.tif)")
    parser.add_argument("--keep", action="store_true", help="reuse the file if it exists; keep it afterwards")
    parser.add_argument("--detect-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--progress", action="store_true", help="print window progress to stderr")
    args = parser.parse_args(argv)
    path = args.path or Path(f"/tmp/wagon-bench-{args.size}.tif")
    if args.detect_only:
        print(json.dumps(detect(path, args.progress)))
        return 0
    scene = {"path": str(path), "size": args.size, "reused": True}
    if not (args.keep and path.exists()):
        scene = write_scene(path, args.size)
    cmd = [sys.executable, __file__, "--detect-only", "--path", str(path)] + (["--progress"] if args.progress else [])
    child = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    result = {"scene": scene, "detect": json.loads(child.stdout.strip().splitlines()[-1])}
    print(json.dumps(result, indent=2))
    if not args.keep:
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
