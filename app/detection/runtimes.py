"""Inference engines (PyTorch eager, ONNX Runtime, OpenVINO) behind one interface; decoding is Ultralytics' NMS.

Ultralytics' predictor wraps every call in letterboxing, tensor conversions and result objects, which on a fast
runtime cost as much as the network. The detector always feeds exact square tiles, so these engines take the tiles
straight to the network and decode its raw output with :func:`decode`, an exact port of the rotated NMS
Ultralytics' OBB predictor runs (faster, and without its wall-clock limit, which silently drops boxes on a busy
machine): the detections are those of ``YOLO(weights).predict`` on the same tiles.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from app.core.offline import configure_offline

if TYPE_CHECKING:
    from ultralytics.nn.tasks import BaseModel

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # corners (n, 4, 2) float64, confidences (n,), class ids (n,)

#: OpenVINO inference precisions: ``auto`` lets the CPU plugin choose (bf16 on CPUs with AMX or AVX512-BF16,
#: else f32); ``f32`` forces full precision everywhere.
OPENVINO_PRECISIONS = ("auto", "f32", "bf16")


class Engine(Protocol):
    """A loaded exported network: float32 N x 3 x S x S RGB 0-1 in, raw N x (4 + classes + 1) x anchors out."""

    names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def to_input(tiles_bgr: list[np.ndarray]) -> np.ndarray:
    """Equally sized H x W x 3 uint8 BGR tiles (views will do) as the network input: N x 3 x H x W float32 RGB
    scaled to 0-1, C-contiguous (a runtime can take it without copying). One pass per tile, no stacked copy."""
    h, w = tiles_bgr[0].shape[:2]
    batch = np.empty((len(tiles_bgr), 3, h, w), np.float32)
    for i, tile in enumerate(tiles_bgr):
        np.divide(tile.transpose(2, 0, 1)[::-1], np.float32(255), out=batch[i], dtype=np.float32)
    return batch


def decode(raw: np.ndarray, conf: float, iou: float, max_det: int, n_classes: int) -> list[Decoded]:
    """Raw OBB output (N x (4 + classes + 1) x anchors, boxes as x y w h and the angle last) to detections per
    image: best class per box above ``conf``, then :func:`rotated_fast_nms` per class (what Ultralytics'
    ``non_max_suppression`` does with ``rotated=True``, in NumPy: no thread pool for a few hundred boxes)."""
    out = []
    for x in raw.transpose(0, 2, 1):  # anchors x (4 + classes + 1)
        x = x[x[:, 4 : 4 + n_classes].max(1) > conf]
        cls = x[:, 4 : 4 + n_classes].argmax(1)
        best = x[np.arange(len(x)), 4 + cls]
        x, best, cls = x[best > conf], best[best > conf], cls[best > conf]
        if len(x) > MAX_NMS:
            top = np.argsort(-best)[:MAX_NMS]
            x, best, cls = x[top], best[top], cls[top]
        rboxes = np.concatenate((x[:, :4], x[:, -1:]), 1)
        shifted = rboxes.copy()
        shifted[:, :2] += cls[:, None].astype(np.float32) * MAX_WH  # classes apart: never overlap
        keep = rotated_fast_nms(shifted, best, iou)[:max_det]
        out.append((corners_of(rboxes[keep]), best[keep], cls[keep].astype(int)))
    return out


def corners_of(xywhr: np.ndarray) -> np.ndarray:
    """The four corners (n, 4, 2, float64) of xywhr boxes, in Ultralytics' ``xywhr2xyxyxyxy`` order."""
    centre, w, h, angle = xywhr[:, None, :2], xywhr[:, 2:3], xywhr[:, 3:4], xywhr[:, 4:5]
    cos, sin = np.cos(angle), np.sin(angle)
    u = np.concatenate([w / 2 * cos, w / 2 * sin], -1)[:, None]
    v = np.concatenate([-h / 2 * sin, h / 2 * cos], -1)[:, None]
    return np.concatenate([centre + u + v, centre + u - v, centre - u - v, centre - u + v], 1).astype(np.float64)


MAX_NMS = 30_000  # Ultralytics' cap on boxes entering NMS
MAX_WH = 7680  # Ultralytics' class offset


def rotated_fast_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Ultralytics' ``TorchNMS.fast_nms`` with ``batch_probiou`` on xywhr ``boxes``, computed only for pairs that
    can overlap; returns the kept indices, best score first.

    Fast NMS drops a box when any higher-scoring box (kept or not) has a probabilistic IoU above ``iou`` with it.
    Ultralytics evaluates the full n x n matrix, which for a dense 640 tile costs more than the network. The
    Bhattacharyya distance of two boxes is at least 1.5 |centre offset|^2 / L^2 (L the longest side of the two),
    so boxes further apart than ``L * sqrt(-ln(1 - (1 - iou)^2) / 1.5)`` (0.44 L at iou 0.5) cannot reach ``iou``;
    only pairs within the longest side of all boxes, a safe margin over that bound, are evaluated.
    """
    import torch
    from scipy.spatial import cKDTree

    order = torch.argsort(torch.from_numpy(scores), descending=True).numpy()  # Ultralytics' order, ties included
    b = boxes[order]
    if len(b) < 2:
        return order
    reach = max(float(b[:, 2:4].max()), 1e-6)
    pairs = cKDTree(b[:, :2].astype(np.float64)).query_pairs(r=reach, output_type="ndarray")
    suppressed = np.zeros(len(b), bool)
    if len(pairs):
        first, second = pairs.min(1), pairs.max(1)  # first scores higher
        suppressed[second[pair_probiou(b[first], b[second]) > iou]] = True
    return order[~suppressed]


def pair_probiou(obb1: np.ndarray, obb2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Probabilistic IoU of ``obb1[k]`` and ``obb2[k]`` (xywhr rows): Ultralytics' ``batch_probiou`` formula,
    element by element instead of all against all."""
    x1, y1, x2, y2 = obb1[:, 0], obb1[:, 1], obb2[:, 0], obb2[:, 1]
    a1, b1, c1 = _covariance(obb1)
    a2, b2, c2 = _covariance(obb2)
    det = (a1 + a2) * (b1 + b2) - (c1 + c2) ** 2
    t1 = (((a1 + a2) * (y1 - y2) ** 2 + (b1 + b2) * (x1 - x2) ** 2) / (det + eps)) * 0.25
    t2 = (((c1 + c2) * (x2 - x1) * (y1 - y2)) / (det + eps)) * 0.5
    t3 = (
        np.log(det / (4 * np.sqrt(np.clip(a1 * b1 - c1**2, 0, None) * np.clip(a2 * b2 - c2**2, 0, None)) + eps) + eps)
        * 0.5
    )
    bd = np.clip(t1 + t2 + t3, eps, 100.0)
    return 1 - np.sqrt(1.0 - np.exp(-bd) + eps)


def _covariance(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian covariance (a, b, c) of xywhr boxes, as Ultralytics' ``_get_covariance_matrix``."""
    a, b, angle = boxes[:, 2] ** 2 / 12, boxes[:, 3] ** 2 / 12, boxes[:, 4]
    cos, sin = np.cos(angle), np.sin(angle)
    return a * cos**2 + b * sin**2, a * sin**2 + b * cos**2, (a - b) * cos * sin


def _names(text: str) -> tuple[str, ...]:
    """Class names from Ultralytics' ``names`` metadata (``"{0: 'railcar', 1: 'container'}"``)."""
    names = ast.literal_eval(text)
    return tuple(names[i] for i in sorted(names))


class TorchEngine:
    """The PyTorch checkpoint in eager mode (Conv and BatchNorm fused, as Ultralytics' predictor does)."""

    def __init__(self, path: Path, threads: int) -> None:
        configure_offline()
        import torch
        from ultralytics import YOLO

        self._torch = torch
        self._threads = threads
        yolo = YOLO(str(path), task="obb")
        self.names = tuple(yolo.names[i] for i in sorted(yolo.names))
        # a checkpoint loads as a network (Ultralytics types Model.model loosely, as the path it may start as)
        self.model = cast("BaseModel", yolo.model).fuse(verbose=False).float().eval()

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        torch.set_num_threads(self._threads)  # Ultralytics' imports set it to 1
        # channels-last memory (NHWC), as before: PyTorch's CPU convolutions run far faster on it
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.model(x)
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


class OnnxEngine:
    """ONNX Runtime on the CPU with a fixed number of intra-op threads (its default takes every core)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self._session.get_modelmeta().custom_metadata_map
        self.names = _names(meta["names"])
        shape = self._session.get_inputs()[0].shape
        self._batch = shape[0] if isinstance(shape[0], int) else None  # None: any batch
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        step = self._batch or len(batch)
        outs = [self._session.run(None, {self._input: batch[i : i + step]})[0] for i in range(0, len(batch), step)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


class OpenVinoEngine:
    """OpenVINO's CPU plugin: ``threads`` inference threads, latency hint (one request at a time uses them all),
    threads not pinned to cores."""

    def __init__(self, path: Path, threads: int, precision: str = "auto") -> None:
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {OPENVINO_PRECISIONS}, not {precision!r}")
        core = ov.Core()
        model = core.read_model(str(path))
        # No pinning: the CPU plugin pins its threads to cores counted from the first one in every process, so
        # two single-threaded server workers (or a job worker beside the server) shared one core and each ran at
        # half speed (54.6 ms alone, 115 ms each side by side, 56 ms each unpinned); one process is as fast
        # unpinned (docs/lab/benchmarks.md)
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": False,
        }
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        self.names = _names(model.get_rt_info(["framework", "names"]).astype(str))
        shape = model.input(0).get_partial_shape()
        self._batch = shape[0].get_length() if shape[0].is_static else None
        self._compiled = core.compile_model(model, "CPU", config)
        self.precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._request = self._compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        step = self._batch or len(batch)
        outs = []
        for i in range(0, len(batch), step):
            self._request.infer({0: batch[i : i + step]}, share_inputs=True)  # contiguous float32: no copy
            outs.append(self._request.get_output_tensor(0).data.copy())
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


class Parity:
    """How closely one runtime's detections reproduce another's over a set of images."""

    def __init__(self, iou: float = 0.9, conf_tol: float = 0.02) -> None:
        self.iou, self.conf_tol = iou, conf_tol
        self.reference = self.candidate = self.matched = self.conf_ok = 0
        self.counts_equal = self.count_pairs = self.max_count_diff = 0
        self.max_conf_diff = 0.0

    def add(self, reference: list, candidate: list, class_names: tuple[str, ...]) -> None:
        """Compare one image's detections (:class:`app.detection.results.Detection` lists): counts per class, and each
        reference box matched one-to-one, best confidence first, to a candidate box of the same class with
        rotated IoU >= ``iou``."""
        from app.detection.geometry import rotated_iou

        for name in class_names:
            diff = abs(sum(d.class_name == name for d in reference) - sum(d.class_name == name for d in candidate))
            self.count_pairs += 1
            self.counts_equal += diff == 0
            self.max_count_diff = max(self.max_count_diff, diff)
        free = list(candidate)
        for d in sorted(reference, key=lambda d: -d.confidence):
            q = np.asarray(d.obb)
            scored = [
                (rotated_iou(q, np.asarray(e.obb)), k) for k, e in enumerate(free) if e.class_name == d.class_name
            ]
            best = max(scored, default=(0.0, -1))
            if best[0] >= self.iou:
                diff = abs(d.confidence - free.pop(best[1]).confidence)
                self.matched += 1
                self.conf_ok += diff <= self.conf_tol
                self.max_conf_diff = max(self.max_conf_diff, diff)
        self.reference += len(reference)
        self.candidate += len(candidate)

    @property
    def match_share(self) -> float:
        """Matched boxes (IoU and confidence within tolerance) over the larger of the two box totals."""
        return self.conf_ok / max(self.reference, self.candidate, 1)

    @property
    def count_share(self) -> float:
        """Share of (image, class) pairs with equal counts."""
        return self.counts_equal / max(self.count_pairs, 1)

    def holds(self, min_share: float = 0.99) -> bool:
        """Parity as the service requires it of a default runtime: both shares at least ``min_share``."""
        return self.match_share >= min_share and self.count_share >= min_share
