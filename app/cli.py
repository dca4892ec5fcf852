"""Command line: ``wagon-detector serve | detect | train | evaluate``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from app import __version__

#: Subcommands handed over whole to ``training.<name>:main(argv)``.
DELEGATED = {"train": "training.train", "evaluate": "training.evaluate", "export": "training.export"}


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser."""
    parser = argparse.ArgumentParser(
        prog="wagon-detector",
        description="Count railcars and containers in satellite image chips; serve the REST API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the REST API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (default 1); each gets CPU cores // workers inference threads")

    detect = sub.add_parser("detect", help="detect and count objects in one image; print JSON")
    detect.add_argument("image", help="JPEG, PNG or TIFF file")
    detect.add_argument("--gsd-m", type=float, default=None, help="ground sample distance in m/pixel (0.05-10)")
    detect.add_argument("--model", default=None, help="weights file (default: WAGON_MODEL_PATH)")
    detect.add_argument("--pretty", action="store_true", help="indent the JSON output")

    for name, module in DELEGATED.items():
        sub.add_parser(name, help=f"{name} the detector (see `wagon-detector {name} --help`; runs {module})",
                       add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wagon-detector`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[args_list[0]])
        result = module.main(args_list[1:])
        return int(result or 0)
    args = build_parser().parse_args(args_list)
    from app.settings import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(args.host, args.port, args.workers)
    if args.command == "detect":
        return _detect(args.image, args.gsd_m, args.model, args.pretty)
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def threads_per_worker(workers: int, requested: int | None, cores: int | None = None) -> int:
    """Inference threads for each of ``workers`` processes so that workers x threads never exceeds the cores."""
    cores = cores or len(os.sched_getaffinity(0))
    fair = max(1, cores // max(1, workers))
    return min(requested, fair) if requested else fair


def _serve(host: str, port: int, workers: int = 1) -> int:
    import uvicorn

    from app.settings import get_settings

    settings = get_settings()
    threads = threads_per_worker(workers, settings.inference_threads)
    if settings.inference_threads and threads < settings.inference_threads:
        logging.getLogger(__name__).warning(
            "WAGON_INFERENCE_THREADS=%d x %d workers exceeds the CPU cores; using %d threads per worker",
            settings.inference_threads, workers, threads)
    os.environ["WAGON_INFERENCE_THREADS"] = str(threads)  # read by every worker process's settings
    get_settings.cache_clear()
    uvicorn.run("app.api:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=settings.log_level.lower())
    return 0


def _detect(image: str, gsd_m: float | None, model: str | None, pretty: bool = False) -> int:
    from pathlib import Path

    from app import service
    from app.imaging import ImageError, decode_image
    from app.settings import get_settings

    settings = get_settings()
    if model is not None:
        settings = settings.model_copy(update={"model_path": Path(model)})
    path = Path(image)
    if not path.is_file():
        print(f"error: no such file: {image}", file=sys.stderr)
        return 2
    try:
        service.check_gsd(gsd_m)
        t0 = time.perf_counter()
        decoded = decode_image(path.read_bytes(), max_pixels=settings.max_pixels)
        decode_ms = (time.perf_counter() - t0) * 1000.0
    except (ImageError, service.InvalidInputError) as exc:  # validate before paying for the model load
        print(f"error: {image}: {exc}", file=sys.stderr)
        return 2
    try:
        detector = service.load_configured_detector(settings)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    analysis = service.detect_decoded(detector, decoded, gsd_m, decode_ms=decode_ms)
    try:
        json.dump(analysis.to_dict(), sys.stdout, indent=2 if pretty else None)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly (recipe from the Python signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
