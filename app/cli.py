"""Command line: ``wagon-detector serve | detect | reprocess | scene | worker | keys | subscriptions | review |
export-reviews | db | train | evaluate | export``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.settings import Settings
    from app.database import Store
    from app.usecases.subscription_polls import SubscriptionPoller

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
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default 1); each gets CPU cores // workers inference threads",
    )

    detect = sub.add_parser("detect", help="detect and count objects in one image; print JSON")
    detect.add_argument("image", help="GeoTIFF/COG, JPEG 2000, NITF, JPEG, PNG or TIFF file")
    detect.add_argument(
        "--gsd-m",
        type=float,
        default=None,
        help="ground sample distance in m/pixel (0.05-10); overrides the geotransform",
    )
    detect.add_argument(
        "--footprint",
        default=None,
        help="GeoJSON file with a WGS84 Polygon: count only inside it (georeferenced images)",
    )
    detect.add_argument("--model", default=None, help="weights file (default: WAGON_MODEL_PATH)")
    detect.add_argument("--pretty", action="store_true", help="indent the JSON output")

    reprocess = sub.add_parser("reprocess", help="rerun the model over a facility's archived originals")
    reprocess.add_argument("facility", help="facility id")
    reprocess.add_argument("--model", default=None, help="weights file (default: WAGON_MODEL_PATH)")

    scene = sub.add_parser(
        "scene", help="analyse one scene for every facility it covers and store the observations (configured database)"
    )
    scene.add_argument("source", help="a GeoTIFF/COG path or URL, or a STAC item (.json path or URL)")
    scene.add_argument("--captured-at", default=None, help="acquisition time, ISO 8601 (default: the STAC item's)")
    scene.add_argument("--facility", action="append", default=None, help="limit to this facility (repeatable)")
    scene.add_argument("--gsd-m", type=float, default=None, help="ground sample distance, m/pixel")
    scene.add_argument("--model", default=None, help="weights file (default: WAGON_MODEL_PATH)")

    worker = sub.add_parser("worker", help="consume background jobs (large uploads) from the queue")
    worker.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")

    keys = sub.add_parser("keys", help="create, list and revoke API keys (on the configured database)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it (once) on stdout")
    create.add_argument(
        "--role",
        required=True,
        choices=("admin", "reader", "uploader", "analyst"),
        help="admin: everything; reader: reads everything; uploader: uploads to its facilities; "
        "analyst: reads everything and reviews observations",
    )
    create.add_argument(
        "--facility",
        action="append",
        default=[],
        metavar="ID",
        help="facility an uploader key may upload to (repeat for several; uploader keys only)",
    )
    create.add_argument("--name", default=None, help="who holds the key (shown in listings)")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", help="the key's id (the 12 hex digits after wd_, as listed)")
    revoke.add_argument("--force", action="store_true", help="revoke even the last active admin key")
    subs = sub.add_parser("subscriptions", help="follow vendors' STAC catalogs: add, list, poll and remove")
    subs_sub = subs.add_subparsers(dest="subscriptions_command", required=True, metavar="ACTION")
    add = subs_sub.add_parser("add", help="follow a static STAC catalog/collection or a STAC API (URL)")
    add.add_argument("url", help="catalog or collection JSON, or STAC API search endpoint or landing page")
    add.add_argument("--interval", type=int, required=True, help="minutes between polls (5-10080)")
    add.add_argument("--kind", choices=("static", "api"), default=None, help="default: told from the document")
    add.add_argument("--collection", action="append", default=None, help="keep this collection (repeatable)")
    add.add_argument("--facility", action="append", default=None, help="limit scenes to this facility (repeatable)")
    add.add_argument("--name", default=None, help="a name to show in listings")
    subs_sub.add_parser("list", help="list subscriptions with their last poll, last error and counts")
    poll = subs_sub.add_parser("poll", help="poll one now; new items are queued as scene jobs for the workers")
    poll.add_argument("id", help="subscription id")
    remove = subs_sub.add_parser("remove", help="stop following a catalog")
    remove.add_argument("id", help="subscription id")
    review = sub.add_parser(
        "review", help="record an analyst's review of an observation (counts or a JSON file of boxes), or withdraw it"
    )
    review.add_argument("observation", type=int, help="observation id")
    what = review.add_mutually_exclusive_group(required=True)
    what.add_argument("--counts", nargs="+", metavar="CLASS=N", help="verified counts, e.g. railcar=41")
    what.add_argument("--file", help="a JSON review body (objects, ignore, exhaustive), as the API takes")
    what.add_argument("--withdraw", action="store_true", help="withdraw the review in force")
    review.add_argument("--reviewer", default="cli", help="who reviewed (recorded with the review)")
    export = sub.add_parser(
        "export-reviews",
        help="write the exhaustively reviewed images as a YOLO-OBB training set (train --data reviews:DIR)",
    )
    export.add_argument("out", help="a new or empty folder")
    export.add_argument("--facility", default=None, help="only this facility's reviews")
    export.add_argument("--tile", type=int, default=640, help="tile size in pixels at the working GSD")
    export.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels")
    dbp = sub.add_parser("db", help="database schema: `db upgrade` migrates to the newest, `db current` reports")
    dbp.add_argument(
        "action",
        choices=("upgrade", "current"),
        help="upgrade: migrate WAGON_DATABASE_URL to the newest schema (the service does this at "
        "start-up too); current: print its revision and the newest one",
    )

    for name, module in DELEGATED.items():
        sub.add_parser(
            name, help=f"{name} the detector (see `wagon-detector {name} --help`; runs {module})", add_help=False
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wagon-detector`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[args_list[0]])
        result = module.main(args_list[1:])
        return int(result or 0)
    args = build_parser().parse_args(args_list)
    from app.core.settings import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(args.host, args.port, args.workers)
    if args.command == "detect":
        return _detect(args.image, args.gsd_m, args.model, args.pretty, args.footprint)
    if args.command == "reprocess":
        return _reprocess(args.facility, args.model)
    if args.command == "worker":
        return _worker(args.workers)
    if args.command == "scene":
        return _scene(args.source, args.captured_at, args.facility, args.gsd_m, args.model)
    if args.command == "keys":
        return _keys(args)
    if args.command == "subscriptions":
        return _subscriptions(args)
    if args.command == "db":
        return _db(args.action)
    if args.command == "review":
        return _review(args)
    if args.command == "export-reviews":
        return _export_reviews(args.out, args.facility, args.tile, args.overlap)
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def threads_per_worker(workers: int, requested: int | None, cores: int | None = None) -> int:
    """Inference threads for each of ``workers`` processes so that workers x threads never exceeds the cores."""
    cores = cores or len(os.sched_getaffinity(0))
    fair = max(1, cores // max(1, workers))
    return min(requested, fair) if requested else fair


def _serve(host: str, port: int, workers: int = 1) -> int:
    import uvicorn

    from app.core.settings import get_settings

    settings = get_settings()
    threads = threads_per_worker(workers, settings.inference_threads)
    if settings.inference_threads and threads < settings.inference_threads:
        logging.getLogger(__name__).warning(
            "WAGON_INFERENCE_THREADS=%d x %d workers exceeds the CPU cores; using %d threads per worker",
            settings.inference_threads,
            workers,
            threads,
        )
    os.environ["WAGON_INFERENCE_THREADS"] = str(threads)  # read by every worker process's settings
    get_settings.cache_clear()
    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )  # the app writes its own (JSON, request id)
    return 0


def _detect(
    image: str, gsd_m: float | None, model: str | None, pretty: bool = False, footprint_file: str | None = None
) -> int:
    from pathlib import Path

    from app.core import errors
    from app.core.settings import get_settings
    from app.detection.imaging import ImageError
    from app.usecases import images, scenes

    settings = get_settings()
    if model is not None:
        settings = settings.model_copy(update={"model_path": Path(model)})
    path = Path(image)
    if not path.is_file():
        print(f"error: no such file: {image}", file=sys.stderr)
        return 2
    try:
        footprint = _read_footprint(footprint_file) if footprint_file else None
        scenes.analyse_with_settings(None, path, settings, gsd_m, footprint)  # validate before loading the model
    except errors.ModelUnavailableError:
        pass  # the image is fine
    except (ImageError, errors.InvalidInputError, OSError, ValueError) as exc:
        print(f"error: {image}: {exc}", file=sys.stderr)
        return 2
    try:
        detector = images.load_configured_detector(settings)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        analysis = scenes.analyse_with_settings(detector, path, settings, gsd_m, footprint, progress=ProgressBar())
    except (ImageError, errors.InvalidInputError) as exc:
        print(f"error: {image}: {exc}", file=sys.stderr)
        return 2
    try:
        json.dump(analysis.to_dict(), sys.stdout, indent=2 if pretty else None)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly (recipe from the Python signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _read_footprint(path: str) -> dict[str, object]:
    """A WGS84 Polygon from a GeoJSON file (a Polygon, a Feature, or the first feature of a collection)."""
    from pathlib import Path

    from app.usecases.facilities import check_footprint

    data = json.loads(Path(path).read_text())
    if data.get("type") == "FeatureCollection":
        data = (data.get("features") or [{}])[0]
    if data.get("type") == "Feature":
        data = data.get("geometry") or {}
    return check_footprint(data) or {}


class ProgressBar:
    """A one-line progress bar on stderr, shown only for scenes of more than one window."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        filled = round(self.width * done / total)
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (total - done) if done else 0.0
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} windows, "
            f"{elapsed:.0f} s, about {eta:.0f} s left "
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _reprocess(facility: str, model: str | None) -> int:
    from pathlib import Path

    from app.core import errors
    from app.core.settings import get_settings
    from app.database import Store
    from app.usecases import images, scenes

    settings = get_settings()
    if model is not None:
        settings = settings.model_copy(update={"model_path": Path(model)})
    try:
        detector = images.load_configured_detector(settings)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = Store(settings.database_url)

    def report(item: scenes.Reprocessed) -> None:
        if item.after is None:
            print(f"observation {item.observation_id}: skipped ({item.note})")
        else:
            print(f"observation {item.observation_id}: {item.before} -> {item.after}")

    try:
        done = scenes.reprocess_facility(store, settings, detector, facility, on_done=report, progress=ProgressBar())
    except errors.NotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    rerun = sum(1 for d in done if d.after is not None)
    print(f"{rerun} of {len(done)} image observation(s) of {facility!r} rerun with {detector.name} {detector.version}")
    return 0


def _worker(workers: int) -> int:
    from app.core.settings import get_settings
    from app.database import Store
    from app.usecases import images
    from app.usecases.jobs import JobQueue
    from app.usecases.scene_jobs import SceneJobs
    from app.usecases.subscription_polls import SubscriptionPoller

    settings = get_settings()
    store = Store(settings.database_url)
    queue = JobQueue(settings, store, lambda: images.load_configured_detector(settings))
    scene_jobs = SceneJobs(queue)  # scene jobs run on the same queue
    scene_jobs.resume()
    SubscriptionPoller(scene_jobs)  # polls due subscriptions every minute (WAGON_JOBS_PERIODIC)
    queue.run_worker(workers)
    store.dispose()
    return 0


def _scene(
    source: str, captured_at: str | None, facilities: list[str] | None, gsd_m: float | None, model: str | None
) -> int:
    """``wagon-detector scene``: as ``POST /v1/scenes`` by an admin, run here; a local file is read in place."""
    import json
    from pathlib import Path

    from app.core import errors, validation
    from app.core.remote_file import FetchError
    from app.core.settings import get_settings
    from app.database import Store
    from app.detection.imaging import ImageError
    from app.usecases import images, keys, scene_runs, scene_sources

    settings = get_settings()
    if model is not None:
        settings = settings.model_copy(update={"model_path": Path(model)})
    store = Store(settings.database_url)
    try:
        when = None if captured_at is None else validation.parse_capture_time(captured_at, settings.capture_window)
        chosen, skipped = scene_runs.choose_facilities(store, keys.ANONYMOUS, facilities)
        if "://" in source:
            is_item = source.split("?")[0].endswith(".json")
            item = scene_sources.fetch_item(settings, source) if is_item else None
            scene = (
                scene_sources.source_of_item(settings, item)[0]
                if item is not None
                else scene_sources.source_of_href(settings, source)
            )
        elif source.endswith(".json"):
            item = json.loads(Path(source).read_text())
            item.setdefault("links", []).append({"rel": "self", "href": Path(source).resolve().as_uri()})
            stac = scene_sources.parse_item(item)
            scene = scene_sources.SceneSource("path", str(Path(stac.href.removeprefix("file://")).resolve()), item)
            if "://" in stac.href and not stac.href.startswith("file://"):
                scene = scene_sources.source_of_item(settings, item)[0]
        else:
            if not Path(source).is_file():
                raise errors.NotFoundError(f"no such file: {source}")
            scene = scene_sources.SceneSource("path", str(Path(source).resolve()))
        request = scene_runs.make_request(settings, scene, when, gsd_m, chosen, skipped)
        detector = images.load_configured_detector(settings)
        outcome = scene_runs.analyse_scene(store, settings, detector, request)
    except (errors.ServiceError, ImageError, FetchError, PermissionError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    print(json.dumps(outcome.to_dict(), indent=2))
    return 0


def _keys(args: argparse.Namespace) -> int:
    from app.core import errors, validation
    from app.core.settings import get_settings
    from app.database import Store
    from app.usecases import keys

    store = Store(get_settings().database_url)
    try:
        if args.keys_command == "create":
            new = keys.create_key(store, args.role, args.facility, args.name)
            where = f" for {', '.join(new.record.facilities)}" if new.record.facilities else ""
            print(
                f"created {new.record.role} key {new.record.id}{where}; it is shown only now, store it safely:",
                file=sys.stderr,
            )
            print(new.key)
        elif args.keys_command == "list":

            def when(value: str | None) -> str:  # to the second, UTC
                return value[:19].replace("T", " ") if value else "-"

            print(f"{'id':<14}{'role':<10}{'facilities':<24}{'created (UTC)':<21}{'last used':<21}{'revoked':<21}name")
            for k in keys.list_keys(store):
                d = k.to_dict()
                print(
                    f"{d['id']:<14}{d['role']:<10}{','.join(d['facilities']) or '*':<24}{when(d['created_at']):<21}"
                    f"{when(d['last_used_at']):<21}{when(d['revoked_at']):<21}{d['name'] or ''}"
                )
        else:
            record = keys.revoke_key(store, args.key_id, allow_last_admin=args.force)
            print(
                f"revoked key {record.id} ({record.role}) at {validation.iso(record.revoked_at or record.created_at)}"
            )
    except errors.ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    return 0


def _subscriptions(args: argparse.Namespace) -> int:
    """``wagon-detector subscriptions add | list | poll | remove`` on the configured database and queue."""
    from app.core import errors
    from app.core.settings import get_settings
    from app.database import Store
    from app.usecases import subscriptions
    from app.usecases.keys import ANONYMOUS_SCOPE

    settings = get_settings()
    store = Store(settings.database_url)
    try:
        action = args.subscriptions_command
        if action == "add":
            new = subscriptions.NewSubscription(
                args.url, args.interval, args.kind, args.collection, args.facility, args.name
            )
            print(json.dumps(subscriptions.create(store, settings, new, ANONYMOUS_SCOPE), indent=2))
        elif action == "list":
            print(f"{'id':<38}{'kind':<8}{'every':<8}{'seen':>6}{'sent':>6}{'failed':>7}  {'next poll (UTC)':<21}url")
            for s in subscriptions.list_all(store):
                print(
                    f"{s['id']:<38}{s['kind']:<8}{str(s['interval_minutes']) + 'm':<8}{s['items_seen']:>6}"
                    f"{s['scenes_submitted']:>6}{s['failures']:>7}  {s['next_poll_at'][:19].replace('T', ' '):<21}"
                    f"{s['url']}" + (f"\n    last error: {s['last_error']}" if s["last_error"] else "")
                )
        elif action == "poll":
            print(json.dumps(_poller(settings, store).poll(args.id), indent=2))
        else:
            gone = subscriptions.delete(store, args.id)
            print(f"removed subscription {gone['id']} ({gone['url']})")
    except errors.ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    return 0


def _poller(settings: Settings, store: Store) -> SubscriptionPoller:
    """A subscription poller submitting to the configured queue (its jobs run in the workers)."""
    from app.usecases.jobs import JobQueue
    from app.usecases.scene_jobs import SceneJobs
    from app.usecases.subscription_polls import SubscriptionPoller

    queue = JobQueue(settings, store, None)
    return SubscriptionPoller(SceneJobs(queue))


def _review(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.core import errors
    from app.core.settings import get_settings
    from app.database import Store
    from app.usecases import reviews

    settings = get_settings()
    defaults = reviews.counting_defaults(
        None, settings.resolved_model_path, settings.candidate_floor, settings.count_rel_error
    )
    store = Store(settings.database_url)
    try:
        if args.withdraw:
            rec = reviews.withdraw_review(store, args.observation, args.reviewer, defaults)
        else:
            if args.file:
                body = json.loads(Path(args.file).read_text())
            else:
                body = {"counts": {}}
                for item in args.counts:
                    cls, sep, n = item.partition("=")
                    if not sep or not n.strip().isdigit():
                        raise errors.InvalidInputError(f"--counts takes CLASS=N, not {item!r}")
                    body["counts"][cls.strip()] = int(n)
            rec = reviews.put_review(store, args.observation, body, args.reviewer, defaults)
    except (errors.ServiceError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    print(
        json.dumps({"id": rec.id, "counts": rec.counts, "verified_counts": rec.verified_counts, "review": rec.review})
    )
    return 0


def _export_reviews(out: str, facility: str | None, tile: int, overlap: int) -> int:
    from pathlib import Path

    from app.core.settings import get_settings
    from app.database import Store
    from app.usecases.review_export import export_reviews

    settings = get_settings()
    sidecar = settings.resolved_model_path.with_suffix(".json")
    working = float(json.loads(sidecar.read_text()).get("working_gsd_m", 0.4)) if sidecar.exists() else 0.4
    store = Store(settings.database_url)
    try:
        summary = export_reviews(store, settings, Path(out), working, tile, overlap, facility)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    for note in summary.skipped:
        print(f"skipped {note}", file=sys.stderr)
    print(
        f"{summary.images} reviewed image(s), {summary.objects} object(s) -> {summary.tiles} tile(s) at "
        f"{working} m/px; train with: wagon-detector train --data reviews:{out}"
    )
    return 0


def _db(action: str) -> int:
    from sqlalchemy.engine import make_url

    from app.core.settings import get_settings
    from app.database import make_engine, migrate

    url = get_settings().database_url
    shown = make_url(url).render_as_string(hide_password=True)
    engine = make_engine(url)
    try:
        if action == "upgrade":
            print(f"{shown}: at revision {migrate.upgrade(engine)} (newest {migrate.head_revision()})")
            return 0
        with engine.connect() as conn:
            current = migrate.current_revision(conn)
        state = "up to date" if current == migrate.head_revision() else "needs `wagon-detector db upgrade`"
        print(f"{shown}: revision {current or 'none'}, newest {migrate.head_revision()} ({state})")
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
