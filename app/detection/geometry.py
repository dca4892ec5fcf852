"""Oriented-box geometry: rotated IoU, duplicate removal, tile layout and resampling to a working GSD. No web or model
imports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


def polygon_area(corners: np.ndarray) -> float:
    """Area of a convex polygon given as (N, 2) points."""
    return float(abs(cv2.contourArea(np.asarray(corners, np.float32))))


Polygon = list[tuple[float, float]]


def _clip_convex(subject: Polygon, clip: Polygon) -> Polygon:
    """Sutherland-Hodgman: the part of polygon ``subject`` inside the counter-clockwise convex polygon ``clip``."""
    out = subject
    for k in range(len(clip)):
        if not out:
            break
        (ax, ay), (bx, by) = clip[k - 1], clip[k]
        ex, ey = bx - ax, by - ay
        points, out = out, []
        sides = [ex * (y - ay) - ey * (x - ax) for x, y in points]  # >= 0: inside (left of the edge)
        for i, (p, sp) in enumerate(zip(points, sides, strict=True)):
            q, sq = points[i - 1], sides[i - 1]
            if (sp >= 0) != (sq >= 0):  # the edge q -> p crosses the clip line
                t = sq / (sq - sp)
                out.append((q[0] + t * (p[0] - q[0]), q[1] + t * (p[1] - q[1])))
            if sp >= 0:
                out.append(p)
    return out


def _signed_area(p: Polygon) -> float:
    return 0.5 * sum(p[i - 1][0] * y - x * p[i - 1][1] for i, (x, y) in enumerate(p))


def box_axes(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres (N x 2), unit long axes (N x 2), lengths and widths of N rotated boxes given as N x 4 x 2 corners."""
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    e1 = corners[:, 1] - corners[:, 0]
    e2 = corners[:, 2] - corners[:, 1]
    n1 = np.linalg.norm(e1, axis=1)
    n2 = np.linalg.norm(e2, axis=1)
    first = n1 >= n2
    length = np.where(first, n1, n2)
    width = np.where(first, n2, n1)
    axis = np.where(first[:, None], e1, e2) / np.maximum(length, 1e-9)[:, None]
    return corners.mean(axis=1), axis, length, width


def rotated_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex quadrilaterals (4, 2).

    Polygon clipping in float64: OpenCV's ``intersectConvexConvex`` returns a fraction of the true overlap (or none)
    for boxes whose edges nearly coincide, e.g. the same box from two runtimes a millionth of a pixel apart."""
    pa: Polygon = [(float(x), float(y)) for x, y in np.asarray(a, np.float64).tolist()]
    pb: Polygon = [(float(x), float(y)) for x, y in np.asarray(b, np.float64).tolist()]
    if (
        max(x for x, _ in pa) <= min(x for x, _ in pb)
        or max(x for x, _ in pb) <= min(x for x, _ in pa)
        or max(y for _, y in pa) <= min(y for _, y in pb)
        or max(y for _, y in pb) <= min(y for _, y in pa)
    ):
        return 0.0
    area_a, area_b = abs(_signed_area(pa)), _signed_area(pb)
    if area_b < 0:
        pb, area_b = pb[::-1], -area_b
    inter_poly = _clip_convex(pa, pb)
    if len(inter_poly) < 3:
        return 0.0
    inter = abs(_signed_area(inter_poly))
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def greedy_rotated_nms(corners: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list[int]:
    """Indices kept by class-aware greedy NMS on oriented boxes (highest score first)."""
    n = len(scores)
    if n == 0:
        return []
    order = np.argsort(-scores, kind="stable")
    centres = corners.mean(axis=1)
    radii = np.linalg.norm(corners - centres[:, None, :], axis=2).max(axis=1)
    suppressed = np.zeros(n, bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        near = np.nonzero(
            (~suppressed) & (classes == classes[i]) & (np.linalg.norm(centres - centres[i], axis=1) < radii + radii[i])
        )[0]
        for j in near:
            if j != i and rotated_iou(corners[i], corners[j]) > iou:
                suppressed[j] = True
        suppressed[i] = True
    return keep


#: An image within this share of the working GSD is used as it is (the service, the importers and the generator).
RESAMPLE_TOLERANCE: float = 0.02


def resample_scale(gsd_m: float | None, target_gsd_m: float | None) -> float:
    """Factor that brings an image of ``gsd_m`` m/px to ``target_gsd_m``; 1.0 when either is unknown or the two lie
    within :data:`RESAMPLE_TOLERANCE` of each other."""
    if not gsd_m or not target_gsd_m:
        return 1.0
    scale = gsd_m / target_gsd_m
    return scale if abs(scale - 1.0) > RESAMPLE_TOLERANCE else 1.0


def resample(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` scaled by ``scale`` (sizes rounded): bicubic when enlarging, area averaging when shrinking."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` between neighbours."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((length - overlap) / step)
    if n <= 1:
        return [0]
    # spread evenly so the last tile ends exactly at the edge
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_core(origin: int, tile: int, length: int, origins: Sequence[int]) -> tuple[float, float]:
    """The part of a tile (along one axis) that owns detections centred in it.

    Neighbouring tiles split their overlap at its middle, so every point of the image belongs to exactly one tile's
    core; a detection is kept only from the tile whose core holds its centre (where it is most central).
    """
    i = list(origins).index(origin)
    start = 0.0 if i == 0 else (origin + origins[i - 1] + tile) / 2.0
    end = float(length) if i == len(origins) - 1 else (origins[i + 1] + origin + tile) / 2.0
    return start, end
