"""Profile image uploads in process: the stages of an upload after archiving (real detector, SQLite file).

    python -m bench.profile_upload [--uploads 20] [--top 30]

Prints cumulative cProfile figures per upload for the stages of ``POST /v1/facilities/{id}/images`` (the model's
own time included, so the serving overhead is the rest); the first upload (warm-up) is not profiled. As in the
service, each upload's anomaly fits for the next one are prepared between uploads (``app.scoring.fit_cache``, not
profiled: the service does it in the background after answering).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.perf import WEIGHTS, png_bytes, synthetic_chips

#: (label, function name as pstats shows it, file suffix) of the stages worth reporting.
STAGES = [
    ("analyse (decode + detect)", "analyse_source", "app/usecases/scenes.py"),
    ("  image decode (libspng, OpenCV or Pillow)", "decode_image", "app/detection/imaging.py"),
    ("  detect (network + decoding + NMS)", "detect_scene", "app/detection/pipeline.py"),
    ("record_upload (all database work and scoring)", "record_upload", "app/usecases/"),
    ("  duplicate check (find_upload)", "find_upload", "app/usecases/"),
    ("  anomaly rescoring (rescore)", "rescore", "app/usecases/"),
    ("    of which model fits (score_series)", "score_series", "app/scoring/anomaly.py"),
    ("  commit", "commit", "sqlalchemy/orm/session.py"),
    ("response JSON (pydantic model_dump_json)", "model_dump_json", "pydantic/main.py"),
]


def main(argv: list[str] | None = None) -> None:
    """Run the uploads under cProfile and print the stage table and the top functions."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    from app.api.schemas import UploadOut
    from app.core.offline import configure_offline
    from app.core.settings import Settings
    from app.database import Store
    from app.scoring import fit_cache
    from app.usecases import facilities, images, scenes

    configure_offline()
    data = png_bytes(synthetic_chips(1)[0].image)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/p.db",
            archive_dir=Path(tmp) / "originals",
            jobs_sqlite_path=Path(tmp) / "jobs.db",
            model_path=WEIGHTS,
        )
        store = Store(settings.database_url)
        detector = images.load_configured_detector(settings)
        facilities.create_facility(store, "bench", "bench", "rail")
        writer = scenes.ArchiveWriter(settings.archive_dir)
        writer.write(data)
        sha, path = writer.commit()

        def upload(k: int) -> None:  # what upload_image does after archiving the bytes
            when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=k)
            footprint = scenes.facility_footprint(store, "bench")
            images.find_upload(store, "bench", when, sha)
            analysis = scenes.analyse_with_settings(detector, path, settings, None, footprint, sha)
            record, _ = images.record_upload(store, "bench", when, analysis, repeat_checked=True)
            out = record.to_dict(with_detections=True)
            out["timing_ms"] = {"decode": 0.0, "detect": 0.0, "store": 0.0, "total": 0.0}
            UploadOut.model_validate(out).model_dump_json()

        upload(0)
        prof = cProfile.Profile()
        for k in range(1, a.uploads + 1):
            fit_cache.prefit_facility(store, "bench")
            prof.enable()
            upload(k)
            prof.disable()
        store.dispose()
    stats = pstats.Stats(prof)
    n = a.uploads
    print(f"| stage | ms per upload (cumulative, mean of {n}) |\n|---|---|")
    for label, func, suffix in STAGES:
        total = sum(
            v[3]
            for (file, _line, name), v in stats.stats.items()  # type: ignore[attr-defined]  # undeclared in typeshed
            if name == func and file.endswith(suffix)
        )
        print(f"| {label} | {total / n * 1000:.1f} |")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(a.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
