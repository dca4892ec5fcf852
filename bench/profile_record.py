"""Profile the database side of an upload alone: ``images.record_upload`` of a hand-made analysis.

    python -m bench.profile_record [--uploads 60] [--detections 120]

No model: the same analysis (``--detections`` boxes, two classes) is stored at successive hours, each the newest
observation of the facility, on a SQLite file. Prints ms per upload of the record step and its parts, then the
functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from datetime import UTC, datetime, timedelta

import numpy as np

from bench.perf import png_bytes

PARTS = [
    "find_upload",
    "lock_facility",
    "insert_detections",
    "rescore",
    "score_series",
    "count_histories",
    "enqueue_alerts",
    "commit",
    "flush",
    "_observation_record",
]


def main(argv: list[str] | None = None) -> None:
    """Store ``--uploads`` analyses under cProfile and print where the time went."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=60)
    ap.add_argument("--detections", type=int, default=120)
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args(argv)
    from app.database import Store
    from app.detection.imaging import decode_image
    from app.detection.results import Detection, DetectionResult
    from app.usecases import facilities, images

    dets = [
        Detection(
            "container" if i % 3 else "railcar",
            0.5 + (i % 100) / 250,
            ((10.0 * i, 0.5), (10.0 * i + 8.25, 0.5), (10.0 * i + 8.25, 3.5), (10.0 * i, 3.5)),
        )
        for i in range(a.detections)
    ]
    image = decode_image(png_bytes(np.full((64, 64, 3), 128, np.uint8)))
    analysis = images.Analysis(
        image=image,
        result=DetectionResult(dets, 64, 64, 0.5, 1.0),
        model_name="m",
        model_version="1",
        class_names=("railcar", "container"),
        gsd_m=0.5,
        decode_ms=1.0,
        detect_ms=1.0,
    )
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/p.db")
        facilities.create_facility(store, "bench", "bench", "rail")
        images.record_upload(store, "bench", start, analysis)
        prof = cProfile.Profile()
        prof.enable()
        for k in range(1, a.uploads + 1):
            images.record_upload(store, "bench", start + timedelta(hours=k), analysis)
        prof.disable()
        store.dispose()
    stats = pstats.Stats(prof)
    n = a.uploads

    def ms(name: str) -> float:
        timings = stats.stats.items()  # type: ignore[attr-defined]  # undeclared in typeshed
        return max((v[3] for (_f, _l, x), v in timings if x == name), default=0.0) / n * 1000

    print(f"record_upload: {ms('record_upload'):.1f} ms per upload ({a.detections} detections)")
    for name in PARTS:
        print(f"  {name}: {ms(name):.1f}")
    stats.sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
