"""Test doubles of the detector (never used outside tests): cheap, deterministic, observable.

They satisfy :class:`app.usecases.DetectorProtocol`, so the API runs its real decoding, gating, storing and scoring
paths around them; only the neural network is replaced.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from app.detection.results import Detection, DetectionResult


class RecordingFakeDetector:
    """Finds one railcar in the middle of every image and keeps each image it was given (``images``)."""

    name = "fake-detector"
    version = "test"
    class_names = ("railcar", "container")

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.calls = 0
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        """One 4 x 2 px railcar at the centre."""
        with self._lock:
            self.calls += 1
            self.images.append(image.copy())
        h, w = image.shape[:2]
        cx, cy = w / 2.0, h / 2.0
        box = ((cx - 2, cy - 1), (cx + 2, cy - 1), (cx + 2, cy + 1), (cx - 2, cy + 1))
        return DetectionResult([Detection("railcar", 0.9, box)], w, h, gsd_m, 0.0)


class SlowFakeDetector(RecordingFakeDetector):
    """Like :class:`RecordingFakeDetector`, but each pass blocks until ``release`` is set (or ``max_wait_s``
    passes), and records how many passes ran at once (``peak``)."""

    def __init__(self, max_wait_s: float = 30.0) -> None:
        super().__init__()
        self.release = threading.Event()
        self.max_wait_s = max_wait_s
        self.running = 0
        self.peak = 0
        self.started = threading.Semaphore(0)  # released once per pass that began

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        """Wait for ``release``, then find one railcar."""
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.started.release()
        try:
            self.release.wait(self.max_wait_s)
            time.sleep(0.01)
            return super().detect(image, gsd_m)
        finally:
            with self._lock:
                self.running -= 1


class ScriptedCandidateDetector:
    """Returns the same scripted boxes for every image: ``(class, score, corners)``; those scoring at least
    ``threshold`` are counted, the rest down to ``floor`` are candidates (as the real detector with a candidate
    floor)."""

    name = "scripted-detector"
    version = "test"
    class_names = ("railcar", "container")

    def __init__(self, boxes: list[tuple[str, float, tuple]], threshold: float = 0.35, floor: float = 0.1) -> None:
        self.boxes = boxes
        self.class_conf = {c: threshold for c in self.class_names}
        self.floor = floor

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        """The scripted boxes, split at the threshold."""
        h, w = image.shape[:2]
        found = [
            Detection(cls, s, box, score=s, counted=s >= self.class_conf[cls])
            for cls, s, box in self.boxes
            if s >= self.floor
        ]
        return DetectionResult(
            [d for d in found if d.counted], w, h, gsd_m, 0.0, candidates=[d for d in found if not d.counted]
        )


def railcar_box(x: float, y: float, length: float = 30.0, width: float = 8.0) -> tuple:
    """An axis-aligned railcar box with its top-left corner at (x, y), as four corners."""
    return ((x, y), (x + length, y), (x + length, y + width), (x, y + width))
