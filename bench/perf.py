"""CPU performance benchmarks: runtime, test-time augmentation, serving overhead, throughput, memory, hardware limit.

    python -m bench.perf                        # all six, prints a Markdown table, writes docs/performance.md
    python -m bench.perf --only runtime,serving # a quick subset (also: python -m bench.perf runtime serving)

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
from datetime import UTC, datetime, timedelta
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "models" / "wagon-obb.pt"
ROWS: list[tuple[str, str, str]] = []  # (benchmark, figure, value)


def _row(bench: str, figure: str, value: str) -> None:
    ROWS.append((bench, figure, value))
    print(f"{bench:12s} {figure:58s} {value}", flush=True)


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median, min and max wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times), max(times)


def synthetic_chips(n: int, first_seed: int = 9_000_000) -> list:
    """``n`` held-out synthetic chips (seeds from ``first_seed``)."""
    from training.synth import generate_chip

    return [generate_chip(first_seed + i) for i in range(n)]


# ------------------------------------------------------------------------------------------------- 1. runtime
RUNTIME_LABELS = {
    "torch": "PyTorch eager",
    "onnx": "ONNX Runtime",
    "openvino": "OpenVINO f32",
    "openvino-bf16": "OpenVINO bf16",
}


#: (runtime, precision, test-time augmentation): the runtimes are compared on one network pass per chip
_RUNTIME_SPECS = {
    "torch": ("torch", "f32", False),
    "onnx": ("onnx", "f32", False),
    "openvino": ("openvino", "f32", False),
    "openvino-bf16": ("openvino", "bf16", False),
}


def _runtime_detectors(threads: int) -> dict[str, object]:
    from app.detection.detector import Detector

    return {
        k: Detector(WEIGHTS, threads=threads, runtime=runtime, openvino_precision=precision, tta=tta)
        for k, (runtime, precision, tta) in _RUNTIME_SPECS.items()
    }


def _runtime_timer(conn: Connection, runtime: str, precision: str, threads: int, tta: bool = False) -> None:
    """Child process: load one runtime, then time blocks of chips on request (``conn.recv()`` gives the block
    size; 0 ends), sending back the times in ms. Idle between blocks, as a service runs a single runtime."""
    from app.detection.detector import Detector

    det = Detector(WEIGHTS, threads=threads, runtime=runtime, openvino_precision=precision, tta=tta)
    bgr = [np.ascontiguousarray(synthetic_chips(1)[0].image[..., ::-1])]
    det._predict(bgr)
    conn.send("ready")
    while n := conn.recv():
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            det._predict(bgr)
            times.append((time.perf_counter() - t0) * 1000)
        conn.send(times)


def _timed_in_processes(specs: dict[str, tuple[str, str, bool]], rounds: int, block: int) -> dict[str, list[float]]:
    """Per spec, ms per chip: each spec in its own process, taking turns a block of chips at a time (the first
    chip of each block not counted)."""
    import multiprocessing as mp

    threads = len(os.sched_getaffinity(0))
    spawn = mp.get_context("spawn")
    timers = {}
    for k, spec in specs.items():
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=_runtime_timer, args=(child, spec[0], spec[1], threads, spec[2]), daemon=True)
        proc.start()
        if parent.recv() != "ready":
            raise RuntimeError(f"runtime timer {k} did not start")
        timers[k] = (proc, parent)
    times: dict[str, list[float]] = {k: [] for k in timers}
    try:
        for _ in range(rounds):
            for k, (_, conn) in timers.items():
                conn.send(block)
                times[k].extend(conn.recv()[1:])
    finally:
        for proc, conn in timers.values():
            conn.send(0)
            proc.join(30)
    return times


def bench_runtime(rounds: int = 6, block: int = 8, parity_chips: int = 20, accuracy_chips: int = 40) -> None:
    """PyTorch eager vs ONNX Runtime vs OpenVINO: latency per 640 x 640 chip (network, decoding and NMS), detection
    parity with PyTorch on held-out chips, and each runtime's accuracy (mAP50, count error) against the labels of
    held-out synthetic chips.

    Each runtime is timed in its own process, as a service runs it (one runtime per process): hosted together,
    one runtime's thread pool slowed the next one (OpenVINO f32 33.7 ms per chip beside PyTorch, 32.2 alone).
    The processes take turns, a block of ``block`` consecutive chips each for ``rounds`` rounds, so load drifts
    affect all alike; the first chip of each block is not counted.
    """
    from app.detection.runtimes import Parity
    from training.evaluate import evaluate_synthetic

    threads = len(os.sched_getaffinity(0))
    times = _timed_in_processes(_RUNTIME_SPECS, rounds, block)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        _row(
            "runtime",
            f"{RUNTIME_LABELS[k]}, ms per 640 chip, own process (median; min-max)",
            f"{med[k]:.1f} ({min(v):.1f}-{max(v):.1f})",
        )
    for k in times:
        if k != "torch":
            _row(
                "runtime",
                f"speed-up of {RUNTIME_LABELS[k]} over PyTorch eager, ratio of medians (of minima; target >= 1.5)",
                f"{med['torch'] / med[k]:.2f}x ({min(times['torch']) / min(times[k]):.2f}x)",
            )
    dets = _runtime_detectors(threads)
    chips = synthetic_chips(parity_chips)
    names = dets["torch"].class_names
    reference = [dets["torch"].detect(c.image, c.gsd_m).detections for c in chips]
    for k, det in dets.items():
        if k == "torch":
            continue
        parity = Parity(iou=0.9, conf_tol=0.02)
        for c, ref in zip(chips, reference, strict=True):
            parity.add(ref, det.detect(c.image, c.gsd_m).detections, names)
        _row(
            "runtime",
            f"parity {RUNTIME_LABELS[k]} vs PyTorch, {parity_chips} held-out chips: (chip, class) pairs "
            "with equal counts; max difference",
            f"{parity.count_share:.1%}; {parity.max_count_diff}",
        )
        _row(
            "runtime",
            f"parity {RUNTIME_LABELS[k]}: boxes matched (same class, rotated IoU >= 0.9, |conf diff| "
            "<= 0.02); max |conf diff|",
            f"{parity.match_share:.1%} of {parity.reference}; {parity.max_conf_diff:.2g}",
        )
        _row("runtime", f"parity {RUNTIME_LABELS[k]} holds (both shares >= 99%)", "yes" if parity.holds() else "NO")
    for k, det in dets.items():
        acc = evaluate_synthetic(det, accuracy_chips)
        cells = [
            f"{c} mAP50 {v['map50']:.3f}, count error {100 * v['count_err_over_true']:.1f}%"
            for c, v in acc["classes"].items()
        ]
        _row(
            "runtime",
            f"accuracy {RUNTIME_LABELS[k]} against the labels of {accuracy_chips} held-out synthetic chips "
            f"(seeds {acc['seeds'][0]}+)",
            "; ".join(cells),
        )
    from app.detection.detector import resolve_runtime

    _row("runtime", "service default (WAGON_RUNTIME=auto) resolves to", resolve_runtime(WEIGHTS, "auto")[0])


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

    def __init__(self, workers: int = 1, runtime: str = "auto", tta: str = "auto", estimate_gsd: str = "false") -> None:
        self.port = _free_port()
        self.tmp = tempfile.TemporaryDirectory()
        env = {
            **os.environ,
            "WAGON_DATABASE_URL": f"sqlite:///{self.tmp.name}/bench.db",
            "WAGON_RUNTIME": runtime,
            "WAGON_TTA": tta,
            "WAGON_ESTIMATE_GSD": estimate_gsd,
            "WAGON_LOG_LEVEL": "WARNING",
            "WAGON_MAX_CONCURRENT_INFERENCES": "1",
            "WAGON_ADMIN_KEY": BENCH_KEY,
        }
        env.pop("WAGON_INFERENCE_THREADS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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

    def cpu_s_by_process(self) -> dict[int, float]:
        """CPU seconds (user + system) used so far by the server and each of its worker processes, by pid."""
        import psutil

        p = psutil.Process(self.proc.pid)
        return {q.pid: sum(q.cpu_times()[:2]) for q in [p, *p.children(recursive=True)]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.tmp.cleanup()


def _own_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process (the benchmark's clients)."""
    t = os.times()
    return t.user + t.system


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB array encoded as PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _upload(client: object, url: str, data: bytes, k: int, gsd: float | None = None, facility: str = "bench") -> float:
    # each upload is the newest observation (as vendors deliver), so nothing later needs rescoring
    when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=k)
    form = {"captured_at": when.isoformat().replace("+00:00", "Z")}
    if gsd:
        form["gsd_m"] = str(gsd)
    t0 = time.perf_counter()
    r = client.post(
        url + f"/v1/facilities/{facility}/images", files={"file": ("chip.png", data, "image/png")}, data=form
    )
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def bench_serving(repeats: int = 20) -> None:
    """One chip through HTTP (multipart, uvicorn on loopback) vs (a) a bare in-process Ultralytics predict of the
    .pt weights (the speed target's yardstick) and (b) a bare in-process detect through the service's own runtime (the
    serving overhead alone). Bare runs are interleaved with the HTTP uploads so load affects both alike. The server
    runs its default configuration (the model's sidecar decides test-time augmentation; the GSD estimate is on), and
    each upload gives its GSD as the working GSD (a chip already at the detector's scale, so that it is run as one
    640 px tile, as the Ultralytics predict runs it); what test-time augmentation adds is measured by
    :func:`bench_tta`."""
    import httpx

    from app.core.offline import configure_offline
    from app.detection.detector import Detector, resolve_runtime

    configure_offline()
    import torch
    from ultralytics import YOLO

    chip = synthetic_chips(1)[0]
    data = png_bytes(chip.image)
    bare = YOLO(str(WEIGHTS), task="obb")
    bgr = np.ascontiguousarray(chip.image[..., ::-1])
    threads = len(os.sched_getaffinity(0))

    def predict() -> None:
        bare.predict(bgr, imgsz=640, device="cpu", verbose=False)
        torch.set_num_threads(threads)

    png_file = tempfile.NamedTemporaryFile(suffix=".png")  # the uploaded bytes, for Ultralytics to read and decode
    png_file.write(data)
    png_file.flush()

    def predict_file() -> None:
        bare.predict(png_file.name, imgsz=640, device="cpu", verbose=False)
        torch.set_num_threads(threads)

    predict()
    predict_file()
    for runtime in ("auto", "torch"):
        resolved = resolve_runtime(WEIGHTS, runtime)[0]
        det = Detector(WEIGHTS, threads=threads, runtime=resolved)
        gsd = det.info.working_gsd_m
        server = Server(workers=1, runtime=runtime, estimate_gsd="true")
        ultra, ultra_file, same, http = [], [], [], []
        try:
            with httpx.Client(timeout=120, headers=AUTH) as client:
                _upload(client, server.url, data, 0, gsd)
                for k in range(1, repeats + 1):
                    http.append(_upload(client, server.url, data, k, gsd))
                    ultra.append(median_ms(predict, 1)[0])
                    ultra_file.append(median_ms(predict_file, 1)[0])
                    same.append(median_ms(partial(det.detect, chip.image, gsd), 1)[0])
        finally:
            server.stop()
        h, u, b = statistics.median(http), statistics.median(ultra), statistics.median(same)
        uf = statistics.median(ultra_file)
        label = f"{runtime} = {resolved}" if runtime == "auto" else resolved
        _row(
            "serving",
            f"HTTP upload end to end (GSD given), service runtime {label}, default TTA {det.tta}, ms",
            f"{h:.1f}",
        )
        _row(
            "serving",
            "  (a) bare in-process Ultralytics predict of the .pt (PyTorch) on the decoded image, ms",
            f"{u:.1f}",
        )
        _row(
            "serving",
            "  (a) ratio end-to-end / bare Ultralytics predict on the decoded image (target <= 1.2)",
            f"{h / u:.2f}",
        )
        _row(
            "serving",
            "  (a') bare Ultralytics predict of the same PNG file (it reads and decodes it, as the service must), ms",
            f"{uf:.1f}",
        )
        _row(
            "serving",
            "  (a') ratio end-to-end / bare Ultralytics predict of the PNG file (target <= 1.2)",
            f"{h / uf:.2f}",
        )
        _row("serving", f"  (b) bare in-process detect through {resolved}, ms", f"{b:.1f}")
        _row("serving", f"  (b) ratio end-to-end / bare {resolved} detect (serving overhead)", f"{h / b:.2f}")


# ------------------------------------------------------------------------------------------------- 3. throughput
def _scene(chips: list, scene_px: int) -> np.ndarray:
    """A square scene of ``scene_px`` pixels tiled from 16 chips (4 x 4, repeated)."""
    rows = [np.hstack([c.image for c in chips[r * 4 : (r + 1) * 4]]) for r in range(4)]
    scene = np.vstack(rows)
    return np.tile(scene, (scene_px // scene.shape[0] + 1, scene_px // scene.shape[1] + 1, 1))[:scene_px, :scene_px]


def bench_throughput(scene_px: int = 4096, gsd: float = 0.5, requests: int = 60, clients: int = 4) -> None:
    """Area per second on a large scene through the tiled path; requests/s with concurrent clients, 1 and 2 workers."""
    from app.detection.detector import Detector

    det = Detector(WEIGHTS, threads=len(os.sched_getaffinity(0)), runtime="auto")
    chips = synthetic_chips(16)
    scene = _scene(chips, scene_px)
    med, lo, hi = median_ms(lambda: det.detect(scene, gsd), 3)
    km2 = (scene_px * gsd) ** 2 / 1e6
    _row(
        "throughput",
        f"tiled scene {scene_px}x{scene_px} px at {gsd} m/px ({km2:.2f} km2), s (median of 3)",
        f"{med / 1000:.2f}",
    )
    _row("throughput", "area per second, km2/s (target >= 0.5)", f"{km2 / (med / 1000):.2f}")
    data = png_bytes(chips[0].image)
    # a vendor's burst covers several facilities (one per client here); the same facility from every client also
    # serialises on that facility's history (each upload rescores it) and is shown for comparison. Clients either
    # keep one connection open (HTTP keep-alive, as client libraries do; uvicorn then serves all of a connection's
    # requests in the worker that accepted it) or open a new one per request (the kernel hands each to a worker).
    spreads = (
        ("one facility per client", [f"site{c}" for c in range(clients)]),
        ("all clients, one facility", ["bench"]),
    )  # "bench": the facility every Server starts with
    for spread, facilities in spreads:
        for keep_alive in (True, False):
            for workers in (1, 2):
                _throughput_run(data, spread, facilities, keep_alive, workers, requests, clients)


def _throughput_run(
    data: bytes, spread: str, facilities: list[str], keep_alive: bool, workers: int, requests: int, clients: int
) -> None:
    """One throughput measurement: ``requests`` uploads from ``clients`` concurrent clients to a fresh server."""
    import ssl
    import threading

    import httpx

    server = Server(workers=workers, runtime="auto")
    local = threading.local()
    # one TLS context for all clients: httpx builds (and loads certificates into) one per Client otherwise, 18
    # CPU-ms on the cores the server needs, although these connections are plain HTTP
    tls = ssl.create_default_context()
    opened: list = []
    try:
        with httpx.Client(timeout=300, headers=AUTH) as warm:
            for f in facilities:
                if f != "bench":
                    warm.post(server.url + "/v1/facilities", json={"id": f, "name": f, "kind": "rail"})
            for k in range(2 * workers):
                _upload(warm, server.url, data, k, facility=facilities[k % len(facilities)])

        def one(k: int) -> float:
            facility = facilities[k % len(facilities)]
            if keep_alive:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(timeout=300, headers=AUTH, verify=tls)
                    opened.append(local.client)
                return _upload(local.client, server.url, data, 100 + k, facility=facility)
            with httpx.Client(timeout=300, headers=AUTH, verify=tls) as client:
                return _upload(client, server.url, data, 100 + k, facility=facility)

        cpu0 = server.cpu_s_by_process()
        client_cpu0 = _own_cpu_s()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            lat = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
        client_cpu = _own_cpu_s() - client_cpu0
        per_proc = {pid: cpu - cpu0.get(pid, 0.0) for pid, cpu in server.cpu_s_by_process().items()}
    finally:
        for client in opened:
            client.close()
        server.stop()
    server_cpu = sum(per_proc.values())
    label = (
        f"{workers} worker(s), {clients} clients, {spread}, "
        f"{'keep-alive' if keep_alive else 'new connection per request'}"
    )
    _row("throughput", f"{label}: requests/s", f"{requests / wall:.2f}")
    _row(
        "throughput", f"{label}: p50 / p99 latency, ms", f"{np.percentile(lat, 50):.0f} / {np.percentile(lat, 99):.0f}"
    )
    # the clients run on the same cores: where the CPU went, and how much of the machine was busy
    busy = sorted((v for v in per_proc.values() if v > 0.01 * server_cpu), reverse=True)
    split = " + ".join(f"{1000 * v / requests:.0f}" for v in busy)
    _row(
        "throughput",
        f"{label}: CPU ms per request, server (by process) / benchmark client; cores busy (of {os.cpu_count()})",
        f"{split} / {1000 * client_cpu / requests:.0f}; {(server_cpu + client_cpu) / wall:.2f}",
    )


# ------------------------------------------------------------------------------------------------- 4. memory
def bench_memory(uploads: int = 1000) -> None:
    """RSS of a server process after start-up and after many uploads."""
    import httpx

    chip = synthetic_chips(1)[0]
    data = png_bytes(chip.image[:320, :320])  # a small chip keeps 1,000 uploads affordable on 2 cores
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

    from app.core.offline import configure_offline
    from app.detection.detector import Detector

    configure_offline()
    from ultralytics.utils.torch_utils import get_flops

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    med, _, _ = median_ms(lambda: a @ b, repeats)
    peak = 2 * n**3 / (med / 1000)
    _row("limit", f"float32 {n}x{n} matrix product, GFLOP/s ({threads} threads)", f"{peak / 1e9:.0f}")
    det = Detector(WEIGHTS, threads=threads, runtime="auto")
    torch_det = det if det.runtime == "torch" else Detector(WEIGHTS, threads=threads, runtime="torch")
    gflops = get_flops(torch_det._engine.model, 640)
    chip = [np.ascontiguousarray(synthetic_chips(1)[0].image[..., ::-1])]
    ms, _, _ = median_ms(lambda: det._predict(chip), 10)
    achieved = gflops * 1e9 / (ms / 1000)
    _row("limit", "model GFLOPs per 640 chip", f"{gflops:.1f}")
    _row("limit", f"achieved by the default runtime ({det.runtime}), GFLOP/s", f"{achieved / 1e9:.0f}")
    _row("limit", "achieved share of the matrix-product FLOP/s", f"{achieved / peak:.0%}")


def bench_tta(
    rounds: int = 6, block: int = 4, accuracy_chips: int = 40, scene_px: int = 4096, gsd: float = 0.5
) -> None:
    """Test-time augmentation on the service's default runtime (OpenVINO f32): latency per 640 chip with one
    network pass and with four (each mode in its own process, taking turns), area per second on a tiled scene, and
    each mode's accuracy against the labels of held-out synthetic chips at its own tuned thresholds."""
    from app.detection.detector import Detector
    from training.evaluate import evaluate_synthetic

    specs = {"one pass": ("openvino", "f32", False), "TTA, four passes": ("openvino", "f32", True)}
    times = _timed_in_processes(specs, rounds, block)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        _row(
            "tta",
            f"OpenVINO f32, {k}: ms per 640 chip, own process (median; min-max)",
            f"{med[k]:.1f} ({min(v):.1f}-{max(v):.1f})",
        )
    _row(
        "tta", "time with TTA over time without, ratio of medians", f"{med['TTA, four passes'] / med['one pass']:.2f}x"
    )
    threads = len(os.sched_getaffinity(0))
    scene = _scene(synthetic_chips(16), scene_px)
    km2 = (scene_px * gsd) ** 2 / 1e6
    for k, (runtime, precision, tta) in specs.items():
        det = Detector(WEIGHTS, threads=threads, runtime=runtime, openvino_precision=precision, tta=tta)
        scene_ms, _, _ = median_ms(lambda det=det: det.detect(scene, gsd), 3)
        _row(
            "tta",
            f"OpenVINO f32, {k}: tiled scene {scene_px}x{scene_px} px at {gsd} m/px ({km2:.2f} km2), km2/s "
            "(median of 3; target >= 0.5)",
            f"{km2 / (scene_ms / 1000):.2f}",
        )
        acc = evaluate_synthetic(det, accuracy_chips)
        cells = [
            f"{c} mAP50 {v['map50']:.3f}, count error {100 * v['count_err_over_true']:.1f}%"
            for c, v in acc["classes"].items()
        ]
        _row(
            "tta",
            f"accuracy, {k}, {accuracy_chips} held-out synthetic chips (seeds {acc['seeds'][0]}+), "
            f"thresholds {det.class_conf}",
            "; ".join(cells),
        )


BENCHES = {
    "runtime": bench_runtime,
    "tta": bench_tta,
    "serving": bench_serving,
    "throughput": bench_throughput,
    "memory": bench_memory,
    "limit": bench_limit,
}


def _cpu() -> str:
    """CPU model and the vector extensions that decide the runtimes' speed (AVX-512, bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(ext)})"


#: Everything after this line of the results document is the benchmark's; everything before it is prose.
RESULTS_MARKER = "<!-- bench:begin -->"


def write_results(path: Path, results: str) -> None:
    """Replace what follows :data:`RESULTS_MARKER` in ``path`` with ``results`` (a file without it gets it)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    prose = text[: text.index(RESULTS_MARKER)] if RESULTS_MARKER in text else text
    path.write_text(f"{prose}{RESULTS_MARKER}\n\n{results}", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Run the chosen benchmarks (default all), print the table and write it into docs/performance.md (below its
    marker line; the text above it is kept)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    ap.add_argument("--only", default="", help="comma-separated subset, e.g. runtime,serving")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    a = ap.parse_args(argv)
    a.which = [*a.which, *(w for w in a.only.split(",") if w)]
    unknown = set(a.which) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    load0 = f"{os.getloadavg()[0]:.1f}"
    for name in a.which or BENCHES:
        BENCHES[name]()
    lines = ["| benchmark | figure | value |", "|---|---|---|", *(f"| {b} | {f} | {v} |" for b, f, v in ROWS)]
    import platform

    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {_cpu() or platform.processor()}, "
        f"{len(os.sched_getaffinity(0))} cores, load average before/after {load0} / {os.getloadavg()[0]:.1f} "
        f"(`python -m bench.perf {' '.join(a.which)}`)\n\n"
    )
    write_results(a.out, header + "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
