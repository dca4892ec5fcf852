"""CPU performance benchmarks: runtime, serving overhead, throughput, memory and the hardware limit.

    python -m bench.perf                 # all five, prints a Markdown table, writes bench/results.md
    python -m bench.perf runtime serving # a subset

Every figure is the median of several runs; ratios are measured in the same run. The machine is shared and noisy:
run it on a quiet machine and read the spread columns.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "models" / "wagon-obb.pt"
ROWS: list[tuple[str, str, str]] = []  # (benchmark, figure, value)


def _row(bench: str, figure: str, value: str) -> None:
    ROWS.append((bench, figure, value))
    print(f"{bench:12s} {figure:58s} {value}", flush=True)


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median, min and max wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times), max(times)


def _chips(n: int, first_seed: int = 9_000_000) -> list:
    from training.synth import generate_chip

    return [generate_chip(first_seed + i) for i in range(n)]


# ------------------------------------------------------------------------------------------------- 1. runtime
def bench_runtime(repeats: int = 15, parity_chips: int = 20) -> None:
    """PyTorch eager vs ONNX Runtime: latency per 640 x 640 chip and detection parity on held-out chips."""
    from app.detector import Detector
    from app.geometry import rotated_iou

    threads = len(os.sched_getaffinity(0))
    torch_det = Detector(WEIGHTS, threads=threads, runtime="torch")
    onnx_det = Detector(WEIGHTS, threads=threads, runtime="onnx")
    chip = _chips(1)[0]
    bgr = [np.ascontiguousarray(chip.image[..., ::-1])]
    med_t, lo_t, hi_t = _median_ms(lambda: torch_det._predict(bgr), repeats)
    med_o, lo_o, hi_o = _median_ms(lambda: onnx_det._predict(bgr), repeats)
    _row("runtime", "PyTorch eager, ms per 640 chip (median; min-max)", f"{med_t:.0f} ({lo_t:.0f}-{hi_t:.0f})")
    _row("runtime", "ONNX Runtime, ms per 640 chip (median; min-max)", f"{med_o:.0f} ({lo_o:.0f}-{hi_o:.0f})")
    _row("runtime", "speed-up of ONNX Runtime over PyTorch (ratio of medians)", f"{med_t / med_o:.2f}x")
    count_diff, matched, total = [], 0, 0
    for c in _chips(parity_chips):
        a = torch_det.detect(c.image, c.gsd_m).detections
        b = onnx_det.detect(c.image, c.gsd_m).detections
        for cls in torch_det.class_names:
            count_diff.append(abs(sum(d.class_name == cls for d in a) - sum(d.class_name == cls for d in b)))
        for d in a:
            q = np.asarray(d.obb)
            total += 1
            matched += any(e.class_name == d.class_name and rotated_iou(q, np.asarray(e.obb)) >= 0.9 for e in b)
    _row("runtime", f"parity on {parity_chips} held-out chips: max |count difference| per class",
         str(max(count_diff)))
    _row("runtime", "parity: PyTorch boxes matched by ONNX (same class, rotated IoU >= 0.9)",
         f"{matched / max(total, 1):.1%} of {total}")


# ------------------------------------------------------------------------------------------------- 2. serving
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Admin key of the benchmark servers (authentication stays on, as in production; `WAGON_ADMIN_KEY`).
BENCH_KEY = "wd_be4c4be4c4be_benchmark-admin-key-local-only"
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}


class Server:
    """A real uvicorn server on loopback, in its own process, on a temporary SQLite database."""

    def __init__(self, workers: int = 1, runtime: str = "auto") -> None:
        self.port = _free_port()
        self.tmp = tempfile.TemporaryDirectory()
        env = {**os.environ, "WAGON_DATABASE_URL": f"sqlite:///{self.tmp.name}/bench.db", "WAGON_RUNTIME": runtime,
               "WAGON_LOG_LEVEL": "WARNING", "WAGON_MAX_CONCURRENT_INFERENCES": "1", "WAGON_ADMIN_KEY": BENCH_KEY}
        env.pop("WAGON_INFERENCE_THREADS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError("server did not start")
        httpx.post(self.url + "/v1/facilities", json={"id": "bench", "name": "bench", "kind": "rail"}, headers=AUTH)

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes, MiB."""
        import psutil

        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.tmp.cleanup()


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _upload(client: object, url: str, data: bytes, k: int, gsd: float | None = None) -> float:
    # each upload is the newest observation (as vendors deliver), so nothing later needs rescoring
    when = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(hours=k)
    form = {"captured_at": when.isoformat().replace("+00:00", "Z")}
    if gsd:
        form["gsd_m"] = str(gsd)
    t0 = time.perf_counter()
    r = client.post(url + "/v1/facilities/bench/images", files={"file": ("chip.png", data, "image/png")},
                    data=form)
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def bench_serving(repeats: int = 15) -> None:
    """One chip through HTTP (multipart, uvicorn on loopback) vs a bare in-process Ultralytics predict."""
    import httpx

    from app.offline import configure_offline

    configure_offline()
    import torch
    from ultralytics import YOLO

    chip = _chips(1)[0]
    data = _png(chip.image)
    bare = YOLO(str(WEIGHTS), task="obb")
    bgr = np.ascontiguousarray(chip.image[..., ::-1])
    threads = len(os.sched_getaffinity(0))

    def predict() -> None:
        bare.predict(bgr, imgsz=640, device="cpu", verbose=False)
        torch.set_num_threads(threads)

    predict()
    bare_ms, _, _ = _median_ms(predict, repeats)
    _row("serving", "bare in-process Ultralytics predict (PyTorch), ms", f"{bare_ms:.0f}")
    for runtime in ("torch", "onnx"):
        server = Server(workers=1, runtime=runtime)
        try:
            with httpx.Client(timeout=120, headers=AUTH) as client:
                _upload(client, server.url, data, 0)
                times = [_upload(client, server.url, data, k) for k in range(1, repeats + 1)]
        finally:
            server.stop()
        med = statistics.median(times)
        _row("serving", f"HTTP upload end to end, service runtime {runtime}, ms", f"{med:.0f}")
        _row("serving", f"ratio end-to-end ({runtime}) / bare predict (target <= 1.15)", f"{med / bare_ms:.2f}")


# ------------------------------------------------------------------------------------------------- 3. throughput
def bench_throughput(scene_px: int = 4096, gsd: float = 0.5, requests: int = 24, clients: int = 4) -> None:
    """Area per second on a large scene through the tiled path; requests/s with concurrent clients, 1 and 2 workers."""
    import httpx

    from app.detector import Detector

    det = Detector(WEIGHTS, threads=len(os.sched_getaffinity(0)), runtime="auto")
    chips = _chips(16)
    rows = [np.hstack([c.image for c in chips[r * 4:(r + 1) * 4]]) for r in range(4)]
    scene = np.vstack(rows)
    scene = np.tile(scene, (scene_px // scene.shape[0] + 1, scene_px // scene.shape[1] + 1, 1))[:scene_px, :scene_px]
    med, lo, hi = _median_ms(lambda: det.detect(scene, gsd), 3)
    km2 = (scene_px * gsd) ** 2 / 1e6
    _row("throughput", f"tiled scene {scene_px}x{scene_px} px at {gsd} m/px ({km2:.2f} km2), s (median of 3)",
         f"{med / 1000:.2f}")
    _row("throughput", "area per second, km2/s (target >= 0.5)", f"{km2 / (med / 1000):.2f}")
    data = _png(chips[0].image)
    for workers in (1, 2):
        server = Server(workers=workers, runtime="auto")
        try:
            with httpx.Client(timeout=300, headers=AUTH) as warm:
                for k in range(2 * workers):
                    _upload(warm, server.url, data, k)

            def one(k: int) -> float:
                with httpx.Client(timeout=300, headers=AUTH) as client:
                    return _upload(client, server.url, data, k)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                lat = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - t0
        finally:
            server.stop()
        _row("throughput", f"{workers} worker(s), {clients} clients: requests/s", f"{requests / wall:.2f}")
        _row("throughput", f"{workers} worker(s), {clients} clients: p50 / p99 latency, ms",
             f"{np.percentile(lat, 50):.0f} / {np.percentile(lat, 99):.0f}")


# ------------------------------------------------------------------------------------------------- 4. memory
def bench_memory(uploads: int = 1000) -> None:
    """RSS of a server process after start-up and after many uploads."""
    import httpx

    chip = _chips(1)[0]
    data = _png(chip.image[:320, :320])  # a small chip keeps 1,000 uploads affordable on 2 cores
    server = Server(workers=1, runtime="auto")
    try:
        start = server.rss_mb()
        with httpx.Client(timeout=120, headers=AUTH) as client:
            for k in range(20):
                _upload(client, server.url, data, k)
            warm = server.rss_mb()
            for k in range(uploads):
                _upload(client, server.url, data, 100 + k)
        end = server.rss_mb()
    finally:
        server.stop()
    _row("memory", "server RSS after start-up, MiB", f"{start:.0f}")
    _row("memory", "server RSS after 20 warm-up uploads, MiB", f"{warm:.0f}")
    _row("memory", f"server RSS after {uploads} more uploads, MiB", f"{end:.0f}")
    _row("memory", f"growth over {uploads} uploads (after warm-up), MiB (target < 50)", f"{end - warm:.1f}")


# ------------------------------------------------------------------------------------------------- 5. the limit
def bench_limit(repeats: int = 5) -> None:
    """Model FLOPs per chip and this CPU's float32 matrix-product FLOP/s: the share the detector achieves."""
    import torch

    from app.detector import Detector
    from app.offline import configure_offline

    configure_offline()
    from ultralytics.utils.torch_utils import get_flops

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    med, _, _ = _median_ms(lambda: a @ b, repeats)
    peak = 2 * n**3 / (med / 1000)
    _row("limit", f"float32 {n}x{n} matrix product, GFLOP/s ({threads} threads)", f"{peak / 1e9:.0f}")
    det = Detector(WEIGHTS, threads=threads, runtime="auto")
    gflops = get_flops(det._model.model if det.runtime == "torch" else Detector(WEIGHTS, runtime="torch")._model.model,
                       640)
    chip = [np.ascontiguousarray(_chips(1)[0].image[..., ::-1])]
    ms, _, _ = _median_ms(lambda: det._predict(chip), 10)
    achieved = gflops * 1e9 / (ms / 1000)
    _row("limit", "model GFLOPs per 640 chip", f"{gflops:.1f}")
    _row("limit", f"achieved by the default runtime ({det.runtime}), GFLOP/s", f"{achieved / 1e9:.0f}")
    _row("limit", "achieved share of the matrix-product FLOP/s", f"{achieved / peak:.0%}")


BENCHES = {"runtime": bench_runtime, "serving": bench_serving, "throughput": bench_throughput,
           "memory": bench_memory, "limit": bench_limit}


def main(argv: list[str] | None = None) -> None:
    """Run the chosen benchmarks (default all), print the table and write it to bench/results.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    a = ap.parse_args(argv)
    unknown = set(a.which) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in a.which or BENCHES:
        BENCHES[name]()
    lines = ["| benchmark | figure | value |", "|---|---|---|", *(f"| {b} | {f} | {v} |" for b, f, v in ROWS)]
    import platform

    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.processor() or 'x86_64'}, "
              f"{len(os.sched_getaffinity(0))} cores (`python -m bench.perf {' '.join(a.which)}`)\n\n")
    a.out.write_text(header + "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
