"""Benchmark of a CSV import of historical counts: rows stored per second (parsing and storing, as the API does).

    .venv/bin/python -m bench.import_bench                 # 100,000 rows, 3 runs
    .venv/bin/python -m bench.import_bench --rows 10000 --runs 5

    .venv/bin/python -m bench.import_bench --rows 5000 --score

Each run imports ``--rows`` rows (two classes, two hours apart from 2000: 100,000 rows end in 2022, inside the
accepted capture times) into a fresh facility of a fresh SQLite file, and
then, as a second figure, the same count again into a facility that already holds that many (the rows interleave
with the stored ones, so every stored point is rescored). Prints the medians of the runs: rows/s of the parse, of
the time the write lock is held (seconds inside ``Store.transaction``) and of the whole import.

Scoring costs a few milliseconds per point and class (each fits the history before it), so 100,000 rows take
minutes of CPU whatever the storage does: without ``--score`` the scores are not computed (every count is stored as
``not scored yet``), which measures the storage and the lock alone; with ``--score`` the import is what the API runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app import database as db
from app.usecases import facilities, imports

#: Seconds spent inside write transactions (the write lock held), appended by the wrapped ``Store.transaction``.
LOCK_S: list[float] = []
#: Time between two rows of one import.
STEP = timedelta(hours=2)


def _timed(transaction: Any) -> Any:
    @contextmanager
    def wrapper(self: db.Store) -> Iterator[Any]:
        t0 = time.perf_counter()
        try:
            with transaction(self) as session:
                yield session
        finally:
            LOCK_S.append(time.perf_counter() - t0)

    return wrapper


def csv_body(n: int, start: datetime, step: timedelta) -> str:
    """A CSV import of ``n`` rows from ``start``, one per ``step``."""
    lines = ["captured_at,railcar,container"]
    for i in range(n):
        t = start + i * step
        lines.append(f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},{20 + i % 17},{i % 5}")
    return "\n".join(lines) + "\n"


def run_once(rows: int, workdir: Path, tag: str) -> tuple[float, float, float, float, float]:
    """Seconds to parse, to import into an empty facility (the whole import, and the write lock held), and to
    import as many again interleaved (whole, lock)."""
    store = db.Store(f"sqlite:///{workdir / f'{tag}.db'}")
    facilities.create_facility(store, "yard", "Yard", "rail")
    start = datetime(2000, 1, 1, tzinfo=UTC)
    body = csv_body(rows, start, STEP)
    t0 = time.perf_counter()
    parsed = imports.parse_csv_import(body)
    LOCK_S.clear()
    t1 = time.perf_counter()
    imports.import_counts(store, "yard", parsed)
    t2 = time.perf_counter()
    lock1 = sum(LOCK_S)
    second = imports.parse_csv_import(csv_body(rows, start + STEP / 2, STEP))
    LOCK_S.clear()
    t3 = time.perf_counter()
    imports.import_counts(store, "yard", second)
    t4 = time.perf_counter()
    lock2 = sum(LOCK_S)
    store.dispose()
    return t1 - t0, t2 - t1, lock1, t4 - t3, lock2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--score", action="store_true", help="compute the anomaly scores (minutes for 100,000 rows)")
    args = parser.parse_args()
    db.Store.transaction = _timed(db.Store.transaction)  # type: ignore[method-assign]
    if not args.score:
        from app.usecases import import_store

        import_store.compute_scores = lambda snapshot: {}  # type: ignore[assignment,misc]
    figures: list[tuple[float, float, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            f = run_once(args.rows, Path(tmp), f"run{run}")
            figures.append(f)
            print(
                f"run {run + 1}: parse {f[0]:.2f} s; import {f[1]:.2f} s (lock {f[2]:.2f} s); "
                f"import interleaved {f[3]:.2f} s (lock {f[4]:.2f} s)",
                flush=True,
            )
    n = args.rows
    med = [statistics.median(f[k] for f in figures) for k in range(5)]
    print(f"rows per import: {n}, runs: {args.runs}, scores computed: {args.score} (medians)")
    print(f"parse CSV:                          {n / med[0]:10.0f} rows/s")
    print(f"import into an empty facility:      {n / med[1]:10.0f} rows/s ({med[1]:.2f} s)")
    print(f"  of which the write lock held:     {n / med[2]:10.0f} rows/s ({med[2]:.2f} s)")
    print(f"import into a history as long:      {n / med[3]:10.0f} rows/s ({med[3]:.2f} s)")
    print(f"  of which the write lock held:     {n / med[4]:10.0f} rows/s ({med[4]:.2f} s)")


if __name__ == "__main__":
    main()
