"""Oriented-box geometry: rotated IoU, duplicate removal and tile layout. No web or model imports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


def polygon_area(corners: np.ndarray) -> float:
    """Area of a convex polygon given as (N, 2) points."""
    return float(abs(cv2.contourArea(np.asarray(corners, np.float32))))


def rotated_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex quadrilaterals (4, 2)."""
    pa, pb = np.asarray(a, np.float32), np.asarray(b, np.float32)
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    if inter <= 0:
        return 0.0
    union = polygon_area(pa) + polygon_area(pb) - inter
    return float(inter / union) if union > 0 else 0.0


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
        near = np.nonzero((~suppressed) & (classes == classes[i])
                          & (np.linalg.norm(centres - centres[i], axis=1) < radii + radii[i]))[0]
        for j in near:
            if j != i and rotated_iou(corners[i], corners[j]) > iou:
                suppressed[j] = True
        suppressed[i] = True
    return keep


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
