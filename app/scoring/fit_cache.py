"""Anomaly fits prepared ahead of a facility's next observation: a bounded, per-process cache and its filler.

Scoring an upload fits each class's history (:func:`app.scoring.anomaly.fit_predictor`, milliseconds per class), and
that history is known as soon as the previous write has committed. :class:`Prefitter` fits it then, in one background
thread, for the facility's next observation (one newer than everything stored), and :meth:`FitCache.fitter` hands
rescoring the cached fit instead of fitting on the request path.

The scores never depend on the cache. A fit is keyed by the facility, the class, the number of points and the
newest day, and verified against a digest of exactly the points fitted and the prior; it is used only at a scoring
time it covers (:meth:`app.scoring.anomaly.Predictor.covers`: the same fit window and eligible designs), where it
equals a fresh fit bit for bit (the GLM's time axis is centred at the newest fitted day, not at the scoring time). Any
mismatch (an older observation, an import, a reprocessed count, another prior, a time outside the window) fits as
before. Cold starts (fewer than :data:`app.scoring.anomaly.MIN_HISTORY` points) are cheap and never cached.

Memory: at most :data:`MAX_ENTRIES` fits, least recently used dropped first; a fit holds a few coefficients, their
covariance and the dispersion posterior (at most 50 grid points), about 2 KB with its key: a few MB at most. Each
server process keeps its own cache; the filler's queue holds at most :data:`MAX_PENDING` facilities.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from app import database as db
from app.core.offline import CLASS_NAMES
from app.scoring.anomaly import MIN_HISTORY, Fitter, PooledPrior, Predictor, epoch_days, fit_predictor
from app.scoring.review_calibration import effective_series

log = logging.getLogger(__name__)

#: Most fits kept per process.
MAX_ENTRIES: int = 1024
#: Most facilities waiting for the background fit (further requests are dropped: they only cost a fit later).
MAX_PENDING: int = 64
#: How often (seconds) a waiting background fit checks whether the server has become idle.
IDLE_POLL_S: float = 0.02


class _Key(NamedTuple):
    facility_id: str
    class_name: str
    points: int
    newest_day: float
    prior: PooledPrior | None


def history_digest(days: np.ndarray, counts: np.ndarray) -> bytes:
    """Digest of exactly the ``(day, count)`` points a fit sees (float64 days, int64 counts)."""
    h = hashlib.blake2b(np.ascontiguousarray(days, dtype=np.float64).tobytes(), digest_size=16)
    h.update(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    return h.digest()


class FitCache:
    """LRU of fitted histories (thread-safe); ``hits`` and ``misses`` count the lookups of non-cold-start fits."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._fits: OrderedDict[_Key, tuple[bytes, Predictor]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._fits)

    def clear(self) -> None:
        """Forget every fit (and the counters)."""
        with self._lock:
            self._fits.clear()
            self.hits = self.misses = 0

    def get(
        self, facility_id: str, class_name: str, days: np.ndarray, counts: np.ndarray, prior: PooledPrior | None
    ) -> Predictor | None:
        """The fit of exactly these points with this prior, if kept."""
        if not days.size:
            return None
        key = _Key(facility_id, class_name, int(days.size), float(days[-1]), prior)
        with self._lock:
            entry = self._fits.get(key)
        if entry is None or entry[0] != history_digest(days, counts):
            return None
        with self._lock:
            if key in self._fits:
                self._fits.move_to_end(key)
        return entry[1]

    def put(
        self,
        facility_id: str,
        class_name: str,
        days: np.ndarray,
        counts: np.ndarray,
        prior: PooledPrior | None,
        fit: Predictor,
    ) -> None:
        """Keep the fit of these points (the least recently used fit goes when full)."""
        key = _Key(facility_id, class_name, int(days.size), float(days[-1]), prior)
        entry = (history_digest(days, counts), fit)
        with self._lock:
            self._fits[key] = entry
            self._fits.move_to_end(key)
            while len(self._fits) > self.max_entries:
                self._fits.popitem(last=False)

    def fitter(self, facility_id: str, class_name: str) -> Fitter:
        """A :data:`app.scoring.anomaly.Fitter` for one class of one facility: the kept fit when it covers the scoring
        time, else a fresh :func:`app.scoring.anomaly.fit_predictor` (not kept: the filler fits what the next one
        needs)."""

        def fit(days: np.ndarray, counts: np.ndarray, at_day: float, prior: PooledPrior | None) -> Predictor:
            if counts.size < MIN_HISTORY:
                return fit_predictor(days, counts, at_day, prior)
            kept = self.get(facility_id, class_name, days, counts, prior)
            hit = kept is not None and kept.covers(at_day)
            with self._lock:
                if hit:
                    self.hits += 1
                else:
                    self.misses += 1
            return kept if kept is not None and hit else fit_predictor(days, counts, at_day, prior)

        return fit


#: The process's cache (used by :func:`app.usecases.rescore`).
CACHE = FitCache()


def next_day(days: np.ndarray) -> float:
    """Guess of the next observation's day: one more step of the last interval (the newest day if only one)."""
    return float(days[-1] + (days[-1] - days[-2])) if days.size >= 2 else float(days[-1])


def prefit_facility(store: db.Store, facility_id: str, cache: FitCache = CACHE) -> int:
    """Fit each class's whole stored history of a facility for its next observation and keep the fits; returns
    how many were fitted (histories already kept, and cold starts, are skipped)."""
    with store.session() as session:
        histories = db.count_histories(session, facility_id, CLASS_NAMES)
        biases = {c: cal.count_bias for c, cal in db.facility_calibrations(session, facility_id).items()}
    fitted = 0
    for cls, history in histories.items():
        if len(history) < MIN_HISTORY:
            continue
        # exactly the arrays app.scoring.anomaly.score_series hands a fit for a point newer than all of these
        days = np.asarray([epoch_days(h[1]) for h in history], dtype=np.float64)
        counts = np.asarray(effective_series(history, biases.get(cls, 0.0))[0], dtype=np.int64)
        if cache.get(facility_id, cls, days, counts, None) is not None:
            continue
        cache.put(facility_id, cls, days, counts, None, fit_predictor(days, counts, next_day(days), None))
        fitted += 1
    return fitted


class Prefitter:
    """One background thread that runs :func:`prefit_facility` for facilities whose history changed.

    :meth:`request` never blocks: a facility already waiting is not queued twice, and beyond :data:`MAX_PENDING`
    waiting facilities a request is dropped (the next upload then fits on the request path, as without a cache).

    ``busy``: whether requests are being served (the inference gate's passes). A fit waits until it is false, so
    background fits fill idle time and never take CPU from a burst of uploads: under a burst a facility's next
    fit is often wasted anyway (another upload, or another server process, changes its history first).
    """

    def __init__(
        self,
        store: db.Store,
        cache: FitCache = CACHE,
        max_pending: int = MAX_PENDING,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.max_pending = max_pending
        self.busy = busy
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (a daemon: it holds nothing that must be finished)."""
        self._thread = threading.Thread(target=self._run, name="anomaly-prefit", daemon=True)
        self._thread.start()

    def request(self, facility_id: str) -> bool:
        """Ask for the facility's fits (after a write that changed its history has committed); False if dropped."""
        with self._cond:
            if self._stopping or (facility_id not in self._pending and len(self._pending) >= self.max_pending):
                return False
            self._pending[facility_id] = None
            self._cond.notify_all()
            return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the facility in hand (the waiting ones are dropped)."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is pending or in hand (tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                if self.busy is not None and self.busy():
                    self._cond.wait(IDLE_POLL_S)  # requests first: look again shortly
                    continue
                facility_id, _ = self._pending.popitem(last=False)
                self._busy = True
            try:
                prefit_facility(self.store, facility_id, self.cache)
            except Exception:
                # a failed prefit only means that the next upload fits itself
                log.exception("background anomaly fit of facility %s failed", facility_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
