"""The one place that loads the model and the one function that turns an image into detections.

Used by the API, the CLI, the evaluator and the benchmarks alike. Images larger than the model input are cut into
overlapping tiles; each detection is kept only from the tile whose core holds its centre, then a rotated NMS
removes any duplicate left at a seam. When the ground sample distance is known, the image is first resampled to the
model's working resolution and boxes are mapped back to the original pixels. With test-time augmentation (the
sidecar's ``tta``, or the ``tta`` argument) every tile is also run mirrored and all views' boxes enter the NMS
together (:mod:`app.detection.augment`): four network passes per tile.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.offline import CLASS_NAMES, configure_offline
from app.detection.augment import FLIPS, augment_tiles, merge_raw
from app.detection.calibration import calibrate_scores, parse_calibration
from app.detection.geometry import greedy_rotated_nms, resample, resample_scale, tile_core, tile_origins
from app.detection.railcar_trains import rescore_lone_railcars
from app.detection.results import Detection, DetectionResult, quad, split_counted
from app.detection.runtimes import Engine, OnnxEngine, OpenVinoEngine, TorchEngine, decode, to_input


@dataclass(frozen=True)
class ModelInfo:
    """What the sidecar ``<weights>.json`` says about a checkpoint."""

    name: str
    version: str
    imgsz: int = 640
    working_gsd_m: float | None = 0.4
    conf: float | dict[str, float] = 0.3  # one threshold, or one per class name
    iou: float = 0.5
    tile_overlap_px: int = 128
    tta: bool = False  # test-time augmentation: each tile also run mirrored three ways (four passes)
    # thresholds tuned for each mode ("on"/"off"), for running the model in the mode its sidecar does not choose
    conf_by_tta: dict[str, float | dict[str, float]] | None = None
    # railcars with no railcar coupled to either end get their confidence multiplied by this
    # (app.detection.railcar_trains); neighbours count from ``lone_railcar_floor``. 1.0: off (sidecars before
    # version 11)
    lone_railcar_factor: float = 1.0
    lone_railcar_floor: float = 0.3
    # per class {"temperature": T, "bias": b} mapping the REPORTED confidences (app.detection.calibration), fitted
    # for the sidecar's TTA mode; thresholds stay on the raw scale. None: confidences reported as the network gives
    confidence_calibration: dict[str, dict[str, float]] | None = None


def read_model_info(weights: Path) -> ModelInfo:
    """Read the sidecar JSON next to the weights; fall back to a name and a content hash as version."""
    sidecar = weights.with_suffix(".json")
    data = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    fields = ModelInfo.__dataclass_fields__
    known = {k: v for k, v in data.items() if k in fields}
    known.setdefault("name", weights.stem)
    if "version" not in known:  # e.g. a checkpoint whose sidecar holds only tuned thresholds
        known["version"] = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return ModelInfo(**known)


RUNTIMES = ("auto", "torch", "onnx", "openvino")


def export_path(weights: Path, runtime: str) -> Path:
    """The file a runtime loads for these weights: the ``.pt`` itself, ``<stem>.onnx`` or
    ``<stem>_openvino_model/<stem>.xml`` beside it (both written by ``wagon-detector export``)."""
    if runtime == "onnx":
        return weights.with_suffix(".onnx")
    if runtime == "openvino":
        return weights.parent / f"{weights.stem}_openvino_model" / f"{weights.stem}.xml"
    return weights


def resolve_runtime(weights: Path, runtime: str) -> tuple[str, Path]:
    """Pick the runtime and the file it loads: ``auto`` takes the fastest export present beside the weights
    (OpenVINO, then ONNX; see docs/performance.md), else PyTorch."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime == "auto":
        runtime = next((r for r in ("openvino", "onnx") if export_path(weights, r).exists()), "torch")
    path = export_path(weights, runtime)
    if not path.exists():
        raise FileNotFoundError(f"{runtime} export not found: {path} (run `wagon-detector export`)")
    return runtime, path


class Detector:
    """A loaded OBB model with tiling, GSD resampling and duplicate removal."""

    def __init__(
        self,
        weights: str | Path,
        threads: int | None = None,
        conf: float | None = None,
        runtime: str = "torch",
        max_det: int = 2000,
        openvino_precision: str = "f32",
        tta: bool | None = None,
        candidate_floor: float | None = None,
    ) -> None:
        configure_offline()
        import torch

        self.weights = Path(weights)
        if not self.weights.exists():
            raise FileNotFoundError(f"model weights not found: {self.weights}")
        self.info = read_model_info(self.weights)
        self.name = self.info.name
        self.version = self.info.version
        self.runtime, model_file = resolve_runtime(self.weights, runtime)
        self.max_det = max_det  # per tile
        self.tta = self.info.tta if tta is None else bool(tta)
        if self.tta != self.info.tta:  # other counts than the sidecar's model gives: say so wherever it is recorded
            self.version = f"{self.version}+tta-{'on' if self.tta else 'off'}"
        self.openvino_precision = openvino_precision
        self.class_names: tuple[str, ...] = CLASS_NAMES
        tuned = (self.info.conf_by_tta or {}).get("on" if self.tta else "off")
        chosen = conf if conf is not None else tuned if tuned is not None else self.info.conf
        self.class_conf: dict[str, float] = (
            {c: float(chosen.get(c, 0.3)) for c in CLASS_NAMES}
            if isinstance(chosen, dict)
            else {c: float(chosen) for c in CLASS_NAMES}
        )
        self._conf_by_id = np.array([self.class_conf[c] for c in CLASS_NAMES])
        self._railcar = CLASS_NAMES.index("railcar")
        self._context = self.info.lone_railcar_factor < 1.0
        # boxes kept through the tiles: each class from its threshold, railcars from the context floor as well
        # (a railcar below its threshold can still be the neighbour that makes another one coupled)
        self._keep_by_id = self._conf_by_id.copy()
        if self._context:
            self._keep_by_id[self._railcar] = min(self._keep_by_id[self._railcar], self.info.lone_railcar_floor)
        #: candidates are kept down to this score (never above a class's threshold), for re-thresholding later
        self.candidate_floor = None if candidate_floor is None else float(candidate_floor)
        if self.candidate_floor is not None:
            self._keep_by_id = np.minimum(self._keep_by_id, self.candidate_floor)
        self.conf = float(self._keep_by_id.min())
        # applied last, to the boxes that count (counts never change); not with an explicit ``conf`` (the evaluator's
        # low-threshold twin compares raw scores with the raw thresholds) nor in the mode it was not fitted for
        self.calibration = (
            parse_calibration(self.info.confidence_calibration) if conf is None and self.tta == self.info.tta else {}
        )
        self.threads = threads or torch.get_num_threads()
        self._engine: Engine
        if self.runtime == "torch":
            self._engine = TorchEngine(model_file, self.threads)
        elif self.runtime == "onnx":
            self._engine = OnnxEngine(model_file, self.threads)
        else:
            self._engine = OpenVinoEngine(model_file, self.threads, precision=openvino_precision)
        self._lock = threading.Lock()
        if self._engine.names != CLASS_NAMES:
            raise ValueError(f"model classes {self._engine.names} are not {CLASS_NAMES}")
        self._predict([np.full((self.info.imgsz, self.info.imgsz, 3), 114, np.uint8)])  # warm up

    def _predict(self, tiles_bgr: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Run the network on equally sized BGR tiles; return (corners, conf, cls) per tile."""
        with self._lock:
            if self.tta:
                raw = merge_raw(self._engine.run(to_input(augment_tiles(tiles_bgr))), FLIPS, tiles_bgr[0].shape[0])
            else:
                raw = self._engine.run(to_input(tiles_bgr))
            decoded = decode(raw, self.conf, self.info.iou, self.max_det, len(CLASS_NAMES))
        out = []
        for corners, scores, classes in decoded:
            keep = scores >= self._keep_by_id[classes]  # per-class thresholds (and the railcar context floor)
            out.append((corners[keep], scores[keep], classes[keep]))
        return out

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        """Detect railcars and containers in an H x W x 3 uint8 RGB image (any size)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("image must be H x W x 3 uint8 RGB")
        t0 = time.perf_counter()
        height, width = image.shape[:2]
        scale = resample_scale(gsd_m, self.info.working_gsd_m)
        work = resample(image, scale)
        corners, scores, classes = self._detect_tiled(work[..., ::-1])  # a BGR view: to_input reads it once
        if self._context:
            scores = rescore_lone_railcars(
                corners, scores, classes, self._railcar, self.info.lone_railcar_factor, self.info.lone_railcar_floor
            )
        floor = self._conf_by_id if self.candidate_floor is None else self._keep_by_id
        keep = scores >= floor[classes]  # the operating thresholds (or the candidate floor), after the train context
        corners, scores, classes = corners[keep], scores[keep], classes[keep]
        counted = scores >= self._conf_by_id[classes]
        reported = scores
        if self.calibration:  # the reported confidences, once the raw ones have decided what counts
            reported = calibrate_scores(scores, classes, CLASS_NAMES, self.calibration)
        if scale != 1.0:
            corners = corners / scale
        found = [
            Detection(
                class_name=CLASS_NAMES[c],
                confidence=float(p),
                obb=quad(q),
                score=None if p == s else float(s),
                counted=bool(n),
            )
            for q, p, s, c, n in zip(corners, reported, scores, classes, counted, strict=True)
        ]
        found.sort(key=lambda d: -d.confidence)
        detections, candidates = split_counted(found)
        return DetectionResult(
            candidates=candidates,
            detections=detections,
            width=width,
            height=height,
            gsd_m=gsd_m,
            timing_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def _detect_tiled(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tile = self.info.imgsz
        h, w = bgr.shape[:2]
        overlap = self.info.tile_overlap_px
        xs, ys = tile_origins(w, tile, overlap), tile_origins(h, tile, overlap)
        all_c, all_s, all_k = [], [], []
        batch: list[tuple[int, int, np.ndarray]] = []

        def flush() -> None:
            preds = self._predict([b[2] for b in batch])
            for (x0, y0, _), (c, s, k) in zip(batch, preds, strict=True):
                if len(s) == 0:
                    continue
                c = c + np.array([x0, y0], np.float64)
                cx0, cx1 = tile_core(x0, tile, w, xs)
                cy0, cy1 = tile_core(y0, tile, h, ys)
                centre = c.mean(axis=1)
                own = (centre[:, 0] >= cx0) & (centre[:, 0] < cx1) & (centre[:, 1] >= cy0) & (centre[:, 1] < cy1)
                all_c.append(c[own])
                all_s.append(s[own])
                all_k.append(k[own])
            batch.clear()

        for y0 in ys:
            for x0 in xs:
                crop = bgr[y0 : y0 + tile, x0 : x0 + tile]
                if crop.shape[0] != tile or crop.shape[1] != tile:  # pad: never let the model rescale a tile
                    padded = np.full((tile, tile, 3), 114, np.uint8)
                    padded[: crop.shape[0], : crop.shape[1]] = crop
                    crop = padded
                batch.append((x0, y0, crop))
                if len(batch) == 4:
                    flush()
        if batch:
            flush()
        if not all_s:
            return np.zeros((0, 4, 2)), np.zeros(0), np.zeros(0, int)
        c, s, k = np.concatenate(all_c), np.concatenate(all_s), np.concatenate(all_k)
        if len(xs) * len(ys) > 1:
            keep = greedy_rotated_nms(c, s, k, self.info.iou)
            c, s, k = c[keep], s[keep], k[keep]
        return c, s, k


_CACHE: dict[tuple[str, int | None, float | None, str, str, bool | None, float | None], Detector] = {}


def load_detector(
    weights: str | Path,
    threads: int | None = None,
    conf: float | None = None,
    runtime: str = "torch",
    openvino_precision: str = "f32",
    tta: bool | None = None,
    candidate_floor: float | None = None,
) -> Detector:
    """Load (once per process) and warm up the detector for these weights and runtime (``tta`` None: as the
    sidecar says; ``candidate_floor``: keep candidates down to that score)."""
    key = (str(Path(weights).resolve()), threads, conf, runtime, openvino_precision, tta, candidate_floor)
    if key not in _CACHE:
        _CACHE[key] = Detector(
            weights,
            threads=threads,
            conf=conf,
            runtime=runtime,
            openvino_precision=openvino_precision,
            tta=tta,
            candidate_floor=candidate_floor,
        )
    return _CACHE[key]
